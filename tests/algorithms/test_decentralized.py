"""D-PSGD, DFedAvg(M), DFedSAM and gradient tracking on 4 gossiping nodes,
against numpy re-statements of their papers' update rules (Lian et al. 2017;
Sun, Li & Wang 2022; Shi et al. 2023; Pu & Nedic 2021 / DIGing).

A small driver stands in for the decentralized engine: one jitted round runs
every node's local training with the engine's `client_update` (vmapped over
the nodes), mixes the nodes' `sent` messages with a dense W, `mixed_i =
sum_j W_ij sent_j`, and calls `server_update` per node. The numpy side
restates each rule on flat float64 parameter vectors with hand-written
softmax cross-entropy gradients. Runs are cached, so tests that look at the
same run from different sides compile it once.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms.decentralized import dfedavg, dfedavgm, dfedsam, dpsgd
from algorithms.gradient_tracking import gradient_tracking
from fedjax_core.algorithm import CohortInfo, GossipMessage
from fedjax_core.engine.local_training import client_update
from fedjax_core.toolkit.local_sgd import LocalSGD
import models

N = 4  # Nodes.
F = 3  # Features.
C = 3  # Classes.
ROUNDS = 2  # Rounds of a run (gradient tracking: 3).
STEPS = 2  # Local steps per round.
BATCH = 2
LR = 0.4

_rng = np.random.default_rng(0)
DATA_X = _rng.normal(size=(16, F)).astype(np.float32)
DATA_Y = _rng.integers(0, C, size=16).astype(np.int32)
# [3 rounds, nodes, steps, batch] rows of DATA_X, node i on rows 4i..4i+3.
INDICES = np.stack([
    np.stack([_rng.choice(np.arange(4 * i, 4 * i + 4), size=(STEPS, BATCH))
              for i in range(N)]) for _ in range(3)]).astype(np.int32)
MASK = np.ones((3, N, STEPS, BATCH), np.float32)
MASK[0, 3, 1] = [1.0, 0.0]  # A half-padded batch,
MASK[1, 2, 1] = [0.0, 0.0]  # a step without data (the engine skips it)
MASK[2, 1] = 0.0  # and a round without data.
# x_i at t = 0, different at every node (float32 values, as float64).
INIT = _rng.normal(scale=0.5, size=(N, F * C + C)).astype(
    np.float32).astype(np.float64)

MIXING = {
    # Metropolis weights on the ring 0-1-2-3-0 (every degree 2: 1/3 each).
    'ring': (np.eye(N) + np.roll(np.eye(N), 1, axis=1)
             + np.roll(np.eye(N), -1, axis=1)) / 3,
    # Doubly stochastic but not symmetric, so W_ij and W_ji differ.
    'skewed': (0.5 * np.eye(N) + 0.3 * np.roll(np.eye(N), 1, axis=1)
               + 0.2 * np.roll(np.eye(N), 2, axis=1)),
    'complete': np.full((N, N), 1.0 / N),
}
FACTORIES = {'dpsgd': dpsgd, 'dfedavg': dfedavg, 'dfedavgm': dfedavgm,
             'dfedsam': dfedsam, 'gradient_tracking': gradient_tracking}


def _apply_fn():
  return models.get_model('logreg', (F,), C).apply


def _stacked_params(flat: np.ndarray):
  """`[N, F*C + C]` flat vectors as the logreg's stacked params."""
  return {'params': {'Dense_0': {
      'kernel': jnp.asarray(flat[:, :F * C].reshape(N, F, C), jnp.float32),
      'bias': jnp.asarray(flat[:, F * C:], jnp.float32)}}}


def _flat(stacked) -> np.ndarray:
  """The stacked params-shaped leaves as `[N, F*C + C]` float64."""
  dense = stacked['params']['Dense_0']
  return np.concatenate(
      [np.asarray(dense['kernel'], np.float64).reshape(N, -1),
       np.asarray(dense['bias'], np.float64)], axis=1)


def _run(name, mixing, *, rounds=ROUNDS, steps=STEPS, lr_decay=1.0,
         weight_decay=0.0, **hparams):
  """Runs algorithm `name` on the nodes; see `_cached_run`."""
  return _cached_run(name, mixing, rounds, steps, lr_decay, weight_decay,
                     tuple(sorted(hparams.items())))


