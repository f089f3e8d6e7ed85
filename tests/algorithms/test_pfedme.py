"""pFedMe through the whole engine against a float64 numpy re-statement of
Dinh et al. 2020, Algorithm 1: per local step, K steps `theta <- theta -
personal_lr (grad f(theta) + lam (theta - w))` (theta from the round's
global model, then carried over), then `w <- w - eta lam (w - theta)`; the
server does `x <- (1 - beta) x + beta mean w_i`.

Models are flattened to one vector (kernel then bias) on the numpy side.
"""

import numpy as np
import optax
import pytest

from algorithms.pfedme import pfedme
from fedjax_core.errors import SettingError
from fedjax_core.toolkit.local_sgd import LocalSGD
import tiny_problem as tiny

LR = 0.05
LAM = 15.0
PERSONAL_LR = 0.04
BETA = 1.5
ROUNDS = 2
EPOCHS = 3  # R = 3 full-batch local steps per client and round.
N = tiny.NUM_CLIENTS


def _np_pfedme(x, inner_steps=3, lr_decay=1.0, weight_decay=0.0,
               weighted=True, cohort_size=N, lam=LAM, beta=BETA):
  """Returns the final global model and the clients' theta (None for a
  client that never trained)."""
  theta = [None] * N
  for t in range(ROUNDS):
    eta = LR * lr_decay**t
    deltas, weights = [], []
    for i in tiny.cohort(t, cohort_size):
      w, th = x.copy(), x.copy()
      for _ in range(EPOCHS):
        for _ in range(inner_steps):
          d = tiny.flat_grad(th, i) + lam * (th - w) + weight_decay * th
          th = th - PERSONAL_LR * d
        w = w - eta * (lam * (w - th) + weight_decay * w)
      theta[i] = th
      deltas.append(w - x)
      weights.append(len(tiny.CLIENTS[i]) if weighted else 1.0)
    x = x + beta * np.average(deltas, axis=0, weights=weights)
  return x, theta


def _run(inner_steps=3, lr_decay=1.0, weight_decay=0.0, weighted=True,
         clients_per_round=N):
  """Runs pFedMe on the tiny problem, each client's training rows also its
  local test rows (a personalized run is scored on them at its end)."""
  algorithm = pfedme(tiny.model().apply,
                     LocalSGD(LR, lr_decay=lr_decay,
                              weight_decay=weight_decay),
                     optax.sgd(1.0), weighted=weighted, lam=LAM,
                     inner_steps=inner_steps, personal_lr=PERSONAL_LR,
                     beta=BETA)
  x0, x, sim = tiny.run(algorithm, ROUNDS, EPOCHS,
                        clients_per_round=clients_per_round, local_test=True)
  return algorithm, tiny.flat(*x0), tiny.flat(*x), sim


def _check(got, want):
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('inner_steps, lr_decay, weight_decay, weighted', [
    (3, 1.0, 0.0, True), (1, 0.5, 0.1, False)])
def test_matches_numpy_restatement(inner_steps, lr_decay, weight_decay,
                                   weighted):
  settings = dict(inner_steps=inner_steps, lr_decay=lr_decay,
                  weight_decay=weight_decay, weighted=weighted)
  algorithm, x0, x, sim = _run(**settings)
  want_x, want_theta = _np_pfedme(x0, **settings)
  _check(x, want_x)
  state = sim.store.stacked
  np.testing.assert_array_equal(state.trained, np.ones(N))
  for i in range(N):
    _check(tiny.per_client_flat(state.personal)[i], want_theta[i])
    _check(tiny.personal_flat(algorithm, sim, i), want_theta[i])
    assert not np.allclose(want_theta[i], x, rtol=1e-3)  # Personal != x.
  _check(tiny.personal_flat(algorithm, sim, None), x)
  # The Moreau-envelope steps and beta mattered: x is not FedAvg's.
  fedavg = tiny.np_fedavg(x0, lr=LR, rounds=ROUNDS, epochs=EPOCHS,
                          cohort_size=N, lr_decay=lr_decay,
                          weight_decay=weight_decay)
  assert not np.allclose(x, fedavg, rtol=1e-3)


def test_a_client_that_never_trained_gets_the_global_model():
  # A cohort of 1 with seed 0 is client 1 in both rounds.
  algorithm, x0, x, sim = _run(clients_per_round=1)
  want_x, want_theta = _np_pfedme(x0, cohort_size=1)
  _check(x, want_x)
  state = sim.store.stacked
  np.testing.assert_array_equal(state.trained, [0.0, 1.0])
  _check(tiny.personal_flat(algorithm, sim, 0), x)
  _check(tiny.personal_flat(algorithm, sim, 1), want_theta[1])


@pytest.mark.parametrize('settings, name, match', [
    ({'lam': -1.0}, 'lam', 'lam > 0'),
    ({'lam': 0.0}, 'lam', 'lam > 0'),
    ({'personal_lr': 0.2}, 'lam', 'lam \\* personal_lr < 2'),
    ({'lam': 30.0, 'personal_lr': 0.001}, 'lam',
     'lam \\* client learning rate < 2'),
    ({'inner_steps': 0}, 'inner_steps', 'inner_steps must be an int >= 1'),
    ({'inner_steps': 2.0}, 'inner_steps',
     'inner_steps must be an int >= 1'),
    ({'personal_lr': 0.0}, 'personal_lr', 'personal_lr > 0'),
    ({'beta': -0.5}, 'beta', 'beta > 0')])
def test_bad_hyperparameters_are_setting_errors(settings, name, match):
  with pytest.raises(SettingError, match=match) as error:
    pfedme(tiny.model().apply, LocalSGD(0.1), optax.sgd(1.0), **settings)
  assert error.value.setting == name
