"""Tests of fedjax_core.toolkit.optimizers."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_core.toolkit import optimizers

_X0 = np.array([1.0, -2.0])
# Pseudo-gradients of three server steps; the first two have g^2 > tau^2 and
# the third is small, so yogi's sign term takes both signs.
_GRADS = [np.array([0.3, -1.2]), np.array([0.05, 0.4]),
          np.array([-0.6, 0.02])]
_LR, _B1, _B2, _TAU = 0.1, 0.9, 0.99, 0.1


def _apply(tx, grads, x0=_X0):
  params = jnp.asarray(x0, jnp.float32)
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(jnp.asarray(g, jnp.float32), state, params)
    params = optax.apply_updates(params, updates)
  return np.asarray(params)


def _reddi(variant, grads, tau=_TAU, tau_inside_sqrt=False):
  """Reddi et al. 2021, Algorithm 2, with Delta = -g: plain numpy."""
  x = _X0.copy()
  m = np.zeros(2)
  v = np.full(2, tau ** 2)
  for g in grads:
    m = _B1 * m + (1 - _B1) * g
    if variant == 'adagrad':
      v = v + g ** 2
    elif variant == 'yogi':
      v = v - (1 - _B2) * g ** 2 * np.sign(v - g ** 2)
    else:
      v = _B2 * v + (1 - _B2) * g ** 2
    denom = np.sqrt(v + tau ** 2) if tau_inside_sqrt else np.sqrt(v) + tau
    x = x - _LR * m / denom
  return x


@pytest.mark.parametrize('variant', ['adam', 'yogi', 'adagrad'])
def test_fedopt_adaptive_matches_reddi_algorithm_2(variant):
  """Three steps of scale_by_fedopt_adaptive + lr scale equal the paper's
  update; the check is sensitive to where tau goes."""
  tx = optax.chain(
      optimizers.scale_by_fedopt_adaptive(variant, b1=_B1, b2=_B2, tau=_TAU),
      optax.scale_by_learning_rate(_LR))
  got = _apply(tx, _GRADS)
  want = _reddi(variant, _GRADS)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # The reference is far (relative to the tolerance) from a tau-in-sqrt
  # variant, so a misplaced tau would fail the check above.
  assert np.max(np.abs(want - _reddi(variant, _GRADS,
                                     tau_inside_sqrt=True))) > 1e-3


@pytest.mark.parametrize('variant', ['adam', 'yogi', 'adagrad'])
def test_server_optimizer_adaptive_matches_reddi(variant):
  """server_optimizer(name) builds the same FedAdam/FedYogi/FedAdagrad."""
  tx = optimizers.server_optimizer(variant, _LR, b1=_B1, b2=_B2, tau=_TAU)
  np.testing.assert_allclose(_apply(tx, _GRADS), _reddi(variant, _GRADS),
                             rtol=1e-5, atol=1e-6)


def test_yogi_first_step_by_hand():
  """One yogi step, by hand: m = 0.1 g, v = tau^2 + 0.01 g^2 (g^2 > v)."""
  tx = optax.chain(optimizers.scale_by_fedopt_adaptive('yogi', tau=0.1),
                   optax.scale_by_learning_rate(1.0))
  got = _apply(tx, [np.array([1.0, -0.5])], x0=np.zeros(2))
  # Coordinate 0: m = 0.1, v = 0.01 + 0.01 = 0.02;
  # coordinate 1: m = -0.05, v = 0.01 + 0.0025 = 0.0125.
  want = -np.array([0.1 / (np.sqrt(0.02) + 0.1),
                    -0.05 / (np.sqrt(0.0125) + 0.1)])
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_server_sgd_with_unit_lr_subtracts_the_pseudo_gradient():
  """FedAvg: server 'sgd' at lr 1 moves x to x - g."""
  got = _apply(optimizers.server_optimizer('sgd', 1.0), [_GRADS[0]])
  np.testing.assert_allclose(got, [0.7, -0.8], rtol=1e-6)


def test_server_momentum_two_steps_by_hand():
  """FedAvgM, lr 0.1, momentum 0.9: t1 = g1, t2 = g2 + 0.9 g1."""
  tx = optimizers.server_optimizer('momentum', 0.1, momentum=0.9)
  got = _apply(tx, [np.array([0.5, 1.0]), np.array([-1.0, 2.0])])
  # x1 = [1, -2] - 0.1 [0.5, 1] = [0.95, -2.1];
  # t2 = [-1, 2] + 0.9 [0.5, 1] = [-0.55, 2.9]; x2 = x1 - 0.1 t2.
  np.testing.assert_allclose(got, [1.005, -2.39], rtol=1e-6)


def test_client_sgd_and_momentum_by_hand():
  """Client 'sgd' at lr 0.5 moves x by -0.5 g; 'momentum' accumulates."""
  g = np.array([0.4, -1.0])
  np.testing.assert_allclose(
      _apply(optimizers.client_optimizer('sgd', 0.5), [g]), [0.8, -1.5],
      rtol=1e-6)
  # Two identical steps: t1 = g, t2 = 1.5 g -> x = x0 - 0.5 * 2.5 g.
  np.testing.assert_allclose(
      _apply(optimizers.client_optimizer('momentum', 0.5, momentum=0.5),
             [g, g]), [0.5, -0.75], rtol=1e-6)


@pytest.mark.parametrize('factory,name,valid', [
    (optimizers.client_optimizer, 'yogi', 'adam, momentum, sgd'),
    (optimizers.client_optimizer, 'SGD', 'adam, momentum, sgd'),
    (optimizers.server_optimizer, 'rmsprop',
     'adagrad, adam, momentum, sgd, yogi'),
])
def test_unknown_optimizer_names_list_the_valid_ones(factory, name, valid):
  """An unknown name raises, listing the valid names."""
  with pytest.raises(ValueError,
                     match=f'Unknown .* optimizer {name!r}.*: {valid}'):
    factory(name, 0.1)


@pytest.mark.parametrize('factory,role', [
    (optimizers.client_optimizer, 'client'),
    (optimizers.server_optimizer, 'server')])
@pytest.mark.parametrize('lr', [0.0, -0.1, float('nan'), float('inf'),
                                '0.1'])
def test_bad_learning_rates_are_rejected(factory, role, lr):
  """Zero, negative, NaN, infinite or non-numeric learning rates raise."""
  with pytest.raises(ValueError,
                     match=f'{role} learning rate {role}_lr must be a '
                     'positive number') as error:
    factory('sgd', lr)
  assert error.value.setting == f'{role}_lr'


def test_unknown_adaptive_variant_is_rejected():
  """scale_by_fedopt_adaptive names its valid variants."""
  with pytest.raises(ValueError, match='valid: adagrad, adam, yogi'):
    optimizers.scale_by_fedopt_adaptive('rmsprop')
