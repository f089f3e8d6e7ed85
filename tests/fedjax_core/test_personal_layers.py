"""Personal layers by path regex, evaluation-time fine-tuning against
numpy, and the models' default heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.algorithm import Batch
from fedjax_core.errors import SettingError
from fedjax_core.toolkit import fine_tuning
from fedjax_core.toolkit.personal_layers import PersonalLayers
import models

_PARAMS = {'params': {
    'Dense_0': {'kernel': np.ones((3, 2)), 'bias': np.zeros(2)},
    'Dense_1': {'kernel': 2 * np.ones((2, 2)), 'bias': np.ones(2)}}}


def test_split_and_merge():
  layers = PersonalLayers('^params/Dense_1/')
  body, head = layers.split(_PARAMS)
  assert list(body['params']) == ['Dense_0']
  assert list(head['params']) == ['Dense_1']
  jax.tree.map(np.testing.assert_array_equal, layers.merge(body, head),
               _PARAMS)
  assert list(layers.complement().split(_PARAMS)[1]['params']) == [
      'Dense_0']


@pytest.mark.parametrize('pattern, match', [
    ('Conv', 'matches no parameter'), ('Dense', 'matches every parameter'),
    ('(', 'not a regular expression')])
def test_bad_patterns(pattern, match):
  with pytest.raises(SettingError, match=match):
    PersonalLayers(pattern).split(_PARAMS)


def _two_layer_apply(params, x):
  p = params['params']
  hidden = x @ p['Dense_0']['kernel'] + p['Dense_0']['bias']
  return hidden @ p['Dense_1']['kernel'] + p['Dense_1']['bias']


def _np_grads(params, x, y, mask):
  """Numpy gradients of the masked mean cross-entropy of the linear
  two-layer model."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)['params']
  w0, b0 = p['Dense_0']['kernel'], p['Dense_0']['bias']
  w1, b1 = p['Dense_1']['kernel'], p['Dense_1']['bias']
  h = x @ w0 + b0
  z = h @ w1 + b1
  prob = np.exp(z - z.max(1, keepdims=True))
  prob /= prob.sum(1, keepdims=True)
  dz = (prob - np.eye(2)[y]) * mask[:, None] / max(mask.sum(), 1)
  dh = dz @ w1.T
  return {'params': {'Dense_0': {'kernel': x.T @ dh, 'bias': dh.sum(0)},
                     'Dense_1': {'kernel': h.T @ dz, 'bias': dz.sum(0)}}}


def _train():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 4, 3))
  y = rng.integers(0, 2, (2, 4))
  mask = np.array([[1, 1, 1, 0], [0, 0, 0, 0]], np.float64)  # An empty step.
  return x, y, mask


@pytest.mark.parametrize('trainable', [None, '^params/Dense_1/'])
def test_fine_tune_is_plain_sgd(trainable):
  x, y, mask = _train()
  params = jax.tree.map(
      lambda a: a * np.random.default_rng(1).normal(size=a.shape), _PARAMS)
  want = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  for step in range(2):
    grads = _np_grads(want, x[step], y[step], mask[step])
    if trainable:
      grads['params']['Dense_0'] = jax.tree.map(np.zeros_like,
                                                grads['params']['Dense_0'])
    want = jax.tree.map(lambda p, g: p - 0.3 * g, want, grads)
  got = fine_tuning.fine_tune(
      _two_layer_apply, jax.tree.map(jnp.float32, params),
      Batch(jnp.float32(x), jnp.int32(y), jnp.float32(mask)), 0.3,
      trainable=trainable and PersonalLayers(trainable))
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5,
                                                       atol=1e-6), got, want)
  moved = jax.tree.map(lambda g, p: not np.allclose(g, p), got, params)
  assert moved['params']['Dense_1']['kernel']
  assert moved['params']['Dense_0']['kernel'] == (trainable is None)


def test_mean_loss_over_every_real_example():
  x, y, mask = _train()
  params = jax.tree.map(jnp.float32, _PARAMS)
  z = _two_layer_apply(jax.tree.map(np.asarray, _PARAMS), x[0])
  log_p = z - np.log(np.exp(z).sum(1, keepdims=True))
  want = -log_p[np.arange(4), y[0]][:3].mean()
  got = fine_tuning.mean_loss(
      _two_layer_apply, params,
      Batch(jnp.float32(x), jnp.int32(y), jnp.float32(mask)))
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize('name, shape, classes, head', [
    ('mlp', (64,), 10, '^params/Dense_2/'),
    ('cnn', (28, 28, 1), 10, '^params/Dense_1/'),
    ('logreg', (5,), 3, '^params/Dense_0/'),
    ('vit', (32, 32, 3), 10, '^params/head/')])
def test_head_layers(name, shape, classes, head):
  assert models.head_layers(name, shape, classes) == head
