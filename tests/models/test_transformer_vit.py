"""Tests for `CharTransformer`, `ViT` and their `TransformerBlock`."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models import CharTransformer, TransformerBlock, ViT, get_model
from models.vit import patchify

_BATCH = 2
_LENGTH = 8
_VOCAB = 5
# Tiny models, so that the few compiles stay fast on CPU.
_TINY = {'d_model': 16, 'num_layers': 1, 'num_heads': 2, 'mlp_dim': 32}
_WIDTH = _TINY['d_model']


def _paths(params):
  """Maps 'params/block_0/...' paths to leaves."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {'/'.join(key.key for key in path): leaf for path, leaf in flat}


def _num_params(name, shape, num_classes):
  """Counts parameters from shapes alone, without running `init`."""
  params = jax.eval_shape(get_model(name, shape, num_classes).init,
                          jax.random.PRNGKey(0))
  return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))


@functools.cache
def _tiny(name):
  """A tiny `CharTransformer` or `ViT`, its params and jitted apply."""
  if name == 'transformer':
    module = CharTransformer(num_classes=_VOCAB, max_len=_LENGTH, **_TINY)
    x = jnp.zeros((1, _LENGTH))
  else:
    module = ViT(num_classes=2, **_TINY)
    x = jnp.zeros((1, 8, 8, 1))
  params = jax.jit(module.init)(jax.random.PRNGKey(0), x)
  return module, params, jax.jit(module.apply)


@functools.cache
def _block_apply(causal):
  """The jitted apply of a block shaped like the tiny models' blocks."""
  block = TransformerBlock(_TINY['num_heads'], _TINY['mlp_dim'], causal)
  return jax.jit(block.apply)


def _block_outputs(causal, x):
  """Runs a block with the tiny transformer's `block_0` params."""
  _, params, _ = _tiny('transformer')
  block_params = {'params': params['params']['block_0']}
  return np.asarray(_block_apply(causal)(block_params, x))


def _random(seed, shape):
  """Standard-normal float32 numpy inputs (no per-shape jax compiles)."""
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_param_counts_at_defaults():
  d, mlp = 64, 256
  block = 4 * d + 4 * (d * d + d) + d * mlp + mlp + mlp * d + d
  expected = 97 * d + 64 * d + 2 * block + 2 * d + d * 97 + 97
  assert _num_params('transformer', (64,), 97) == expected == 116_705
  mlp = 128
  block = 4 * d + 4 * (d * d + d) + d * mlp + mlp + mlp * d + d
  patches = (32 // 4) ** 2
  expected = (48 * d + d + d + (patches + 1) * d + 2 * block + 2 * d
              + d * 10 + 10)
  assert _num_params('vit', (32, 32, 3), 10) == expected == 75_082


@pytest.mark.parametrize('name,shape,mlp_dim,extra', [
    ('transformer', (16,), 256, ['params/token_embed/embedding',
                                 'params/pos_embed']),
    ('vit', (8, 8, 3), 128, ['params/patch_embed/kernel', 'params/cls',
                             'params/pos_embed']),
])
def test_param_paths_and_2d_kernels(name, shape, mlp_dim, extra):
  params = jax.eval_shape(get_model(name, shape, 5).init,
                          jax.random.PRNGKey(0))
  paths = _paths(params)
  expected = {f'params/block_{i}/{layer}/kernel' for i in (0, 1)
              for layer in ('attention/query', 'attention/key',
                            'attention/value', 'attention/out', 'mlp/fc1',
                            'mlp/fc2')}
  expected |= {'params/block_1/ln_1/scale', 'params/block_0/ln_2/bias',
               'params/ln_f/scale', 'params/head/kernel', *extra}
  assert expected <= set(paths)
  assert not any(path.startswith('params/block_2') for path in paths)
  kernels = [path for path in paths if path.endswith('/kernel')]
  assert kernels and all(paths[path].ndim == 2 for path in kernels)
  assert paths['params/block_0/attention/query/kernel'].shape == (64, 64)
  assert paths['params/block_0/mlp/fc2/kernel'].shape == (mlp_dim, 64)


@pytest.mark.parametrize('name,shape,match', [
    ('transformer', (28, 28, 1), r'transformer.*\(length,\).*\(28, 28, 1\)'),
    ('transformer', (), r'transformer.*\(length,\)'),
    ('vit', (64,), r'vit.*height, width, channels.*patch size 4.*\(64,\)'
     r'.*mlp'),
    ('vit', (30, 32, 3), r'patch size 4.*\(30, 32, 3\).*cnn'),
    ('vit', (32, 30, 3), r'patch size 4.*\(32, 30, 3\)'),
])
def test_bad_example_shapes_raise(name, shape, match):
  with pytest.raises(ValueError, match=match):
    get_model(name, shape, 10)


def test_too_long_window_and_bad_heads_raise():
  model = CharTransformer(num_classes=5, max_len=4)
  with pytest.raises(ValueError, match='exceed max_len 4'):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 5)))
  block = TransformerBlock(num_heads=3, mlp_dim=8, causal=True)
  with pytest.raises(ValueError, match='3 attention heads'):
    jax.eval_shape(block.init, jax.random.PRNGKey(0), jnp.zeros((1, 2, 16)))


