"""The SAM, ASAM and FedSpeed gradient transforms against numpy re-statements
of their formulas (Foret et al. 2021; Kwon et al. 2021; Sun et al. 2023)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.toolkit import losses
from fedjax_core.toolkit import sharpness
from fedjax_core.algorithm import Batch

# A two-leaf pytree of params and one of gradients, with a zero entry in
# each so ASAM's offset eta matters.
PARAMS = {'w': np.array([[0.5, -1.2, 0.0], [2.0, 0.3, -0.7]], np.float32),
          'b': np.array([0.1, -0.4, 0.0], np.float32)}
GRADS = {'w': np.array([[0.2, 0.0, -0.5], [1.1, -0.3, 0.4]], np.float32),
         'b': np.array([-0.6, 0.25, 0.9], np.float32)}

# Softmax regression on a fixed batch, with numpy gradients in float64.
X = np.array([[1.0, 0.5], [0.2, -0.3], [-1.5, 1.0], [0.7, 0.7]], np.float32)
Y = np.array([0, 2, 1, 2], np.int32)
MASK = np.array([1.0, 1.0, 1.0, 0.0], np.float32)  # The last row pads.
BATCH = Batch(x=jnp.asarray(X), y=jnp.asarray(Y), mask=jnp.asarray(MASK))
MODEL = {'w': np.array([[0.3, -0.2, 0.1], [0.0, 0.4, -0.5]], np.float32),
         'b': np.array([0.05, -0.1, 0.2], np.float32)}


def _apply(params, x):
  return x @ params['w'] + params['b']


GRAD_FN = losses.loss_and_grad(_apply)


def _np(tree):
  return {k: np.asarray(v, np.float64) for k, v in tree.items()}


def _np_loss_and_grad(params):
  """Masked mean softmax cross-entropy of `_apply` and its gradient."""
  x, real = X.astype(np.float64), MASK.astype(np.float64)
  z = x @ params['w'] + params['b']
  z = z - z.max(axis=1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  loss = -(log_p[np.arange(len(Y)), Y] * real).sum() / real.sum()
  d = (np.exp(log_p) - np.eye(3)[Y]) * real[:, None] / real.sum()
  return loss, {'w': x.T @ d, 'b': d.sum(axis=0)}


def _np_norm(tree):
  return np.sqrt(sum(np.sum(v**2) for v in tree.values()))


def _np_sam_eps(params, grads, rho, adaptive=False, eta=0.0):
  if adaptive:
    scale = {k: np.abs(params[k]) + eta for k in params}
  else:
    scale = {k: np.ones_like(params[k]) for k in params}
  norm = _np_norm({k: scale[k] * grads[k] for k in grads})
  return {k: rho * scale[k]**2 * grads[k] / (norm + 1e-12) for k in grads}


def _assert_trees_close(got, want, rtol=1e-5, atol=1e-7):
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=rtol,
                               atol=atol, err_msg=k)


@pytest.mark.parametrize('rho, adaptive, eta', [
    (0.05, False, 0.0), (0.5, False, 0.0), (0.5, True, 0.0),
    (0.5, True, 0.01), (1.0, True, 0.3)])
def test_sam_perturbation_matches_numpy(rho, adaptive, eta):
  eps = sharpness.sam_perturbation(PARAMS, GRADS, rho, adaptive=adaptive,
                                   eta=eta)
  _assert_trees_close(eps, _np_sam_eps(_np(PARAMS), _np(GRADS), rho,
                                       adaptive, eta))


def test_sam_perturbation_has_norm_rho():
  eps = sharpness.sam_perturbation(PARAMS, GRADS, 0.7)
  np.testing.assert_allclose(_np_norm(_np(eps)), 0.7, rtol=1e-6)


def test_asam_reduces_to_sam_for_uniform_scale():
  """With |w| = 0 everywhere, T = eta is uniform and ASAM's eps is SAM's
  scaled by eta: rho eta^2 g / (eta ||g||)."""
  zeros = {k: np.zeros_like(v) for k, v in PARAMS.items()}
  eps = sharpness.sam_perturbation(zeros, GRADS, 0.5, adaptive=True,
                                   eta=0.2)
  _assert_trees_close(
      eps, {k: 0.2 * v for k, v in _np_sam_eps(_np(zeros), _np(GRADS),
                                               0.5).items()})


@pytest.mark.parametrize('adaptive', [False, True])
def test_zero_gradient_gives_zero_perturbation(adaptive):
  zeros = {k: np.zeros_like(v) for k, v in GRADS.items()}
  eps = sharpness.sam_perturbation(PARAMS, zeros, 0.5, adaptive=adaptive,
                                   eta=0.01)
  for v in eps.values():
    assert np.all(np.asarray(v) == 0)


@pytest.mark.slow
def test_loss_and_grad_fixture_matches_numpy():
  """The numpy gradient below is the one `losses.loss_and_grad` computes."""
  loss, grads = GRAD_FN(MODEL, BATCH)
  want_loss, want_grads = _np_loss_and_grad(_np(MODEL))
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  _assert_trees_close(grads, want_grads)


@pytest.mark.parametrize('rho, adaptive, eta', [
    (0.3, False, 0.0), (0.8, True, 0.01), (0.8, True, 0.5)])
def test_sam_is_the_gradient_at_the_ascent_point(rho, adaptive, eta):
  loss, grads = sharpness.sam(GRAD_FN, rho, adaptive=adaptive,
                              eta=eta)(MODEL, BATCH)
  y = _np(MODEL)
  want_loss, g = _np_loss_and_grad(y)
  eps = _np_sam_eps(y, g, rho, adaptive, eta)
  _, want_grads = _np_loss_and_grad({k: y[k] + eps[k] for k in y})
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)  # The loss at y.
  _assert_trees_close(grads, want_grads)
  _, plain = _np_loss_and_grad(y)
  assert not np.allclose(grads['w'], plain['w'], rtol=1e-3)


@pytest.mark.parametrize('rho, alpha', [(0.5, 0.5), (1.0, 0.9), (0.3, 0.0)])
def test_fedspeed_merge_matches_numpy(rho, alpha):
  loss, grads = sharpness.fedspeed_merge(GRAD_FN, rho, alpha)(MODEL, BATCH)
  y = _np(MODEL)
  want_loss, g1 = _np_loss_and_grad(y)
  # Not normalized: y_hat = y + rho g1.
  _, g2 = _np_loss_and_grad({k: y[k] + rho * g1[k] for k in y})
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  _assert_trees_close(grads, {k: (1 - alpha) * g1[k] + alpha * g2[k]
                              for k in y})


def _perturbations():
  return {
      'sam_perturbation': lambda p, g: sharpness.sam_perturbation(p, g, 0.5),
      'asam_perturbation': lambda p, g: sharpness.sam_perturbation(
          p, g, 0.5, adaptive=True, eta=0.01),
      'sam': lambda p, g: sharpness.sam(GRAD_FN, 0.5)(p, BATCH),
      'asam': lambda p, g: sharpness.sam(GRAD_FN, 0.5, adaptive=True,
                                         eta=0.01)(p, BATCH),
      'fedspeed_merge': lambda p, g: sharpness.fedspeed_merge(
          GRAD_FN, 0.5, 0.7)(p, BATCH),
  }


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(_perturbations()))
def test_jit_matches_eager(name):
  fn = _perturbations()[name]
  params = jax.tree.map(jnp.asarray, MODEL)
  grads = jax.tree.map(jnp.asarray, GRADS)
  jitted = jax.jit(fn)(params, grads)
  with jax.disable_jit():
    eager = fn(params, grads)
  for got, want in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager),
                       strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
