"""Tests of gradient matching without built kernel gradients."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.adversary import ghost_objectives as ghost
from fedjax_core.adversary import inversion_objectives as objectives
from fedjax_core.data import datasets
from models import registry

_SHAPE = (8, 8, 1)


def _digits(n):
  data = datasets.load_digits(0)
  return jnp.asarray(data.train_x[:n]), jnp.asarray(data.train_y[:n])


def _plain_products(apply_fn, params, x, y, observed):
  grads = objectives.observed_gradient(apply_fn, params, x, y)
  dot = sum(jnp.vdot(g, o) for g, o in zip(jax.tree.leaves(grads),
                                           jax.tree.leaves(observed)))
  return dot, sum(jnp.vdot(g, g) for g in jax.tree.leaves(grads))


def _ghost_products(apply_fn, params, x, y, observed):
  return ghost.gradient_products(
      apply_fn, params, x, lambda z: objectives.batch_loss(z, y), observed)


def test_logreg_products_match_numpy():
  model = registry.get_model('logreg', _SHAPE, 10)
  params = model.init(jax.random.key(0))
  x, y = _digits(3)
  w = np.asarray(params['params']['Dense_0']['kernel'], np.float64)
  b = np.asarray(params['params']['Dense_0']['bias'], np.float64)
  xf = np.asarray(x, np.float64).reshape(3, -1)
  logits = xf @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  err = (p - np.eye(10)[np.asarray(y)]) / 3
  gw, gb = xf.T @ err, err.sum(0)
  rng = np.random.default_rng(0)
  ow, ob = rng.normal(size=w.shape), rng.normal(size=b.shape)
  observed = {'params': {'Dense_0': {'kernel': jnp.asarray(ow, jnp.float32),
                                     'bias': jnp.asarray(ob, jnp.float32)}}}
  dot, sq = _ghost_products(model.apply, params, x, y, observed)
  np.testing.assert_allclose(dot, np.sum(gw * ow) + gb @ ob, rtol=1e-5)
  np.testing.assert_allclose(sq, np.sum(gw ** 2) + gb @ gb, rtol=1e-5)


@pytest.mark.parametrize('name, n', [('mlp', 3), ('cnn', 2)])
def test_objective_and_input_gradient_equal_the_plain_ones(name, n):
  model = registry.get_model(name, _SHAPE, 10)
  params = model.init(jax.random.key(0))
  x, y = _digits(n)
  observed = objectives.observed_gradient(model.apply, params,
                                          x[::-1] * 0.8 + 0.1, y[::-1])

  def cosine_and_grad(products):
    cosine = lambda xs: objectives.cosine_from_products(
        *products(model.apply, params, xs, y, observed), observed)
    return jax.jit(jax.value_and_grad(cosine))(x)
  fast, fast_grad = cosine_and_grad(_ghost_products)
  plain, plain_grad = cosine_and_grad(_plain_products)
  np.testing.assert_allclose(fast, plain, rtol=1e-5)
  np.testing.assert_allclose(fast_grad, plain_grad, atol=1e-5 * float(
      jnp.max(jnp.abs(plain_grad))))
  assert float(jnp.max(jnp.abs(plain_grad))) > 0


class _Shared(nn.Module):
  """One Dense applied twice, a strided VALID conv, and a LayerNorm."""

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(3, (3, 3), strides=2, padding='VALID')(x)
    x = nn.LayerNorm()(x.reshape(x.shape[0], -1))
    dense = nn.Dense(x.shape[-1])
    return nn.Dense(4)(dense(jnp.tanh(dense(x))))


def test_shared_layers_strides_and_other_params():
  model = _Shared()
  x = jax.random.uniform(jax.random.key(0), (2, 7, 7, 2))
  y = jnp.array([1, 3])
  params = model.init(jax.random.key(1), x)
  observed = jax.tree.map(
      lambda p: jax.random.normal(jax.random.key(p.size), p.shape), params)
  products = [jax.jit(fn, static_argnums=0)(model.apply, params, x, y,
                                            observed)
              for fn in (_ghost_products, _plain_products)]
  np.testing.assert_allclose(*products, rtol=1e-5)


def test_cosine_from_products_by_hand():
  # a = (1, 0), o = (3, 4): <a, o> = 3, |a| = 1, |o| = 5.
  cosine = objectives.cosine_from_products(3.0, 1.0,
                                           {'u': jnp.array([3.0, 4.0])})
  assert float(cosine) == pytest.approx(1 - 3 / 5)


@pytest.mark.parametrize('strides, padding', [((1, 1), 'SAME'),
                                              ((2, 1), 'VALID')])
def test_conv_patches_times_kernel_is_the_convolution(strides, padding):
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 3))
  kernel = jax.random.normal(jax.random.key(1), (3, 2, 3, 4))
  patches = objectives.conv_patches(x, (3, 2), strides, padding)
  expected = jax.lax.conv_general_dilated(
      x, kernel, strides, padding,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(patches @ kernel.reshape(-1, 4), expected,
                             atol=1e-5)