@pytest.mark.slow
def test_float_and_int_tokens_give_same_logits():
  _, params, apply = _tiny('transformer')
  tokens = np.random.default_rng(1).integers(0, _VOCAB, (3, _LENGTH))
  from_int = apply(params, tokens.astype(np.int32))
  np.testing.assert_array_equal(from_int,
                                apply(params, tokens.astype(np.float32)))
  assert from_int.shape == (3, _VOCAB) and from_int.dtype == jnp.float32
  assert np.all(np.isfinite(from_int))
  # The logits are read at the last position, which sees the first token
  # through causal attention.
  for position in (0, -1):
    changed = tokens.copy()
    changed[:, position] = (changed[:, position] + 1) % _VOCAB
    assert not np.allclose(from_int, apply(params, changed.astype(np.int32)),
                           atol=1e-5), position


@pytest.mark.slow
def test_per_position_logits_end_with_the_last_position_logits():
  module, params, apply = _tiny('transformer')
  per_position = jax.jit(module.clone(per_position=True).apply)
  tokens = np.random.default_rng(2).integers(0, _VOCAB, (3, _LENGTH))
  all_logits = per_position(params, tokens.astype(np.float32))
  assert all_logits.shape == (3, _LENGTH, _VOCAB)
  np.testing.assert_allclose(all_logits[:, -1],
                             apply(params, tokens.astype(np.float32)),
                             rtol=1e-5, atol=1e-6)
  # Position 0 sees only the first token.
  changed = tokens.copy()
  changed[:, 1:] = (tokens[:, 1:] + 1) % _VOCAB
  np.testing.assert_allclose(
      per_position(params, changed.astype(np.float32))[:, 0],
      all_logits[:, 0], rtol=1e-5, atol=1e-6)


def test_input_vocab_sizes_the_token_embedding():
  params = jax.eval_shape(get_model('transformer', (8,), 5,
                                    input_vocab=11).init,
                          jax.random.PRNGKey(0))
  paths = _paths(params)
  assert paths['params/token_embed/embedding'].shape == (11, 64)
  assert paths['params/head/kernel'].shape == (64, 5)


@pytest.mark.parametrize('t', [0, 3, _LENGTH - 2])
def test_causal_block_ignores_the_future(t):
  x = _random(0, (_BATCH, _LENGTH, _WIDTH))
  future = x.copy()
  future[:, t + 1:] = _random(1, (_BATCH, _LENGTH, _WIDTH))[:, t + 1:]
  y, y_future = _block_outputs(True, x), _block_outputs(True, future)
  np.testing.assert_allclose(y[:, :t + 1], y_future[:, :t + 1], atol=1e-6)
  assert not np.allclose(y[:, t + 1:], y_future[:, t + 1:], atol=1e-3)


def test_causal_block_sees_the_past():
  x = _random(0, (_BATCH, _LENGTH, _WIDTH))
  y = _block_outputs(True, x)
  changed = x.copy()
  changed[:, 0] = _random(1, (_BATCH, _WIDTH))
  y_first = _block_outputs(True, changed)
  # Every position t >= 0 depends on position 0 <= t.
  for t in range(_LENGTH):
    assert not np.allclose(y[:, t], y_first[:, t], atol=1e-4), t


