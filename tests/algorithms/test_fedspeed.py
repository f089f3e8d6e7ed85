"""FedSpeed, both forms, through the whole engine against a float64 numpy
re-statement of Sun et al. 2023's Algorithm 1 ('paper') and of the
authors' FL-Simulator code ('reference'); see algorithms/fedspeed.py.

Models are flattened to one vector (kernel then bias) on the numpy side.
"""

import numpy as np
import optax
import pytest

from algorithms.fedspeed import fedspeed
from fedjax_core import sample_clients
from fedjax_core.toolkit.local_sgd import LocalSGD
import tiny_problem as tiny

LR = 0.4
RHO = 0.5
ALPHA = 0.6
PROX = 0.3  # prox_coef = 1 / lambda.
ROUNDS = 2
EPOCHS = 3  # K = 3 full-batch steps per client and round.
N = tiny.NUM_CLIENTS


def _check(got, want):
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _np_paper(x, cohort_size, rho=RHO, alpha=ALPHA, prox=PROX,
              lr_decay=1.0, weight_decay=0.0, server_lr=1.0, correct=True):
  """Algorithm 1; returns x and the clients' g_hat_i.

  `correct=False` drops the prox-correction (g_hat_i stays zero).
  """
  g_hat = [np.zeros_like(x) for _ in range(N)]
  for t in range(ROUNDS):
    eta = LR * lr_decay**t
    uploads = []
    for i in sample_clients(0, t, N, cohort_size):
      y = x.copy()
      for _ in range(EPOCHS):
        g1 = tiny.flat_grad(y, i)
        g2 = tiny.flat_grad(y + rho * g1, i)
        g = (1 - alpha) * g1 + alpha * g2
        y = y - eta * (g - g_hat[i] + prox * (y - x) + weight_decay * y)
      if correct:
        g_hat[i] = g_hat[i] - prox * (y - x)
      uploads.append(y - g_hat[i] / prox)
    x = x + server_lr * (np.mean(uploads, axis=0) - x)
  return x, g_hat


def _np_reference(x, cohort_size, rho=RHO, prox=PROX, lr_decay=1.0,
                  weight_decay=0.0, server_lr=1.0, dynamic=True,
                  population_mean=True):
  """FL-Simulator's FedSpeed; returns x and the clients' h_i.

  `dynamic=False` drops h_i (FedProx on the SAM gradient);
  `population_mean=False` averages h_i over the cohort instead of over N.
  """
  h = [np.zeros_like(x) for _ in range(N)]
  for t in range(ROUNDS):
    eta = LR * lr_decay**t
    cohort = sample_clients(0, t, N, cohort_size)
    models = []
    for i in cohort:
      y = x.copy()
      for _ in range(EPOCHS):
        g1 = tiny.flat_grad(y, i)
        g = tiny.flat_grad(y + rho * g1 / (np.linalg.norm(g1) + 1e-12), i)
        y = y - eta * (g + prox * (y - x + h[i]) + weight_decay * y)
      if dynamic:
        h[i] = h[i] + (y - x)
      models.append(y)
    h_mean = np.mean(h if population_mean else [h[i] for i in cohort],
                     axis=0)
    x = x + server_lr * (np.mean(models, axis=0) + h_mean - x)
  return x, h


def _np_fedavg(x, cohort_size, **settings):
  return tiny.np_fedavg(x, lr=LR, rounds=ROUNDS, epochs=EPOCHS,
                        cohort_size=cohort_size, **settings)


def _run(cohort_size, lr_decay, weight_decay, server_lr, **kwargs):
  algorithm = fedspeed(tiny.model().apply,
                       LocalSGD(LR, lr_decay=lr_decay,
                                weight_decay=weight_decay),
                       optax.sgd(server_lr), num_clients=N, rho=RHO,
                       prox_coef=PROX, **kwargs)
  init, final, sim = tiny.run(algorithm, ROUNDS, local_epochs=EPOCHS,
                              clients_per_round=cohort_size)
  return tiny.flat(*init), tiny.flat(*final), sim


