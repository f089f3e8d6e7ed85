"""FedSMOO through the whole engine against a float64 numpy re-statement of
the authors' FL-Simulator code (client/fedsmoo.py, server/FedSMOO.py,
optimizer/DRegSAM.py); see algorithms/fedsmoo.py for the equations.

Models are flattened to one vector (kernel then bias) on the numpy side.
"""

import numpy as np
import optax
import pytest

from algorithms.fedsmoo import fedsmoo
from fedjax_core.toolkit.local_sgd import LocalSGD
import tiny_problem as tiny

LR = 0.4
RHO = 0.5
PROX = 0.3
ROUNDS = 2
EPOCHS = 3  # K = 3 full-batch steps per client and round.
N = tiny.NUM_CLIENTS


def _check(got, want):
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _np_fedsmoo(x, cohort_size, lr_decay=1.0, weight_decay=0.0,
                server_lr=1.0, local_dual=True, global_dual=True,
                population_mean=True, rounds=ROUNDS,
                participation='fixed'):
  """Returns x, the server's s, and the clients' h_i and mu_i.

  `local_dual=False` drops mu_i from the perturbation and
  `global_dual=False` keeps s at zero (both off: FedSpeed's reference form);
  `population_mean=False` averages h_i over the cohort instead of over N.
  """
  s = np.zeros_like(x)
  h = [np.zeros_like(x) for _ in range(N)]
  mu = [np.zeros_like(x) for _ in range(N)]
  for t in range(rounds):
    eta = LR * lr_decay**t
    cohort = tiny.cohort(t, cohort_size, participation)
    models = []
    for i in cohort:
      y, m = x.copy(), mu[i].copy()
      for _ in range(EPOCHS):
        g = tiny.flat_grad(y, i) - s
        if local_dual:
          g = g - m
        eps = RHO * g / (np.linalg.norm(g) + 1e-12)
        m = m + eps - s
        y = y - eta * (tiny.flat_grad(y + eps, i) + PROX * (y - x + h[i])
                       + weight_decay * y)
      h[i] = h[i] + (y - x)
      mu[i] = m
      models.append(y)
    m_bar = np.mean([mu[i] for i in cohort], axis=0)
    if global_dual:
      s = RHO * m_bar / (np.linalg.norm(m_bar) + 1e-12)
    h_mean = np.mean(h if population_mean else [h[i] for i in cohort],
                     axis=0)
    x = x + server_lr * (np.mean(models, axis=0) + h_mean - x)
  return x, s, h, mu


def _np_fedavg(x, cohort_size, **settings):
  return tiny.np_fedavg(x, lr=LR, rounds=ROUNDS, epochs=EPOCHS,
                        cohort_size=cohort_size, **settings)


@pytest.mark.parametrize('cohort_size, lr_decay, weight_decay, server_lr', [
    (2, 1.0, 0.0, 1.0),  # Full participation.
    (1, 1.0, 0.0, 1.0),  # A cohort of 1 in a population of 2.
    (2, 0.5, 0.1, 0.5),  # Local lr decay, weight decay and a server lr.
])
def test_matches_numpy(cohort_size, lr_decay, weight_decay, server_lr):
  algorithm = fedsmoo(tiny.model().apply,
                      LocalSGD(LR, lr_decay=lr_decay,
                               weight_decay=weight_decay),
                      optax.sgd(server_lr), num_clients=N, rho=RHO,
                      prox_coef=PROX)
  init, final, sim = tiny.run(algorithm, ROUNDS, local_epochs=EPOCHS,
                              clients_per_round=cohort_size)
  x0, x = tiny.flat(*init), tiny.flat(*final)
  settings = dict(lr_decay=lr_decay, weight_decay=weight_decay,
                  server_lr=server_lr)
  want_x, want_s, want_h, want_mu = _np_fedsmoo(x0, cohort_size, **settings)
  _check(x, want_x)
  _check(tiny.flat(*tiny.as_numpy(sim.server_state.s)), want_s)
  _check(tiny.flat(*tiny.as_numpy(sim.server_state.h_mean)),
         np.mean(want_h, axis=0))
  for got, want in zip(tiny.per_client_flat(sim.store.stacked.h), want_h,
                       strict=True):
    _check(got, want)
  for got, want in zip(tiny.per_client_flat(sim.store.stacked.mu), want_mu,
                       strict=True):
    _check(got, want)
  # Each ingredient mattered: the global perturbation s, the local dual
  # mu_i, both (FedSpeed's reference form), and all against a plain average.
  s_off, _, _, _ = _np_fedsmoo(x0, cohort_size, global_dual=False,
                               **settings)
  mu_off, _, _, _ = _np_fedsmoo(x0, cohort_size, local_dual=False,
                                **settings)
  duals_off, _, _, _ = _np_fedsmoo(x0, cohort_size, local_dual=False,
                                   global_dual=False, **settings)
  fedavg = _np_fedavg(x0, cohort_size, **settings)
  for other in (s_off, mu_off, duals_off, fedavg):
    assert not np.allclose(x, other, rtol=1e-3)
  if cohort_size < N:  # The server adds the mean of h_i over N, not S.
    cohort_mean, _, _, _ = _np_fedsmoo(x0, cohort_size,
                                       population_mean=False, **settings)
    assert not np.allclose(x, cohort_mean, rtol=1e-3)


def test_bernoulli_participation_matches_numpy():
  # Rate 1/2: cohorts {1}, {1}, {0, 1}, each padded to 2 clients; the padded
  # client must count neither in mean_S mu_i nor in the growth of mean_N h_i.
  rounds = 3
  algorithm = fedsmoo(tiny.model().apply, LocalSGD(LR), optax.sgd(1.0),
                      num_clients=N, rho=RHO, prox_coef=PROX)
  init, final, sim = tiny.run(algorithm, rounds, local_epochs=EPOCHS,
                              participation='bernoulli', clients_per_round=1)
  want_x, want_s, want_h, want_mu = _np_fedsmoo(
      tiny.flat(*init), 1, rounds=rounds, participation='bernoulli')
  _check(tiny.flat(*final), want_x)
  _check(tiny.flat(*tiny.as_numpy(sim.server_state.s)), want_s)
  for got, want in zip(tiny.per_client_flat(sim.store.stacked.h), want_h,
                       strict=True):
    _check(got, want)
  for got, want in zip(tiny.per_client_flat(sim.store.stacked.mu), want_mu,
                       strict=True):
    _check(got, want)


@pytest.mark.parametrize('kwargs, match', [
    ({'num_clients': 0}, 'num_clients'),
    ({'num_clients': 2, 'rho': -0.1}, 'rho'),
    ({'num_clients': 2, 'prox_coef': 0.0}, 'prox_coef'),
])
def test_bad_hyperparameters_are_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    fedsmoo(tiny.model().apply, LocalSGD(0.1), optax.sgd(1.0), **kwargs)