@functools.lru_cache(maxsize=None)
def _cached_run(name, mixing, rounds, steps, lr_decay, weight_decay,
                hparams):
  """Returns the algorithm and, per round, (client outputs, node states
  after the gossip, server metrics), all stacked over the nodes."""
  algorithm = FACTORIES[name](
      _apply_fn(), LocalSGD(LR, lr_decay=lr_decay, weight_decay=weight_decay),
      **dict(hparams))
  w = jnp.asarray(MIXING[mixing], jnp.float32)
  train_x, train_y = jnp.asarray(DATA_X), jnp.asarray(DATA_Y)

  def local(state, indices, mask, rng):
    output, _, _ = client_update(algorithm, state, (), indices, mask, rng,
                                 train_x, train_y, unroll=False,
                                 skip_empty_steps=True)
    return output

  @jax.jit
  def round_fn(states, indices, mask, rngs):
    output = jax.vmap(local)(states, indices, mask, rngs)
    mixed = jax.tree.map(lambda s: jnp.tensordot(w, s, axes=1),
                         output.message.sent)
    states, metrics = jax.vmap(algorithm.server_update, (0, 0, None))(
        states, GossipMessage(mixed, output.message.kept),
        CohortInfo(num_clients=jnp.float32(N)))
    return output, states, metrics

  states = jax.vmap(algorithm.server_init)(
      _stacked_params(INIT), jax.random.split(jax.random.key(0), N))
  history = []
  for t in range(rounds):
    output, states, metrics = round_fn(
        states, INDICES[t, :, :steps], MASK[t, :, :steps],
        jax.random.split(jax.random.key(t + 1), N))
    history.append((output, states, metrics))
  return algorithm, tuple(history)


def _models(algorithm, history) -> list[np.ndarray]:
  """The nodes' `[N, F*C + C]` models at the start and after every round."""
  return [INIT] + [_flat(jax.vmap(algorithm.server_params)(states))
                   for _, states, _ in history]


# The numpy side.