CASES = [
    (2, 1.0, 0.0, 1.0),  # Full participation.
    (1, 1.0, 0.0, 1.0),  # A cohort of 1 in a population of 2.
    (2, 0.5, 0.1, 0.5),  # Local lr decay, weight decay and a server lr.
]


@pytest.mark.parametrize('cohort_size, lr_decay, weight_decay, server_lr',
                         CASES)
def test_paper_form_matches_numpy(cohort_size, lr_decay, weight_decay,
                                  server_lr):
  x0, x, sim = _run(cohort_size, lr_decay, weight_decay, server_lr,
                    form='paper', alpha=ALPHA)
  settings = dict(lr_decay=lr_decay, weight_decay=weight_decay,
                  server_lr=server_lr)
  want_x, want_g_hat = _np_paper(x0, cohort_size, **settings)
  _check(x, want_x)
  for got, want in zip(tiny.per_client_flat(sim.store.stacked.g_hat),
                       want_g_hat, strict=True):
    _check(got, want)
  assert sim.server_state.h_mean is None
  # Each ingredient mattered: the merged ascent gradient, the
  # prox-correction, and both together against a plain average.
  merge_off, _ = _np_paper(x0, cohort_size, alpha=0.0, **settings)
  correction_off, _ = _np_paper(x0, cohort_size, correct=False, **settings)
  fedavg = _np_fedavg(x0, cohort_size, **settings)
  for other in (merge_off, correction_off, fedavg):
    assert not np.allclose(x, other, rtol=1e-3)


@pytest.mark.parametrize('cohort_size, lr_decay, weight_decay, server_lr',
                         CASES)
def test_reference_form_matches_numpy(cohort_size, lr_decay, weight_decay,
                                      server_lr):
  x0, x, sim = _run(cohort_size, lr_decay, weight_decay, server_lr,
                    form='reference')
  settings = dict(lr_decay=lr_decay, weight_decay=weight_decay,
                  server_lr=server_lr)
  want_x, want_h = _np_reference(x0, cohort_size, **settings)
  _check(x, want_x)
  got_h = tiny.per_client_flat(sim.store.stacked.h)
  for got, want in zip(got_h, want_h, strict=True):
    _check(got, want)
  _check(tiny.flat(*tiny.as_numpy(sim.server_state.h_mean)),
         np.mean(want_h, axis=0))
  # Each ingredient mattered: SAM, the dynamic regularizer, and both
  # together against a plain average.
  sam_off, _ = _np_reference(x0, cohort_size, rho=0.0, **settings)
  dynamic_off, _ = _np_reference(x0, cohort_size, dynamic=False, **settings)
  fedavg = _np_fedavg(x0, cohort_size, **settings)
  for other in (sam_off, dynamic_off, fedavg):
    assert not np.allclose(x, other, rtol=1e-3)
  if cohort_size < N:  # The server adds the mean of h_i over N, not S.
    cohort_mean, _ = _np_reference(x0, cohort_size, population_mean=False,
                                   **settings)
    assert not np.allclose(x, cohort_mean, rtol=1e-3)


@pytest.mark.parametrize('kwargs, match', [
    ({'num_clients': 0}, 'num_clients'),
    ({'num_clients': 2, 'form': 'code'}, 'form'),
    ({'num_clients': 2, 'rho': -0.1}, 'rho'),
    ({'num_clients': 2, 'prox_coef': 0.0}, 'prox_coef'),
    ({'num_clients': 2, 'alpha': 1.5}, 'alpha'),
    ({'num_clients': 2, 'form': 'reference', 'alpha': 0.9}, 'alpha'),
])
def test_bad_hyperparameters_are_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    fedspeed(tiny.model().apply, LocalSGD(0.1), optax.sgd(1.0), **kwargs)


def test_reference_form_accepts_the_default_alpha():
  fedspeed(tiny.model().apply, LocalSGD(0.1), optax.sgd(1.0), num_clients=2,
           form='reference')
