"""LoRA's pure functions against numpy (Hu et al. 2022)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.toolkit import lora


class _TwoLayer(nn.Module):
  """query: Dense 5 -> 4, head: Dense 4 -> 3 (kernels [in, out])."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3, name='head')(nn.relu(nn.Dense(4, name='query')(x)))


def _params():
  return _TwoLayer().init(jax.random.key(0), jnp.zeros((1, 5)))


def test_target_paths_match_kernels_by_regex():
  params = _params()
  assert lora.target_paths(params, 'query') == [
      ('params', 'query', 'kernel')]
  assert lora.target_paths(params, '.') == [
      ('params', 'head', 'kernel'), ('params', 'query', 'kernel')]


def test_target_paths_name_the_kernels_when_nothing_matches():
  with pytest.raises(ValueError, match='params/head/kernel, params/query'):
    lora.target_paths(_params(), 'value')


def test_target_paths_refuse_kernels_that_are_not_2d():
  params = {'params': {'conv': {'kernel': jnp.zeros((3, 3, 1, 4))}}}
  with pytest.raises(ValueError, match=r'conv/kernel of shape \(3, 3, 1, 4\)'):
    lora.target_paths(params, 'conv')


@pytest.mark.parametrize('kwargs, message', [
    (dict(rank=0), 'LoRA rank must be a positive int'),
    (dict(rank=2.0), 'LoRA rank must be a positive int'),
    (dict(alpha=0.0), 'LoRA alpha must be positive'),
    (dict(targets='('), 'LoRA targets .* is not a regular expression')])
def test_config_rejects_bad_settings(kwargs, message):
  with pytest.raises(ValueError, match=message) as error:
    lora.LoRAConfig(**kwargs)
  assert error.value.setting == f'lora.{next(iter(kwargs))}'


def test_init_shapes_and_distribution():
  config = lora.LoRAConfig(rank=3, alpha=6.0, targets='.')
  adapters = lora.init(jax.random.key(1), _params(), config)
  a, b = adapters['a']['params'], adapters['b']['params']
  assert a['query']['kernel'].shape == (3, 5)   # [r, in]
  assert b['query']['kernel'].shape == (4, 3)   # [out, r]
  assert a['head']['kernel'].shape == (3, 4)
  assert b['head']['kernel'].shape == (3, 3)
  for leaf in jax.tree.leaves(adapters['b']):
    np.testing.assert_array_equal(leaf, 0.0)
  bound = 1 / np.sqrt(5)
  assert np.all(np.abs(a['query']['kernel']) <= bound)
  assert np.abs(a['query']['kernel']).max() > bound / 2
  # The targets draw different A; the same key draws the same A.
  assert not np.allclose(a['query']['kernel'][:, :4], a['head']['kernel'])
  again = lora.init(jax.random.key(1), _params(), config)
  np.testing.assert_array_equal(again['a']['params']['query']['kernel'],
                                a['query']['kernel'])


def _random_adapters(params, config, seed):
  """Adapters with nonzero B, so merging changes the kernels."""
  adapters = lora.init(jax.random.key(seed), params, config)
  rng = np.random.default_rng(seed)
  adapters['b'] = jax.tree.map(
      lambda b: jnp.asarray(rng.normal(size=b.shape), jnp.float32),
      adapters['b'])
  return adapters


def test_merge_matches_numpy_and_leaves_other_parameters_alone():
  config = lora.LoRAConfig(rank=2, alpha=3.0, targets='query')
  params = _params()
  adapters = _random_adapters(params, config, seed=2)
  merged = lora.merge(params, adapters, config)
  w = np.asarray(params['params']['query']['kernel'], np.float64)
  a = np.asarray(adapters['a']['params']['query']['kernel'], np.float64)
  b = np.asarray(adapters['b']['params']['query']['kernel'], np.float64)
  expected = w + 1.5 * (b @ a).T   # W0 + (alpha / r) B A, transposed.
  np.testing.assert_allclose(merged['params']['query']['kernel'], expected,
                             rtol=1e-6, atol=1e-6)
  for name in ('head',):
    for leaf in ('kernel', 'bias'):
      np.testing.assert_array_equal(merged['params'][name][leaf],
                                    params['params'][name][leaf])
  np.testing.assert_array_equal(merged['params']['query']['bias'],
                                params['params']['query']['bias'])


def test_merged_model_equals_the_low_rank_forward_pass():
  """x W' = x W + s (x A^T) B^T: the merged kernel is LoRA's forward."""
  config = lora.LoRAConfig(rank=2, alpha=2.0, targets='query')
  params = _params()
  adapters = _random_adapters(params, config, seed=3)
  x = np.random.default_rng(0).normal(size=(6, 5)).astype(np.float32)
  hidden = nn.Dense(4).apply(
      {'params': lora.merge(params, adapters, config)['params']['query']}, x)
  base = nn.Dense(4).apply({'params': params['params']['query']}, x)
  a = adapters['a']['params']['query']['kernel']
  b = adapters['b']['params']['query']['kernel']
  np.testing.assert_allclose(hidden, base + 1.0 * (x @ a.T) @ b.T,
                             rtol=1e-5, atol=1e-5)


def test_zero_b_merges_to_the_base_exactly():
  config = lora.LoRAConfig(rank=4, targets='.')
  params = _params()
  merged = lora.merge(params, lora.init(jax.random.key(0), params, config),
                      config)
  jax.tree.map(np.testing.assert_array_equal, merged, params)


