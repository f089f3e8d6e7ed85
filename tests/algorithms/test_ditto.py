"""Ditto through the whole engine against a float64 numpy re-statement of
Li et al. 2021, Algorithm 1: FedAvg for the global model, and per client
`v <- v - eta (grad F_k(v) + lam (v - w^t))` on the same batches.

Models are flattened to one vector (kernel then bias) on the numpy side.
"""

import numpy as np
import optax
import pytest

from algorithms.ditto import ditto
from fedjax_core.errors import SettingError
from fedjax_core.toolkit.local_sgd import LocalSGD
import tiny_problem as tiny

LR = 0.4
LAM = 0.8
ROUNDS = 2
EPOCHS = 3  # K = 3 full-batch steps per client and round.
N = tiny.NUM_CLIENTS


def _np_ditto(x, lam=LAM, lr_decay=1.0, weight_decay=0.0, weighted=True,
              rounds=ROUNDS, cohort_size=N, participation='fixed'):
  """Returns the global models x^0 .. x^rounds and the clients' v (None
  for a client that never trained)."""
  xs, v = [x], [None] * N
  for t in range(rounds):
    eta = LR * lr_decay**t
    deltas, weights = [], []
    for i in tiny.cohort(t, cohort_size, participation):
      y, p = x.copy(), (x if v[i] is None else v[i]).copy()
      for _ in range(EPOCHS):
        gy, gp = tiny.flat_grad(y, i), tiny.flat_grad(p, i) + lam * (p - x)
        y = y - eta * (gy + weight_decay * y)
        p = p - eta * (gp + weight_decay * p)
      v[i] = p
      deltas.append(y - x)
      weights.append(len(tiny.CLIENTS[i]) if weighted else 1.0)
    x = x + np.average(deltas, axis=0, weights=weights)
    xs.append(x)
  return xs, v


def _run(lam=LAM, lr_decay=1.0, weight_decay=0.0, weighted=True,
         rounds=ROUNDS, clients_per_round=N, participation='fixed'):
  """Runs Ditto on the tiny problem, each client's training rows also its
  local test rows (a personalized run is scored on them at its end)."""
  algorithm = ditto(tiny.model().apply,
                    LocalSGD(LR, lr_decay=lr_decay,
                             weight_decay=weight_decay),
                    optax.sgd(1.0), weighted=weighted, lam=lam)
  x0, x, sim = tiny.run(algorithm, rounds, EPOCHS,
                        participation=participation,
                        clients_per_round=clients_per_round, local_test=True)
  return algorithm, tiny.flat(*x0), tiny.flat(*x), sim


def _check(got, want):
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('lr_decay, weight_decay, weighted', [
    (1.0, 0.0, True), (0.5, 0.1, False)])
def test_matches_numpy_restatement(lr_decay, weight_decay, weighted):
  algorithm, x0, x, sim = _run(lr_decay=lr_decay, weight_decay=weight_decay,
                               weighted=weighted)
  xs, want_v = _np_ditto(x0, lr_decay=lr_decay, weight_decay=weight_decay,
                         weighted=weighted)
  _check(x, xs[-1])
  state = sim.store.stacked
  np.testing.assert_array_equal(state.trained, np.ones(N))
  for i in range(N):
    _check(tiny.per_client_flat(state.personal)[i], want_v[i])
    _check(tiny.personal_flat(algorithm, sim, i), want_v[i])
    assert not np.allclose(want_v[i], x, rtol=1e-3)  # Personal != global.
  _check(tiny.personal_flat(algorithm, sim, None), x)


def test_first_round_of_a_client_starts_from_that_rounds_global_model():
  # Bernoulli(1/2) cohorts with seed 0: {1}, {1}, {0, 1}; client 0's v
  # starts from x^2.
  algorithm, x0, x, sim = _run(rounds=3, participation='bernoulli',
                               clients_per_round=1)
  xs, want_v = _np_ditto(x0, rounds=3, cohort_size=1,
                         participation='bernoulli')
  _check(x, xs[-1])
  for i in range(N):
    _check(tiny.personal_flat(algorithm, sim, i), want_v[i])
  # After two rounds client 0 has never trained: it gets the global model.
  algorithm, _, x, sim = _run(participation='bernoulli', clients_per_round=1)
  _check(x, xs[2])
  np.testing.assert_array_equal(sim.store.stacked.trained, [0.0, 1.0])
  _check(tiny.personal_flat(algorithm, sim, 0), x)


@pytest.mark.parametrize('lam', [0.0, 1.0 / LR])
def test_global_model_is_fedavg_whatever_lam(lam):
  _, x0, x, _ = _run(lam=lam, weighted=False)
  _check(x, tiny.np_fedavg(x0, lr=LR, rounds=ROUNDS, epochs=EPOCHS,
                           cohort_size=N))


def test_lam_zero_trains_the_personal_model_purely_locally():
  algorithm, x0, _, sim = _run(lam=0.0)
  for i in range(N):
    v = x0.copy()  # Both clients train in both rounds, from x^0 on.
    for _ in range(ROUNDS * EPOCHS):
      v = v - LR * tiny.flat_grad(v, i)
    _check(tiny.personal_flat(algorithm, sim, i), v)


def test_lam_one_over_lr_keeps_personal_model_at_the_rounds_global_model():
  # At lam eta = 1, v <- w^t - eta grad F_k(v): v stays within one local
  # step, about eta ||grad F_k(w^t)||, of the round's global model w^t
  # (here 0.9 steps; at lam eta = 1/2, 1.4 to 1.6; at lam = 0, over 3.5).
  algorithm, x0, _, sim = _run(lam=1.0 / LR)
  w_t = _np_ditto(x0)[0][ROUNDS - 1]  # The last round's global model.
  local = _run(lam=0.0)[3]
  for i in range(N):
    step = LR * np.linalg.norm(tiny.flat_grad(w_t, i))
    v = tiny.personal_flat(algorithm, sim, i)
    assert np.linalg.norm(v - w_t) < step
    v_local = tiny.personal_flat(algorithm, local, i)
    assert np.linalg.norm(v_local - w_t) > 3 * step


@pytest.mark.parametrize('lam, match', [
    (-0.1, 'lam >= 0'), (2.0 / LR, 'lam \\* client learning rate < 2')])
def test_bad_lam_is_a_setting_error(lam, match):
  with pytest.raises(SettingError, match=match) as error:
    ditto(tiny.model().apply, LocalSGD(LR), optax.sgd(1.0), lam=lam)
  assert error.value.setting == 'lam'