def _np_grad(theta, rows, mask):
  """Gradient of the masked mean cross-entropy of DATA rows at theta."""
  w, b = theta[:F * C].reshape(F, C), theta[F * C:]
  x = DATA_X[rows].astype(np.float64)
  z = x @ w + b
  p = np.exp(z - z.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  d = (p - np.eye(C)[DATA_Y[rows]]) * mask[:, None] / max(mask.sum(), 1.0)
  return np.concatenate([np.ravel(x.T @ d), d.sum(axis=0)])


def _np_local(theta, t, i, eta, *, steps=STEPS, momentum=0.0, rho=0.0,
              weight_decay=0.0):
  """Node i's heavy-ball (SAM) SGD steps of round t from y^0 = y^{-1} =
  theta; steps without data are skipped."""
  y = previous = theta.copy()
  for k in range(steps):
    rows, mask = INDICES[t, i, k], MASK[t, i, k]
    if mask.sum() == 0:
      continue
    g = _np_grad(y, rows, mask)
    if rho:
      g = _np_grad(y + rho * g / (np.linalg.norm(g) + 1e-12), rows, mask)
    y, previous = (y - eta * (g + weight_decay * y)
                   + momentum * (y - previous)), y
  return y


def _np_dpsgd(w, *, steps=STEPS, lr_decay=1.0, weight_decay=0.0):
  """x_i <- sum_j W_ij x_j - eta g_i(x_i), with `steps` local steps."""
  x = INIT.copy()
  for t in range(ROUNDS):
    eta = LR * lr_decay**t
    local = np.stack([_np_local(x[i], t, i, eta, steps=steps,
                                weight_decay=weight_decay)
                      for i in range(N)])
    x = w @ x + (local - x)
  return x


def _np_dfedavg(w, *, momentum=0.0, rho=0.0, lr_decay=1.0,
                weight_decay=0.0):
  """z_i = y_i^K from x_i by heavy-ball (SAM) SGD; x_i <- sum_j W_ij z_j."""
  x = INIT.copy()
  for t in range(ROUNDS):
    eta = LR * lr_decay**t
    z = np.stack([_np_local(x[i], t, i, eta, momentum=momentum, rho=rho,
                            weight_decay=weight_decay) for i in range(N)])
    x = w @ z
  return x


def _np_round_grads(x, t, g_prev):
  """g_i(x_i) over all of node i's real examples of round t (g_prev_i for
  a node without any)."""
  return np.stack([
      _np_grad(x[i], INDICES[t, i].ravel(), MASK[t, i].ravel())
      if MASK[t, i].sum() else g_prev[i] for i in range(N)])


def _np_gradient_tracking(w, rounds, *, lr_decay=1.0, weight_decay=0.0,
                          tracking=True):
  """x_{t+1} = W (x_t - eta y_t), y_{t+1} = W y_t + g(x_{t+1}) - g(x_t),
  y_0 = g(x_0). Returns x_T and W y_{T-1}. Without `tracking`, y_t = g(x_t)
  (adapt-then-combine decentralized SGD)."""
  x = INIT.copy()
  g = _np_round_grads(x, 0, None)
  y = g
  for t in range(rounds):
    eta = LR * lr_decay**t
    x = w @ (x - eta * (y + weight_decay * x))
    mixed_y = w @ y
    if t + 1 < rounds:
      g_next = _np_round_grads(x, t + 1, g)
      y = mixed_y + g_next - g if tracking else g_next
      g = g_next
  return x, mixed_y


def _assert_close(got, want):
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _norms(flat):
  return np.linalg.norm(flat, axis=-1)


# The tests.


@pytest.mark.parametrize('mixing, lr_decay, weight_decay',
                         [('ring', 1.0, 0.0), ('skewed', 0.5, 0.1)])
def test_dpsgd_matches_numpy(mixing, lr_decay, weight_decay):
  kwargs = dict(lr_decay=lr_decay, weight_decay=weight_decay)
  algorithm, history = _run('dpsgd', mixing, **kwargs)
  x = _models(algorithm, history)
  w = MIXING[mixing]
  _assert_close(x[-1], _np_dpsgd(w, **kwargs))
  for t, (output, _, metrics) in enumerate(history):
    _assert_close(_flat(output.message.sent), x[t])  # It sends x_i ...
    kept = _flat(output.message.kept)  # ... and keeps y_K - x_i.
    _assert_close(output.metrics['delta_norm'], _norms(kept))
    _assert_close(metrics['server_update_norm'], _norms(x[t + 1] - x[t]))
  # Mixing after the local steps (DFedAvg's order) lands elsewhere.
  assert not np.allclose(x[-1], _np_dfedavg(w, **kwargs), atol=1e-4)


def test_dpsgd_complete_graph_one_step():
  """W = 11^T / N and one local step: x_i <- mean_j x_j - eta g_i(x_i), so
  the nodes' average moves by -eta mean_i g_i(x_i)."""
  algorithm, history = _run('dpsgd', 'complete', steps=1)
  x = _models(algorithm, history)
  _assert_close(x[-1], _np_dpsgd(MIXING['complete'], steps=1))
  for t in range(ROUNDS):
    grads = np.stack([_np_grad(x[t][i], INDICES[t, i, 0], MASK[t, i, 0])
                      for i in range(N)])
    _assert_close(x[t + 1], x[t].mean(axis=0) - LR * grads)
    _assert_close(x[t + 1].mean(axis=0),
                  x[t].mean(axis=0) - LR * grads.mean(axis=0))


@pytest.mark.parametrize('name, mixing, momentum, lr_decay, weight_decay',
                         [('dfedavg', 'skewed', 0.0, 1.0, 0.0),
                          ('dfedavgm', 'ring', 0.5, 1.0, 0.0),
                          ('dfedavgm', 'skewed', 0.9, 0.5, 0.1)])
def test_dfedavg_matches_numpy(name, mixing, momentum, lr_decay,
                               weight_decay):
  kwargs = dict(lr_decay=lr_decay, weight_decay=weight_decay)
  algorithm, history = _run(name, mixing, momentum=momentum, **kwargs)
  x = _models(algorithm, history)
  w = MIXING[mixing]
  _assert_close(x[-1], _np_dfedavg(w, momentum=momentum, **kwargs))
  for t, (output, states, metrics) in enumerate(history):
    assert output.message.kept == ()
    sent = _flat(output.message.sent)  # y_K ...
    _assert_close(x[t + 1], w @ sent)  # ... mixed is the next model.
    _assert_close(output.metrics['delta_norm'], _norms(sent - x[t]))
    _assert_close(metrics['server_update_norm'], _norms(x[t + 1] - x[t]))
    np.testing.assert_array_equal(output.weight, np.ones(N))
    np.testing.assert_array_equal(states.round_num, np.full(N, t + 1))
  if momentum:  # The momentum mattered.
    assert not np.allclose(x[-1], _np_dfedavg(w, **kwargs), atol=1e-4)


def test_dfedsam_matches_numpy():
  rho = 0.3
  algorithm, history = _run('dfedsam', 'skewed', rho=rho)
  x = _models(algorithm, history)
  _assert_close(x[-1], _np_dfedavg(MIXING['skewed'], rho=rho))
  # The SAM ascent mattered: DFedAvg lands elsewhere.
  assert not np.allclose(x[-1], _np_dfedavg(MIXING['skewed']), atol=1e-4)


def test_dfedavg_without_momentum_is_dfedsam_with_rho_zero():
  plain = _models(*_run('dfedavg', 'skewed', momentum=0.0))
  flat = _models(*_run('dfedsam', 'skewed', rho=0.0))
  _assert_close(plain[-1], flat[-1])


@pytest.mark.parametrize('mixing, lr_decay, weight_decay',
                         [('ring', 1.0, 0.0), ('skewed', 0.5, 0.1)])
def test_gradient_tracking_matches_numpy(mixing, lr_decay, weight_decay):
  kwargs = dict(lr_decay=lr_decay, weight_decay=weight_decay)
  algorithm, history = _run('gradient_tracking', mixing, rounds=3, **kwargs)
  want_x, want_mixed_tracker = _np_gradient_tracking(MIXING[mixing], 3,
                                                     **kwargs)
  _, states, _ = history[-1]
  _assert_close(_models(algorithm, history)[-1], want_x)
  _assert_close(_flat(states.tracker_mixed), want_mixed_tracker)
  # Tracking mattered: stepping along g_i(x_i) lands elsewhere.
  assert not np.allclose(
      want_x, _np_gradient_tracking(MIXING[mixing], 3, tracking=False,
                                    **kwargs)[0], atol=1e-4)


def test_gradient_tracking_keeps_the_tracking_invariant():
  """y_0 = g_0, and mean_i y_i = mean_i g_i(x_i) in every round."""
  algorithm, history = _run('gradient_tracking', 'skewed', rounds=3,
                            lr_decay=0.5, weight_decay=0.1)
  x = _models(algorithm, history)
  g_prev = None
  for t, (output, states, _) in enumerate(history):
    tracker = _flat(output.message.sent.tracker)
    grads = _flat(output.message.kept)
    _assert_close(grads, _np_round_grads(x[t], t, g_prev))
    if t == 0:
      _assert_close(tracker, grads)  # y_0 = g_0 from the zero state.
    _assert_close(tracker.mean(axis=0), grads.mean(axis=0))
    # The nodes keep W y_t and g_t, whose means agree as well.
    _assert_close(_flat(states.tracker_mixed).mean(axis=0),
                  _flat(states.grad_prev).mean(axis=0))
    _assert_close(output.metrics['tracker_norm'], _norms(tracker))
    _assert_close(output.metrics['grad_norm'], _norms(grads))
    g_prev = grads
  # Round 2's node 1 had no data: it reused its gradient of round 1.
  _assert_close(_flat(history[2][0].message.kept)[1],
                _flat(history[1][0].message.kept)[1])


def test_node_states_start_from_the_model():
  params = models.get_model('logreg', (F,), C).init(jax.random.key(0))
  for name in ('dpsgd', 'dfedavg', 'dfedsam'):
    algorithm = FACTORIES[name](_apply_fn(), LocalSGD(LR))
    node = algorithm.server_init(params, jax.random.key(1))
    chex.assert_trees_all_equal(algorithm.server_params(node), params)
    assert int(node.round_num) == 0
  algorithm = gradient_tracking(_apply_fn(), LocalSGD(LR))
  node = algorithm.server_init(params, jax.random.key(1))
  chex.assert_trees_all_equal(algorithm.server_params(node), params)
  chex.assert_trees_all_equal_shapes(node.tracker_mixed, params)
  chex.assert_trees_all_equal(node.grad_prev, node.tracker_mixed,
                              jax.tree.map(jnp.zeros_like, params))


@pytest.mark.parametrize('factory, kwargs, name', [
    (dfedavg, {'momentum': -0.1}, 'momentum'),
    (dfedavg, {'momentum': 1.0}, 'momentum'),
    (dfedavgm, {'momentum': 0.0}, 'momentum'),
    (dfedsam, {'rho': -0.1}, 'rho'),
])
def test_bad_hyperparameters_are_errors(factory, kwargs, name):
  with pytest.raises(ValueError, match=name):
    factory(_apply_fn(), LocalSGD(0.1), **kwargs)
