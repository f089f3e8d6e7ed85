"""Tests of the gradient-inversion attacks and what they simulate."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core import errors
from fedjax_core.adversary import gradient_inversion as inversion
from fedjax_core.adversary import image_metrics
from fedjax_core.adversary import inversion_objectives as objectives
from fedjax_core.data import datasets
from models import registry

_SHAPE = (8, 8, 1)


def _digits(n=1):
  data = datasets.load_digits(0)
  return jnp.asarray(data.train_x[:n]), jnp.asarray(data.train_y[:n])


def _model(name, seed=0):
  model = registry.get_model(name, _SHAPE, 10)
  return model, model.init(jax.random.key(seed))


def _numpy_logreg_grad(w, b, x, y):
  """Mean softmax cross-entropy gradient of logits x w + b, in numpy."""
  logits = x @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  err = (p - np.eye(w.shape[1])[y]) / len(y)
  return x.T @ err, err.sum(0)


def test_fedavg_one_full_batch_step_is_minus_lr_times_the_gradient():
  model, params = _model('mlp')
  x, y = _digits(4)
  grads = objectives.observed_gradient(model.apply, params, x, y)
  delta = objectives.fedavg_delta(model.apply, params, x, y, local_steps=1,
                                  local_lr=0.3, batch_size=4)
  for d, g in zip(jax.tree.leaves(delta), jax.tree.leaves(grads)):
    np.testing.assert_allclose(d, -0.3 * g, atol=1e-6)


def test_observed_gradient_and_two_sgd_steps_match_numpy_logreg():
  model, params = _model('logreg')
  x, y = _digits(4)
  w = np.asarray(params['params']['Dense_0']['kernel'], np.float64)
  b = np.asarray(params['params']['Dense_0']['bias'], np.float64)
  xf = np.asarray(x, np.float64).reshape(4, -1)
  yn = np.asarray(y)
  grads = objectives.observed_gradient(model.apply, params, x, y)
  gw, gb = _numpy_logreg_grad(w, b, xf, yn)
  np.testing.assert_allclose(grads['params']['Dense_0']['kernel'], gw,
                             atol=1e-6)
  # Two SGD steps of batch 2: rows 0-1, then rows 2-3.
  w1, b1 = w.copy(), b.copy()
  for rows in (slice(0, 2), slice(2, 4)):
    gw, gb = _numpy_logreg_grad(w1, b1, xf[rows], yn[rows])
    w1, b1 = w1 - 0.5 * gw, b1 - 0.5 * gb
  delta = objectives.fedavg_delta(model.apply, params, x, y, local_steps=2,
                                  local_lr=0.5, batch_size=2)
  np.testing.assert_allclose(delta['params']['Dense_0']['kernel'], w1 - w,
                             atol=1e-6)
  np.testing.assert_allclose(delta['params']['Dense_0']['bias'], b1 - b,
                             atol=1e-6)


def test_distances_and_total_variation_by_hand():
  a = {'u': jnp.array([1.0, 0.0]), 'v': jnp.array([[2.0]])}
  b = {'u': jnp.array([0.0, 1.0]), 'v': jnp.array([[2.0]])}
  assert objectives.squared_distance(a, b) == pytest.approx(2.0)
  # <a, b> = 4, |a| = |b| = sqrt(5): 1 - 4/5.
  assert objectives.cosine_distance(a, b) == pytest.approx(0.2)
  x = jnp.array([[0.0, 1.0], [0.0, 3.0]]).reshape(1, 2, 2, 1)
  # Horizontal |1-0|, |3-0| -> mean 2; vertical |0-0|, |3-1| -> mean 1.
  assert objectives.total_variation(x) == pytest.approx(3.0)


@pytest.mark.parametrize('name', ['logreg', 'mlp'])
def test_analytic_inversion_recovers_one_example_exactly(name):
  model, params = _model(name)
  x, y = _digits(1)
  grads = objectives.observed_gradient(model.apply, params, x, y)
  recovered = inversion.analytic_dense_inversion(grads, input_size=64)
  np.testing.assert_allclose(recovered, x.reshape(-1), atol=1e-4)
  by_name = inversion.analytic_dense_inversion(grads,
                                               layer='^params/Dense_0/')
  np.testing.assert_allclose(by_name, recovered)


def test_analytic_inversion_needs_a_layer():
  with pytest.raises(ValueError, match='input_size'):
    inversion.analytic_dense_inversion({})


def _dp_view(update, key, clip, noise_multiplier):
  """Client-level DP as the server sees one client: clip to norm `clip`,
  then add N(0, (z clip)^2) to every coordinate."""
  norm = jnp.sqrt(sum(jnp.sum(u ** 2) for u in jax.tree.leaves(update)))
  scale = jnp.minimum(1.0, clip / norm)
  leaves, tree = jax.tree.flatten(update)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(tree, [
      u * scale + noise_multiplier * clip * jax.random.normal(k, u.shape)
      for u, k in zip(leaves, keys)])


def test_inverting_gradients_on_the_mlp_and_under_dp():
  model, params = _model('mlp', seed=1)
  x, y = _digits(1)
  grads = objectives.observed_gradient(model.apply, params, x, y)
  config = inversion.InversionConfig(method='ig', iterations=120, lr=0.1,
                                     num_restarts=2)
  attack = lambda observed: inversion.invert(
      model.apply, params, observed, input_shape=_SHAPE, num_classes=10,
      config=config, key=jax.random.key(0))
  result = attack(grads)
  assert result.labels.tolist() == y.tolist()
  assert float(image_metrics.psnr(x, result.images)[0]) > 30
  chex.assert_shape((result.images, result.all_images, result.losses),
                    [(1, *_SHAPE), (2, 1, *_SHAPE), (2,)])
  norm = float(jnp.sqrt(sum(jnp.sum(g ** 2)
                            for g in jax.tree.leaves(grads))))
  noised = _dp_view(grads, jax.random.key(3), clip=norm,
                    noise_multiplier=1.0)
  assert float(image_metrics.psnr(x, attack(noised).images)[0]) < 15


def test_dlg_on_tiny_logreg_lowers_the_distance_and_finds_the_label():
  model, params = _model('logreg')
  x, y = _digits(1)
  grads = objectives.observed_gradient(model.apply, params, x, y)
  short, long = (inversion.InversionConfig(method='dlg', iterations=n,
                                           lr=0.1) for n in (1, 300))
  run = lambda config: inversion.invert(
      model.apply, params, grads, input_shape=_SHAPE, num_classes=10,
      config=config, key=jax.random.key(0))
  early, late = run(short), run(long)
  assert float(late.losses[0]) < 0.01 * float(early.losses[0])
  assert late.labels.tolist() == y.tolist()


def test_fedavg_variant_attacks_a_delta_with_host_loop():
  model, params = _model('mlp', seed=1)
  x, y = _digits(2)
  delta = objectives.fedavg_delta(model.apply, params, x, y, local_steps=2,
                                  local_lr=0.1, batch_size=1)
  config = inversion.InversionConfig(
      method='idlg', observed='fedavg', iterations=80, num_examples=2,
      local_steps=2, local_lr=0.1, batch_size=1, loop='host')
  result = inversion.invert(model.apply, params, delta, input_shape=_SHAPE,
                            num_classes=10, config=config,
                            key=jax.random.key(0))
  assert sorted(result.labels.tolist()) == sorted(y.tolist())
  early = inversion.invert(
      model.apply, params, delta, input_shape=_SHAPE, num_classes=10,
      config=inversion.InversionConfig(
          method='idlg', observed='fedavg', iterations=1, num_examples=2,
          local_steps=2, local_lr=0.1, batch_size=1),
      key=jax.random.key(0))
  assert float(result.losses[0]) < 0.1 * float(early.losses[0])


def test_conv_as_matmul_is_the_same_cnn():
  model, params = _model('cnn')
  x, y = _digits(2)
  fast = objectives.conv_as_matmul(model.apply)
  np.testing.assert_allclose(fast(params, x), model.apply(params, x),
                             atol=1e-5)
  for a, b in zip(
      jax.tree.leaves(objectives.observed_gradient(fast, params, x, y)),
      jax.tree.leaves(objectives.observed_gradient(model.apply, params, x,
                                                   y))):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize('field, value', [
    ('method', 'gan'), ('observed', 'sum'), ('iterations', 0), ('lr', 0.0),
    ('tv_weight', -1.0), ('batch_size', 3), ('input_range', (1.0, 0.0)),
    ('restart_chunk', 0), ('loop', 'scan')])
def test_config_rejects_bad_settings(field, value):
  with pytest.raises(errors.SettingError) as raised:
    inversion.InversionConfig(num_examples=2, **{field: value})
  assert raised.value.setting == field


def test_dlg_takes_no_labels():
  model, params = _model('logreg')
  with pytest.raises(errors.SettingError, match='learns the labels'):
    inversion.invert(model.apply, params, params, input_shape=_SHAPE,
                     num_classes=10, key=jax.random.key(0),
                     config=inversion.InversionConfig(method='dlg'),
                     labels=jnp.array([0]))