def test_non_causal_block_attends_everywhere():
  x = _random(0, (_BATCH, _LENGTH, _WIDTH))
  y = _block_outputs(False, x)
  changed = x.copy()
  changed[:, -1] = _random(1, (_BATCH, _WIDTH))
  y_last = _block_outputs(False, changed)
  for t in range(_LENGTH):
    assert not np.allclose(y[:, t], y_last[:, t], atol=1e-4), t


def test_block_branches_are_residual():
  _, params, _ = _tiny('transformer')
  block = dict(params['params']['block_0'])
  # Zero the last layer of each branch: the block becomes the identity.
  for branch, layer in (('attention', 'out'), ('mlp', 'fc2')):
    zeros = jax.tree_util.tree_map(jnp.zeros_like, block[branch][layer])
    block[branch] = {**block[branch], layer: zeros}
  x = _random(0, (_BATCH, _LENGTH, _WIDTH))
  y = np.asarray(_block_apply(True)({'params': block}, x))
  np.testing.assert_array_equal(y, x)


def test_patchify_cuts_row_major_square_patches():
  x = np.arange(2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
  patches = np.asarray(patchify(jnp.asarray(x), 4))
  assert patches.shape == (2, 4, 4 * 4 * 3)
  for row in range(2):
    for col in range(2):
      np.testing.assert_array_equal(
          patches[:, 2 * row + col],
          x[:, 4 * row:4 * row + 4, 4 * col:4 * col + 4].reshape(2, -1))


def _swap_corner_patches(x):
  """Swaps the top-left and bottom-right 4x4 patches of `[b, 8, 8, c]` x."""
  swapped = x.copy()
  swapped[:, :4, :4], swapped[:, 4:, 4:] = x[:, 4:, 4:], x[:, :4, :4]
  return swapped


def test_vit_is_sensitive_to_patch_order_through_positions():
  _, params, apply = _tiny('vit')
  x = np.random.default_rng(1).uniform(size=(_BATCH, 8, 8, 1))
  x = x.astype(np.float32)
  swapped = _swap_corner_patches(x)
  logits = apply(params, x)
  assert not np.allclose(logits, apply(params, swapped), atol=1e-5)
  # Without position embeddings the encoder is a set function of patches.
  pos_embed = jnp.zeros_like(params['params']['pos_embed'])
  unplaced = {'params': {**params['params'], 'pos_embed': pos_embed}}
  np.testing.assert_allclose(apply(unplaced, x), apply(unplaced, swapped),
                             atol=1e-5)
  # The cls token attends to every patch, the last one included.
  last = x.copy()
  last[:, 4:, 4:] = 1.0 - x[:, 4:, 4:]
  assert not np.allclose(logits, apply(params, last), atol=1e-5)


def _train(name, x, y, steps, learning_rate):
  """Adam on a tiny model; returns the losses before and after training."""
  module, params, _ = _tiny(name)
  optimizer = optax.adam(learning_rate)

  def loss_fn(params):
    logits = module.apply(params, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(params, state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, state = optimizer.update(grads, state, params)
    return optax.apply_updates(params, updates), state, loss

  state = optimizer.init(params)
  losses = []
  # One step more than `steps`: its loss is that of the trained params.
  for _ in range(steps + 1):
    params, state, loss = step(params, state)
    losses.append(float(loss))
  return losses[0], losses[-1]


@pytest.mark.slow
def test_transformer_learns_a_repeating_sequence():
  offsets = np.arange(_VOCAB)[:, None]
  x = (offsets + np.arange(_LENGTH)) % _VOCAB
  y = (offsets[:, 0] + _LENGTH) % _VOCAB
  before, after = _train('transformer', x.astype(np.float32), y, steps=40,
                         learning_rate=1e-2)
  assert after < 0.1 * before, (before, after)


@pytest.mark.slow
def test_vit_learns_two_image_classes():
  rng = np.random.default_rng(0)
  y = np.arange(16) % 2
  x = rng.uniform(0.0, 0.5, (16, 8, 8, 1)).astype(np.float32)
  x[y == 0, :, :4] += 0.5  # class 0: bright left half
  x[y == 1, :, 4:] += 0.5  # class 1: bright right half
  before, after = _train('vit', x, y, steps=40, learning_rate=1e-2)
  assert after < 0.1 * before, (before, after)
