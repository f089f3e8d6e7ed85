"""DP-FedAvg and client-side DP-SGD through the whole engine against numpy
re-statements of McMahan et al. 2018 (Algorithm 1, fixed-denominator
estimator) and Abadi et al. 2016 (Algorithm 1), on the tiny problem.

The noise multipliers are 0 here so the numbers are exact; the noise scale
is tested where it is added (test_dp.py, test_dp_sgd.py,
test_aggregation.py).
"""

import numpy as np
import pytest

from algorithms import build_algorithm
from fedjax_core import Simulation, SimulationConfig
from fedjax_core.toolkit import dp_sgd
from fedjax_core.channel import privacy
from fedjax_core.data import sampling
import tiny_problem as tiny

LR = 0.5
ROUNDS = 3


def _run(num_rounds=ROUNDS, clients_per_round=2, **config):
  algorithm = build_algorithm('fedavg', tiny.model().apply,
                              num_clients=tiny.NUM_CLIENTS, client_lr=LR,
                              dp_sgd=config.pop('dp_sgd', None))
  settings = dict(num_rounds=num_rounds, clients_per_round=clients_per_round,
                  batch_size=3, local_epochs=2, eval_every=0,
                  progress=False)
  settings.update(config)
  sim = Simulation(algorithm, tiny.model(), tiny.dataset(),
                   SimulationConfig(**settings))
  init = tiny.flat(*tiny.as_numpy(sim.server_state.params))
  sim.run()
  return init, tiny.flat(*tiny.as_numpy(sim.server_state.params)), sim


def _local_sgd(x, client, epochs=2):
  y = x.copy()
  for _ in range(epochs):
    y = y - LR * tiny.flat_grad(y, client)
  return y


@pytest.mark.parametrize('clip', [0.05, 10.0])
def test_dp_fedavg_clips_each_delta_and_divides_by_the_expected_cohort(clip):
  """x <- x + sum_i clip_S(y_i - x) / m with m = 2, uniform weights (not the
  example counts FedAvg uses without DP)."""
  settings = privacy.ClientDPSettings(clip_norm=clip, noise_multiplier=0.0,
                                      delta=0.1)
  init, final, sim = _run(client_dp=settings)
  x = init
  for _ in range(ROUNDS):
    total = 0
    for client in range(2):
      delta = _local_sgd(x, client) - x
      total = total + delta * min(1.0, clip / np.linalg.norm(delta))
    x = x + total / 2
  np.testing.assert_allclose(final, x, rtol=2e-5, atol=1e-6)
  clipped = [r['dp_clipped_fraction'] for r in sim.history]
  assert clipped == ([1.0] * ROUNDS if clip < 1 else [0.0] * ROUNDS)


def test_fixed_denominator_does_not_follow_the_realized_cohort():
  """Bernoulli participation with an expected cohort of 1 of 2: rounds with
  both clients still divide by m = 1; rounds with none leave x alone."""
  settings = privacy.ClientDPSettings(clip_norm=10.0, noise_multiplier=0.0,
                                      delta=0.1)
  init, final, sim = _run(num_rounds=4, clients_per_round=1,
                          participation='bernoulli', client_dp=settings)
  x = init
  sizes = []
  for t in range(4):
    ids = sampling.sample_bernoulli(0, t, 2, 0.5, allow_empty=True)
    sizes.append(len(ids))
    x = x + sum(_local_sgd(x, i) - x for i in ids) / 1.0
  np.testing.assert_allclose(final, x, rtol=2e-5, atol=1e-6)
  assert 2 in sizes  # The case that tells m from the realized cohort.


def test_dp_sgd_clips_every_example_and_divides_by_the_batch_size():
  """Each step: sum_j clip_C(g_j) / B with B = 3, also for the client of 2
  examples (the padded slot adds nothing and still counts in B)."""
  clip = 0.2
  init, final, _ = _run(dp_sgd=dp_sgd.DPSGDConfig(clip, 0.0))
  x = init
  for _ in range(ROUNDS):
    deltas, weights = [], []
    for client, rows in enumerate(tiny.CLIENTS):
      y = x.copy()
      for _ in range(2):
        step = 0
        for row in rows:
          g = _example_grad(y, row)
          step = step + g * min(1.0, clip / np.linalg.norm(g))
        y = y - LR * step / 3
      deltas.append(y - x)
      weights.append(len(rows))
    x = x + np.average(deltas, axis=0, weights=weights)
  np.testing.assert_allclose(final, x, rtol=2e-5, atol=1e-6)


def _example_grad(theta, row):
  w, b = theta[:6].reshape(3, 2), theta[6:]
  x = tiny.X[row].astype(np.float64)
  z = x @ w + b
  p = np.exp(z - z.max())
  p /= p.sum()
  d = p - np.eye(2)[tiny.Y[row]]
  return np.concatenate([np.outer(x, d).ravel(), d])


def test_dp_sgd_outside_the_fedavg_family_is_refused():
  with pytest.raises(ValueError, match='FedAvg family'):
    build_algorithm('scaffold', tiny.model().apply, num_clients=2,
                    dp_sgd=dp_sgd.DPSGDConfig(1.0, 1.0))
