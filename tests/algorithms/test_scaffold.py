"""SCAFFOLD, SCAFFOLD-M and FedGamma through the whole engine against a
float64 numpy re-statement of their update rules (see algorithms/scaffold.py
for the equations)."""

import chex
import jax
import numpy as np
import optax
import pytest

from algorithms.scaffold import fedgamma, scaffold, scaffold_m
from fedjax_core import FederatedDataset, Simulation, SimulationConfig
from fedjax_core import sample_clients
from fedjax_core.toolkit.local_sgd import LocalSGD
import tiny_problem as tiny

LR = 0.5
EPOCHS = 2  # K = 2 full-batch steps per client and round.
ROUNDS = 3
N = tiny.NUM_CLIENTS


def _np_sam_grad(w, b, client, rho):
  gw, gb = tiny.grad(w, b, client)
  norm = np.sqrt(np.sum(gw**2) + np.sum(gb**2))
  return tiny.grad(w + rho * gw / (norm + 1e-12), b + rho * gb / (norm + 1e-12),
                   client)


def _np_scaffold(w, b, cohort_size, server_lr=1.0, beta=None, rho=None,
                 lr_decay=1.0):
  """Returns the final (w, b), c and the clients' c_i, as (w, b) pairs."""
  zeros = (np.zeros_like(w), np.zeros_like(b))
  c, v = zeros, zeros
  c_i = [zeros] * N
  for t in range(ROUNDS):
    eta = LR * lr_decay**t
    cohort = sample_clients(0, t, N, cohort_size)
    deltas, control_changes, directions = [], [], []
    for i in cohort:
      yw, yb = w.copy(), b.copy()
      grad_sum = zeros
      for _ in range(EPOCHS):
        if rho is None:
          gw, gb = tiny.grad(yw, yb, i)
        else:
          gw, gb = _np_sam_grad(yw, yb, i, rho)
        grad_sum = (grad_sum[0] + gw, grad_sum[1] + gb)
        dw, db = gw - c_i[i][0] + c[0], gb - c_i[i][1] + c[1]
        if beta is not None:
          dw, db = beta * dw + (1 - beta) * v[0], beta * db + (1 - beta) * v[1]
        yw, yb = yw - eta * dw, yb - eta * db
      delta = (yw - w, yb - b)
      if beta is None:  # Option II.
        new_ci = tuple(c_i[i][k] - c[k] - delta[k] / (EPOCHS * eta)
                       for k in range(2))
      else:
        new_ci = (grad_sum[0] / EPOCHS, grad_sum[1] / EPOCHS)
      deltas.append(delta)
      control_changes.append(tuple(new_ci[k] - c_i[i][k] for k in range(2)))
      directions.append(tuple(-delta[k] / (EPOCHS * eta) for k in range(2)))
      c_i[i] = new_ci
    mean = lambda xs, k: np.mean([x[k] for x in xs], axis=0)  # noqa: E731
    w = w + server_lr * mean(deltas, 0)
    b = b + server_lr * mean(deltas, 1)
    c = tuple(c[k] + np.sum([d[k] for d in control_changes], axis=0) / N
              for k in range(2))
    v = (mean(directions, 0), mean(directions, 1))
  return (w, b), c, c_i


def _check(got, want):
  for g, e in zip(got, want, strict=True):
    np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def _store_controls(sim):
  kernel = sim.store.stacked['params']['Dense_0']['kernel']
  bias = sim.store.stacked['params']['Dense_0']['bias']
  return [(kernel[i], bias[i]) for i in range(N)]


@pytest.mark.parametrize('cohort_size, server_lr, lr_decay', [
    (2, 1.0, 1.0),   # Full participation.
    (1, 1.0, 1.0),   # Half the population a round: c moves by (1/N) sum_S.
    (2, 0.5, 0.5),   # Server learning rate and local lr decay.
])
def test_scaffold_matches_numpy(cohort_size, server_lr, lr_decay):
  algorithm = scaffold(
      tiny.model().apply, LocalSGD(LR, lr_decay=lr_decay),
      optax.sgd(server_lr), num_clients=N)
  (w0, b0), (w, b), sim = tiny.run(algorithm, ROUNDS, local_epochs=EPOCHS,
                                   clients_per_round=cohort_size)
  (want_w, want_b), want_c, want_ci = _np_scaffold(
      w0, b0, cohort_size, server_lr=server_lr, lr_decay=lr_decay)
  _check((w, b), (want_w, want_b))
  control = sim.server_state.control['params']['Dense_0']
  _check((control['kernel'], control['bias']), want_c)
  for got, want in zip(_store_controls(sim), want_ci, strict=True):
    _check(got, want)
  # The control variates matter: plain FedAvg lands elsewhere.
  fedavg = tiny.np_fedavg(tiny.flat(w0, b0), lr=LR, rounds=ROUNDS,
                          epochs=EPOCHS, cohort_size=cohort_size,
                          lr_decay=lr_decay, server_lr=server_lr)
  assert not np.allclose(np.ravel(w), fedavg[:6], rtol=1e-3)  # The kernel.


