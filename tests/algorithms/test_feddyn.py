"""FedDyn through the whole engine against a float64 numpy re-statement of
Acar et al. 2021, Algorithm 1 (see algorithms/feddyn.py for the equations).

Models are flattened to one vector (kernel then bias) on the numpy side.
"""

import numpy as np
import optax
import pytest

from algorithms.feddyn import feddyn
from fedjax_core.toolkit.local_sgd import LocalSGD
import tiny_problem as tiny

LR = 0.4
ALPHA = 0.3
ROUNDS = 2
EPOCHS = 3  # K = 3 full-batch steps per client and round.
N = tiny.NUM_CLIENTS


def _np_feddyn(x, cohort_size, alpha=ALPHA, lr_decay=1.0, weight_decay=0.0,
               server_lr=1.0, dynamic=True, population=N,
               rounds=ROUNDS, participation='fixed'):
  """Returns the final x, the server's h and the clients' h_i.

  With `dynamic=False` the h terms are dropped: FedProx with mu = alpha.
  `population` is the N of the server's `(1/N) sum_S`.
  """
  h = np.zeros_like(x)
  h_i = [np.zeros_like(x) for _ in range(N)]
  for t in range(rounds):
    eta = LR * lr_decay**t
    models = []
    for i in tiny.cohort(t, cohort_size, participation):
      y = x.copy()
      for _ in range(EPOCHS):
        d = tiny.flat_grad(y, i) - h_i[i] + alpha * (y - x) + weight_decay * y
        y = y - eta * d
      if dynamic:
        h_i[i] = h_i[i] - alpha * (y - x)
      models.append(y)
    if dynamic:
      h = h - alpha / population * np.sum([y - x for y in models], axis=0)
    target = np.mean(models, axis=0) - h / alpha
    x = x + server_lr * (target - x)
  return x, h, h_i


def _np_fedavg(x, cohort_size, **settings):
  return tiny.np_fedavg(x, lr=LR, rounds=ROUNDS, epochs=EPOCHS,
                        cohort_size=cohort_size, **settings)


def _check(got, want):
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('cohort_size, lr_decay, weight_decay, server_lr', [
    (2, 1.0, 0.0, 1.0),  # Full participation.
    (1, 1.0, 0.0, 1.0),  # Half the population a round: h moves by (1/N) sum_S.
    (2, 0.5, 0.1, 0.5),  # Local lr decay, weight decay and a server lr.
])
def test_matches_numpy(cohort_size, lr_decay, weight_decay, server_lr):
  algorithm = feddyn(tiny.model().apply,
                     LocalSGD(LR, lr_decay=lr_decay,
                              weight_decay=weight_decay),
                     optax.sgd(server_lr), num_clients=N, alpha=ALPHA)
  init, final, sim = tiny.run(algorithm, ROUNDS, local_epochs=EPOCHS,
                              clients_per_round=cohort_size)
  x0, x = tiny.flat(*init), tiny.flat(*final)
  settings = dict(lr_decay=lr_decay, weight_decay=weight_decay,
                  server_lr=server_lr)
  want_x, want_h, want_hi = _np_feddyn(x0, cohort_size, **settings)
  _check(x, want_x)
  _check(tiny.flat(*tiny.as_numpy(sim.server_state.h)), want_h)
  for got, want in zip(tiny.per_client_flat(sim.store.stacked.h), want_hi,
                       strict=True):
    _check(got, want)
  assert np.abs(want_h).max() > 1e-2  # The duals are far from zero.
  # The dynamic regularizer mattered: without its h terms (FedProx) or
  # with a plain average (FedAvg) the model lands elsewhere.
  prox_x, _, _ = _np_feddyn(x0, cohort_size, dynamic=False, **settings)
  assert not np.allclose(x, prox_x, rtol=1e-3)
  assert not np.allclose(x, _np_fedavg(x0, cohort_size, **settings),
                         rtol=1e-3)
  if cohort_size < N:  # The server dual is a sum over S divided by N.
    cohort_mean_x, _, _ = _np_feddyn(x0, cohort_size, population=cohort_size,
                                     **settings)
    assert not np.allclose(x, cohort_mean_x, rtol=1e-3)


def test_bernoulli_participation_matches_numpy():
  # Rate 1/2: cohorts {1}, {1}, {0, 1}, each padded to 2 clients; the padded
  # client must not count in the server's sum over S.
  rounds = 3
  algorithm = feddyn(tiny.model().apply, LocalSGD(LR), optax.sgd(1.0),
                     num_clients=N, alpha=ALPHA)
  init, final, sim = tiny.run(algorithm, rounds, local_epochs=EPOCHS,
                              participation='bernoulli', clients_per_round=1)
  want_x, want_h, want_hi = _np_feddyn(tiny.flat(*init), 1, rounds=rounds,
                                       participation='bernoulli')
  _check(tiny.flat(*final), want_x)
  _check(tiny.flat(*tiny.as_numpy(sim.server_state.h)), want_h)
  for got, want in zip(tiny.per_client_flat(sim.store.stacked.h), want_hi,
                       strict=True):
    _check(got, want)


@pytest.mark.parametrize('kwargs, match', [
    ({'num_clients': 0}, 'num_clients'),
    ({'num_clients': 2, 'alpha': 0.0}, 'alpha'),
    ({'num_clients': 2, 'alpha': -0.1}, 'alpha'),
])
def test_bad_hyperparameters_are_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    feddyn(tiny.model().apply, LocalSGD(0.1), optax.sgd(1.0), **kwargs)
