"""The client-drift corrections against numpy re-statements of FedProx's,
SCAFFOLD's and FedCM's step directions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.toolkit import drift

RNG = np.random.default_rng(0)
GRADS = {'w': RNG.normal(size=(2, 3)).astype(np.float32),
         'b': RNG.normal(size=(3,)).astype(np.float32)}
PARAMS = {'w': RNG.normal(size=(2, 3)).astype(np.float32),
          'b': RNG.normal(size=(3,)).astype(np.float32)}
ANCHOR = {'w': RNG.normal(size=(2, 3)).astype(np.float32),
          'b': RNG.normal(size=(3,)).astype(np.float32)}
OTHER = {'w': RNG.normal(size=(2, 3)).astype(np.float32),
         'b': RNG.normal(size=(3,)).astype(np.float32)}


def _assert_trees_close(got, want):
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-6,
                               atol=1e-7, err_msg=k)


def _f64(tree):
  return {k: v.astype(np.float64) for k, v in tree.items()}


@pytest.mark.parametrize('mu', [0.0, 0.01, 1.5])
def test_prox_is_the_gradient_of_the_proximal_objective(mu):
  g, y, x = _f64(GRADS), _f64(PARAMS), _f64(ANCHOR)
  _assert_trees_close(drift.prox(GRADS, PARAMS, ANCHOR, mu),
                      {k: g[k] + mu * (y[k] - x[k]) for k in g})


def test_prox_matches_autodiff_of_the_penalty():
  """`prox(g, y, x, mu) - g` is the gradient of `mu/2 ||y - x||^2`."""

  def penalty(y):
    return 0.35 * sum(jnp.sum((y[k] - ANCHOR[k])**2) for k in y)

  want = jax.grad(penalty)(jax.tree.map(jnp.asarray, PARAMS))
  zeros = {k: np.zeros_like(v) for k, v in GRADS.items()}
  _assert_trees_close(drift.prox(zeros, PARAMS, ANCHOR, 0.7),
                      {k: np.asarray(v) for k, v in want.items()})


def test_correct_adds_the_correction():
  g, c = _f64(GRADS), _f64(OTHER)
  _assert_trees_close(drift.correct(GRADS, OTHER),
                      {k: g[k] + c[k] for k in g})


@pytest.mark.parametrize('beta', [0.1, 0.5, 0.9])
def test_momentum_mix_matches_numpy(beta):
  g, m = _f64(GRADS), _f64(OTHER)
  _assert_trees_close(drift.momentum_mix(GRADS, OTHER, beta),
                      {k: beta * g[k] + (1 - beta) * m[k] for k in g})


def test_momentum_mix_endpoints():
  _assert_trees_close(drift.momentum_mix(GRADS, OTHER, 1.0), _f64(GRADS))
  _assert_trees_close(drift.momentum_mix(GRADS, OTHER, 0.0), _f64(OTHER))


@pytest.mark.parametrize('name, fn', [
    ('prox', lambda g, y, x: drift.prox(g, y, x, 0.3)),
    ('correct', lambda g, y, x: drift.correct(g, x)),
    ('momentum_mix', lambda g, y, x: drift.momentum_mix(g, x, 0.2)),
])
def test_jit_matches_eager(name, fn):
  args = [jax.tree.map(jnp.asarray, t) for t in (GRADS, PARAMS, ANCHOR)]
  jitted = jax.jit(fn)(*args)
  with jax.disable_jit():
    eager = fn(*args)
  for got, want in zip(jax.tree.leaves(jitted), jax.tree.leaves(eager),
                       strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7,
                               err_msg=name)
