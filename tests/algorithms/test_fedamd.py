"""FedAMD through the whole engine against a numpy re-statement of Wu et al.
2023's anchor sampling: anchors store their full gradient at x, miners run
SARAH steps `v <- g(y) - g(y_prev) + v` from `v_0 = nu_bar`, the server
moves x by the miners' mean change and keeps nu_bar the population mean of
the stored gradients."""

import jax
import numpy as np
import optax
import pytest

from algorithms.fedamd import fedamd
from fedjax_core import Simulation, SimulationConfig, sample_clients
from fedjax_core.toolkit.local_sgd import LocalSGD
import tiny_problem as tiny

LR = 0.4
EPOCHS = 3
N = tiny.NUM_CLIENTS
SHAPES = ((3, 2), (2,))


def _pack(w, b):
  return np.concatenate([np.ravel(w), np.ravel(b)]).astype(np.float64)


def _unpack(v):
  return v[:6].reshape(SHAPES[0]), v[6:]


def _grad(v, client):
  return _pack(*tiny.grad(*_unpack(v), client))


def _cohort(round_num, clients_per_round):
  return [int(c) for c in sample_clients(0, round_num, N, clients_per_round)]


def _engine_is_anchor(round_num, client, anchor_prob):
  """The anchor draw of `client` in `round_num`, with the engine's keys."""
  rounds_key = jax.random.split(jax.random.key(0), 3)[2]
  rng = jax.random.fold_in(jax.random.fold_in(rounds_key, round_num), client)
  init_rng, _ = jax.random.split(rng)
  return bool(jax.random.bernoulli(init_rng, anchor_prob))


def _np_fedamd(x, rounds, clients_per_round, is_anchor, *, nu=None,
               lr_decay=1.0, sarah=True):
  """Plain float64 FedAMD; returns (x, nu [N, dim], nu_bar)."""
  x = x.copy()
  nu = np.zeros((N, x.size)) if nu is None else nu.copy()
  nu_bar = nu.mean(axis=0)
  for t in rounds:
    eta = LR * lr_decay**t
    changes, new_nu = [], {}
    for i in _cohort(t, clients_per_round):
      if is_anchor(t, i):
        new_nu[i] = _grad(x, i)
        continue
      y_prev, y, v = x, x, nu_bar
      for _ in range(EPOCHS):
        if sarah:
          v = _grad(y, i) - _grad(y_prev, i) + v
        y_prev, y = y, y - eta * v
      changes.append(y - x)
    if changes:
      x = x + np.mean(changes, axis=0)
    for i, g in new_nu.items():
      nu_bar = nu_bar + (g - nu[i]) / N
      nu[i] = g
  return x, nu, nu_bar


def _simulation(algorithm, num_rounds, clients_per_round, batch_size=3):
  config = SimulationConfig(num_rounds=num_rounds,
                            clients_per_round=clients_per_round,
                            batch_size=batch_size, local_epochs=EPOCHS,
                            eval_every=0, loop='scan',
                            progress=False)
  return Simulation(algorithm, tiny.model(), tiny.dataset(), config)


def _algorithm(anchor_prob, lr_decay=1.0):
  return fedamd(tiny.model().apply, LocalSGD(LR, lr_decay=lr_decay),
                optax.sgd(1.0), num_clients=N, anchor_prob=anchor_prob)


def _engine_state(sim):
  """(x, stored nu [N, dim], nu_bar) of a simulation, as float64."""
  x = _pack(*tiny.as_numpy(sim.server_state.model.params))
  kernel, bias = tiny.as_numpy(sim.store.stacked.nu)
  nu = np.concatenate([kernel.reshape(N, -1), bias], axis=1)
  nu_bar = _pack(*tiny.as_numpy(sim.server_state.nu_bar))
  return x, nu, nu_bar


def _assert_close(got, want):
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('clients_per_round', [2, 1])
def test_all_anchors_keep_x_and_store_full_gradients(clients_per_round):
  rounds = 2
  (w0, b0), (w, b), sim = tiny.run(_algorithm(1.0), rounds,
                                   local_epochs=EPOCHS,
                                   clients_per_round=clients_per_round)
  x0 = _pack(w0, b0)
  np.testing.assert_array_equal(_pack(w, b), x0)
  _, nu, nu_bar = _engine_state(sim)
  sampled = {i for t in range(rounds) for i in _cohort(t, clients_per_round)}
  want_nu = np.array([_grad(x0, i) if i in sampled else np.zeros(x0.size)
                      for i in range(N)])
  _assert_close(nu, want_nu)
  _assert_close(nu_bar, want_nu.sum(axis=0) / N)  # Over N, not the cohort.
  assert all(r['anchor_fraction'] == 1.0 for r in sim.history)