@pytest.mark.parametrize('cohort_size', [2, 1])
def test_scaffold_m_matches_numpy(cohort_size):
  beta = 0.3
  algorithm = scaffold_m(tiny.model().apply, LocalSGD(LR),
                                      optax.sgd(1.0), num_clients=N,
                                      beta=beta)
  (w0, b0), (w, b), sim = tiny.run(algorithm, ROUNDS, local_epochs=EPOCHS,
                                   clients_per_round=cohort_size)
  (want_w, want_b), want_c, want_ci = _np_scaffold(w0, b0, cohort_size,
                                                   beta=beta)
  _check((w, b), (want_w, want_b))
  for got, want in zip(_store_controls(sim), want_ci, strict=True):
    _check(got, want)
  (plain_w, _), _, _ = _np_scaffold(w0, b0, cohort_size)
  assert not np.allclose(w, plain_w, rtol=1e-3)  # Momentum mattered.


def test_fedgamma_matches_numpy():
  rho = 0.4
  algorithm = fedgamma(tiny.model().apply, LocalSGD(LR),
                                    optax.sgd(1.0), num_clients=N, rho=rho)
  (w0, b0), (w, b), sim = tiny.run(algorithm, ROUNDS, local_epochs=EPOCHS)
  (want_w, want_b), want_c, want_ci = _np_scaffold(w0, b0, 2, rho=rho)
  _check((w, b), (want_w, want_b))
  for got, want in zip(_store_controls(sim), want_ci, strict=True):
    _check(got, want)
  (plain_w, _), _, _ = _np_scaffold(w0, b0, 2)
  assert not np.allclose(w, plain_w, rtol=1e-3)  # SAM mattered.


@pytest.mark.parametrize('factory, kwargs, match', [
    (scaffold, {'num_clients': 0}, 'num_clients'),
    (scaffold_m, {'num_clients': 2, 'beta': 0.0}, 'beta'),
    (fedgamma, {'num_clients': 2, 'rho': -1.0}, 'rho'),
])
def test_bad_hyperparameters_are_errors(factory, kwargs, match):
  with pytest.raises(ValueError, match=match):
    factory(tiny.model().apply, LocalSGD(0.1), optax.sgd(1.0), **kwargs)


def _wide_population_run(population, state_store):
  """SCAFFOLD on `population` clients, 2 a round, for 6 rounds."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3 * population, 3)).astype(np.float32)
  y = rng.integers(0, 2, size=3 * population).astype(np.int32)
  dataset = FederatedDataset(
      name='wide', train_x=x, train_y=y,
      client_indices=tuple(np.arange(3 * i, 3 * i + 3)
                           for i in range(population)),
      test_x=x[:10], test_y=y[:10], num_classes=2)
  algorithm = scaffold(tiny.model().apply, LocalSGD(0.3), optax.sgd(1.0),
                       num_clients=population)
  config = SimulationConfig(num_rounds=6, clients_per_round=2, batch_size=3,
                            local_steps=2, eval_every=0, progress=False,
                            state_store=state_store)
  sim = Simulation(algorithm, tiny.model(), dataset, config)
  sim.run()
  return sim


def test_population_100x_the_cohort_keeps_client_state_on_the_host():
  """SCAFFOLD on 200 clients, 2 a round: the control variates of the whole
  population live in the host store, no device array has a population
  axis, and the server's c stays the population mean of the c_i."""
  population = 200
  # Arrays other tests of the process left alive do not count.
  earlier = {id(array) for array in jax.live_arrays()}
  sim = _wide_population_run(population, 'host')

  assert sim.round_fn.num_traces == 1
  for array in jax.live_arrays():
    if id(array) not in earlier:
      assert array.shape[:1] != (population,), array.shape
  controls = sim.store.stacked['params']['Dense_0']['kernel']
  assert controls.shape == (population, 3, 2)
  visited = {int(i) for r in range(6)
             for i in sample_clients(0, r, population, 2)}
  moved = {i for i in range(population) if np.any(controls[i] != 0)}
  assert moved == visited
  np.testing.assert_allclose(
      sim.server_state.control['params']['Dense_0']['kernel'],
      controls.astype(np.float64).mean(axis=0), rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize('state_store', ['device', 'sharded'])
def test_device_state_stores_match_the_host_store(state_store):
  """Device-resident and sharded stores hold the population on the device
  and give the host store's control variates and server state bit for
  bit."""
  population = 200
  host = _wide_population_run(population, 'host')
  sim = _wide_population_run(population, state_store)
  assert sim.store.placement == state_store
  assert any(a.shape[:1] == (population,) for a in jax.live_arrays())
  assert sim.round_fn.num_traces == 1
  chex.assert_trees_all_equal(jax.device_get(sim.store.stacked),
                              host.store.stacked)
  chex.assert_trees_all_equal(jax.device_get(sim.server_state),
                              jax.device_get(host.server_state))
