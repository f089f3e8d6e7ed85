"""Tests for the `models` package."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import MODEL_NAMES, get_model

_BATCH = 2
_NUM_CLASSES = 10
_IMAGE_SHAPES = ((28, 28, 1), (32, 32, 3), (8, 8, 1))
_CASES = [(name, shape) for name in ('logreg', 'mlp', 'cnn')
          for shape in _IMAGE_SHAPES] + [('logreg', (60,)), ('mlp', (60,))]


@functools.cache
def _init(name, shape):
  """Builds and initialises a model once per test session (init compiles)."""
  model = get_model(name, shape, _NUM_CLASSES)
  return model, jax.jit(model.init)(jax.random.PRNGKey(0))


def _num_params(name, shape):
  """Counts parameters from shapes alone, without running `init`."""
  params = jax.eval_shape(get_model(name, shape, _NUM_CLASSES).init,
                          jax.random.PRNGKey(0))
  return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))


def _inputs(shape):
  return jax.random.normal(jax.random.PRNGKey(1), (_BATCH, *shape), jnp.float32)


def test_model_names():
  assert MODEL_NAMES == ('bow_logreg', 'cnn', 'logreg', 'lstm_sent140',
                         'lstm_shakespeare', 'lstm_stackoverflow', 'mlp',
                         'resnet18_gn', 'transformer', 'vit')


@pytest.mark.parametrize('name,shape,num_classes', [
    *[(name, shape, _NUM_CLASSES) for name, shape in _CASES],
    ('transformer', (8,), 7),
    ('transformer', (80,), 80),
    ('vit', (8, 8, 1), 10),
    ('vit', (32, 32, 3), 10),
    ('vit', (28, 28, 1), 3),
])
def test_logits_shape_and_dtype(name, shape, num_classes):
  # Abstract evaluation traces the real code without compiling it.
  model = get_model(name, shape, num_classes)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  x = jax.ShapeDtypeStruct((_BATCH, *shape), jnp.float32)
  logits = jax.eval_shape(model.apply, params, x)
  assert logits.shape == (_BATCH, num_classes)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize('name,shape,expected', [
    ('logreg', (60,), 60 * 10 + 10),
    ('logreg', (28, 28, 1), 784 * 10 + 10),
    ('mlp', (28, 28, 1), 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10),
    # McMahan et al. 2017 MNIST CNN: 28 -> 14 -> 7 after two 'SAME' pools.
    ('cnn', (28, 28, 1),
     1 * 32 * 25 + 32 + 32 * 64 * 25 + 64 + 7 * 7 * 64 * 512 + 512
     + 512 * 10 + 10),
    # 8x8 digits: 8 -> 4 -> 2.
    ('cnn', (8, 8, 1),
     1 * 32 * 25 + 32 + 32 * 64 * 25 + 64 + 2 * 2 * 64 * 512 + 512
     + 512 * 10 + 10),
    # TF-tutorial CIFAR CNN: 32 -conv-> 28 -pool-> 14 -conv-> 10 -pool-> 5.
    ('cnn', (32, 32, 3),
     3 * 64 * 25 + 64 + 64 * 64 * 25 + 64 + 5 * 5 * 64 * 384 + 384
     + 384 * 192 + 192 + 192 * 10 + 10),
])
def test_param_count(name, shape, expected):
  assert _num_params(name, shape) == expected


def test_paper_param_counts():
  assert _num_params('mlp', (28, 28, 1)) == 199_210
  assert _num_params('cnn', (28, 28, 1)) == 1_663_370
  assert _num_params('cnn', (32, 32, 3)) == 797_962


def test_init_returns_flax_variables():
  _, params = _init('logreg', (8, 8, 1))
  assert set(params) == {'params'}


def test_logreg_matches_numpy():
  shape = (8, 8, 1)
  model, params = _init('logreg', shape)
  x = _inputs(shape)
  dense = params['params']['Dense_0']
  expected = (np.asarray(x).reshape(_BATCH, -1) @ np.asarray(dense['kernel'])
              + np.asarray(dense['bias']))
  np.testing.assert_allclose(model.apply(params, x), expected, rtol=1e-5,
                             atol=1e-5)


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match="'foo'.*cnn, logreg, .*mlp"):
    get_model('foo', (28, 28, 1), 10)


def test_cnn_rejects_flat_inputs():
  with pytest.raises(ValueError, match=r'height, width, channels.*mlp'):
    get_model('cnn', (60,), 10)


@pytest.mark.slow
@pytest.mark.parametrize('name,shape', [
    ('logreg', (8, 8, 1)), ('mlp', (8, 8, 1)), ('cnn', (8, 8, 1)),
    ('cnn', (32, 32, 3))])
def test_apply_is_jittable_and_differentiable(name, shape):
  model, params = _init(name, shape)
  x = _inputs(shape)

  def logits_sum(p):
    logits = model.apply(p, x)
    return logits.sum(), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(logits_sum, has_aux=True))(
      params)
  chex.assert_shape(logits, (_BATCH, _NUM_CLASSES))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)
  chex.assert_trees_all_equal_shapes_and_dtypes(grads, params)
  chex.assert_tree_all_finite(grads)