@pytest.mark.slow
@pytest.mark.parametrize('clients_per_round, lr_decay',
                         [(2, 1.0), (1, 1.0), (2, 0.5)])
def test_miners_after_stored_gradients_match_numpy(clients_per_round,
                                                   lr_decay):
  # Round 0: everyone sampled is an anchor; rounds 1-2: everyone a miner.
  first = _simulation(_algorithm(1.0, lr_decay), 1, clients_per_round)
  x0 = _pack(*tiny.as_numpy(first.server_state.model.params))
  first.run()
  second = _simulation(_algorithm(0.0, lr_decay), 3, clients_per_round)
  second.server_state, second.store = first.server_state, first.store
  second.completed_rounds = 1
  second.run()
  x, nu, nu_bar = _engine_state(second)

  _, nu1, _ = _np_fedamd(x0, [0], clients_per_round, lambda t, i: True)
  want_x, want_nu, want_nu_bar = _np_fedamd(
      x0, [1, 2], clients_per_round, lambda t, i: False, nu=nu1,
      lr_decay=lr_decay)
  _assert_close(x, want_x)
  _assert_close(nu, want_nu)
  _assert_close(nu_bar, want_nu_bar)
  assert not np.allclose(x, x0, rtol=1e-3)  # The miners moved.
  plain_x, _, _ = _np_fedamd(x0, [1, 2], clients_per_round,
                             lambda t, i: False, nu=nu1, lr_decay=lr_decay,
                             sarah=False)
  assert not np.allclose(x, plain_x, rtol=1e-3)  # SARAH's term mattered.
  assert [r['anchor_fraction'] for r in second.history] == [0.0, 0.0]


@pytest.mark.slow
@pytest.mark.parametrize('clients_per_round', [2, 1])
def test_random_groups_match_numpy_with_engine_keys(clients_per_round):
  anchor_prob, rounds = 0.8, 4
  (w0, b0), (w, b), sim = tiny.run(_algorithm(anchor_prob), rounds,
                                   local_epochs=EPOCHS,
                                   clients_per_round=clients_per_round)
  x0 = _pack(w0, b0)

  def is_anchor(t, i):
    return _engine_is_anchor(t, i, anchor_prob)

  want_x, want_nu, want_nu_bar = _np_fedamd(x0, range(rounds),
                                            clients_per_round, is_anchor)
  x, nu, nu_bar = _engine_state(sim)
  _assert_close(_pack(w, b), want_x)
  _assert_close(x, want_x)
  _assert_close(nu, want_nu)
  _assert_close(nu_bar, want_nu_bar)
  fractions = [np.mean([is_anchor(t, i)
                        for i in _cohort(t, clients_per_round)])
               for t in range(rounds)]
  np.testing.assert_allclose([r['anchor_fraction'] for r in sim.history],
                             fractions)
  assert 0.0 < np.mean(fractions) < 1.0  # Both groups were drawn.
  assert not np.allclose(want_x, x0, rtol=1e-3)  # Some miner moved.


@pytest.mark.slow
def test_anchor_gradient_is_example_weighted_over_batches():
  # Batches of 2: client 0 (3 examples) has batches of 2 and 1 per epoch,
  # client 1 one batch of 2 and padding steps. Example weighting gives the
  # full gradient whatever the shuffle; a plain mean over batches would not.
  sim = _simulation(_algorithm(1.0), 1, 2, batch_size=2)
  x0 = _pack(*tiny.as_numpy(sim.server_state.model.params))
  sim.run()
  _, nu, nu_bar = _engine_state(sim)
  want_nu = np.array([_grad(x0, i) for i in range(N)])
  _assert_close(nu, want_nu)
  _assert_close(nu_bar, want_nu.mean(axis=0))


@pytest.mark.parametrize('kwargs, match', [
    ({'anchor_prob': -0.1}, 'anchor_prob'),
    ({'anchor_prob': 1.5}, 'anchor_prob'),
    ({'anchor_prob': float('nan')}, 'anchor_prob'),
    ({'num_clients': 0}, 'num_clients'),
    ({'num_clients': 2.0}, 'num_clients'),
])
def test_bad_hyperparameters_are_errors(kwargs, match):
  kwargs = {'num_clients': N, **kwargs}
  with pytest.raises(ValueError, match=match):
    fedamd(tiny.model().apply, LocalSGD(0.1), optax.sgd(1.0), **kwargs)
