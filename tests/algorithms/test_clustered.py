"""IFCA and HypCluster through the whole engine against a numpy re-statement
of their rounds: each client picks the cluster of least loss (IFCA on its
first batch, HypCluster over all its batches), trains it by local SGD, and
each chosen cluster moves by the example-weighted mean delta of its clients
through its own server momentum."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from algorithms.clustered import hypcluster, ifca
from fedjax_core import Batch, FederatedDataset, Simulation, SimulationConfig
from fedjax_core.data import sampling
from fedjax_core.data.client_indices import ClientIndices
from fedjax_core.engine import batching, local_training
from fedjax_core.errors import SettingError
from fedjax_core.toolkit.local_sgd import LocalSGD
import tiny_problem as tiny

LR = 0.5
MOMENTUM = 0.5
K = 3
ROUNDS = 2
EPOCHS = 2
BATCH = 4
_RNG = np.random.default_rng(36)
X = _RNG.normal(size=(18, 3)).astype(np.float32)
Y = (X @ np.array([1.0, -1.0, 0.5]) > 0).astype(np.int32)
Y[11:15] = 1 - Y[11:15]  # Client 2 labels the other way.
CLIENTS = (np.arange(0, 6), np.arange(6, 11), np.arange(11, 15))
LOCAL_TEST = ([15], [16], [17])


def _dataset(x=X, y=Y, clients=CLIENTS, local_test=LOCAL_TEST):
  return FederatedDataset(
      name='clusters', train_x=x, train_y=y, client_indices=clients,
      test_x=x, test_y=y, num_classes=2,
      local_test_indices=ClientIndices.from_lists(local_test))


def _np_loss_grad(theta, rows):
  """Mean cross-entropy over `rows` and its gradient, flat, in float64."""
  w, b = theta[:6].reshape(3, 2), theta[6:]
  x = X[rows].astype(np.float64)
  z = x @ w + b
  z = z - z.max(axis=1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  d = (np.exp(log_p) - np.eye(2)[Y[rows]]) / len(rows)
  return (-log_p[np.arange(len(rows)), Y[rows]].mean(),
          tiny.flat(x.T @ d, d.sum(axis=0)))


def _np_choice(losses):
  """argmin, checking the choice is no near-tie the float32 run might
  break the other way."""
  order = np.sort(losses)
  assert order[1] - order[0] > 1e-4, losses
  return int(np.argmin(losses))


def _np_client(models, steps, hyp_cluster):
  """One client's round: its cluster and its trained model."""
  if hyp_cluster:
    scores = sum(len(rows) * np.array([_np_loss_grad(m, rows)[0]
                                       for m in models]) for rows in steps)
  else:
    scores = [_np_loss_grad(m, steps[0])[0] for m in models]
  cluster = _np_choice(scores)
  y = models[cluster].copy()
  for rows in steps:
    y = y - LR * _np_loss_grad(y, rows)[1]
  return cluster, y


def _np_run(models, hyp_cluster):
  """k-model rounds with per-cluster server momentum; returns the models,
  every client's last cluster and the last round's shares."""
  models, trace = models.copy(), np.zeros_like(models)
  clusters = np.zeros(3, int)
  for t in range(ROUNDS):
    ids = sampling.sample_clients(0, t, 3, 3)
    batches = batching.cohort_batches(
        _dataset().client_indices, ids, seed=0, round_num=t,
        batch_size=BATCH, num_steps=8, local_epochs=EPOCHS)
    share, deltas = np.zeros(K), np.zeros_like(models)
    for slot, cid in enumerate(ids):
      steps = [rows[mask > 0] for rows, mask in
               zip(batches.indices[slot], batches.mask[slot]) if mask.any()]
      cluster, y = _np_client(models, steps, hyp_cluster)
      weight = sum(len(rows) for rows in steps)
      share[cluster] += weight
      deltas[cluster] += weight * (y - models[cluster])
      clusters[cid] = cluster
    for j in np.flatnonzero(share):
      trace[j] = deltas[j] / share[j] + MOMENTUM * trace[j]
      models[j] = models[j] + trace[j]
    share /= share.sum()
  return models, clusters, share


def _stacked_flat(params):
  kernel, bias = tiny.as_numpy(params)
  return np.stack([tiny.flat(kernel[j], bias[j]) for j in range(len(bias))])


def _algorithm(factory, num_clusters=K, select_batches=2):
  model = tiny.model()
  return factory(model.apply, LocalSGD(LR),
                 optax.sgd(1.0, momentum=MOMENTUM), model_init=model.init,
                 num_clusters=num_clusters, select_batches=select_batches)


def _run(algorithm, dataset, rounds):
  config = SimulationConfig(num_rounds=rounds, clients_per_round=2 if len(
      dataset.client_indices) == 2 else 3, batch_size=BATCH,
                            local_epochs=EPOCHS, eval_every=0,
                            progress=False)
  sim = Simulation(algorithm, tiny.model(), dataset, config)
  models = _stacked_flat(algorithm.server_params(sim.server_state))
  sim.run()
  return models, sim


@pytest.mark.parametrize('factory', [ifca, hypcluster])
def test_matches_numpy_restatement(factory):
  algorithm = _algorithm(factory)
  models0, sim = _run(algorithm, _dataset(), ROUNDS)
  want, clusters, share = _np_run(models0, factory is hypcluster)
  got = _stacked_flat(algorithm.server_params(sim.server_state))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(sim.store.stacked.cluster, clusters)
  np.testing.assert_array_equal(sim.store.stacked.trained, 1.0)
  np.testing.assert_allclose(sim.server_state.share, share, rtol=1e-6)
  # A cluster nobody chose kept its model; the chosen ones moved.
  chosen = share > 0
  assert 0 < chosen.sum() < K
  np.testing.assert_array_equal(got[~chosen], models0[~chosen])
  assert not np.allclose(got[chosen], models0[chosen], rtol=1e-3)
  np.testing.assert_allclose(
      _stacked_flat(jax.tree.map(lambda m: m[None], algorithm.full_params(
          sim.server_state)))[0], want[np.argmax(share)], rtol=1e-5,
      atol=1e-6)
  _check_personal_params(factory, sim, want, clusters, share)


def _check_personal_params(factory, sim, want, clusters, share):
  """With select_batches, trained and never-trained clients get the cluster
  of least loss on their batches; with 0, their last cluster (never
  trained: the largest share's)."""
  rows = np.array([[11, 12, 13, 0], [14, 2, 0, 0]])
  mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], np.float32)
  train = Batch(x=jnp.asarray(X[rows]), y=jnp.asarray(Y[rows]),
                mask=jnp.asarray(mask))
  real = np.concatenate([r[m > 0] for r, m in zip(rows, mask)])
  best = _np_choice([_np_loss_grad(model, real)[0] for model in want])
  by_loss, by_state = (_algorithm(factory, select_batches=n) for n in (2, 0))
  assert by_loss.personalization.train_steps == 2
  assert by_state.personalization.train_steps == 0
  never = by_loss.client_state_init(None)
  client = jax.tree.map(lambda leaf: leaf[1], sim.store.stacked)
  for algorithm, state, cluster in (
      (by_loss, client, best), (by_loss, never, best),
      (by_state, client, clusters[1]),
      (by_state, never, np.argmax(share))):
    got = algorithm.personalization.personal_params(sim.server_state, state,
                                                    train, None)
    np.testing.assert_allclose(
        _stacked_flat(jax.tree.map(lambda m: m[None], got))[0],
        want[cluster], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('factory', [ifca, hypcluster])
def test_opposite_labels_end_in_different_clusters(factory):
  x = np.tile(X[:6], (2, 1))
  y = np.concatenate([Y[:6], 1 - Y[:6]])
  dataset = _dataset(x, y, (np.arange(0, 5), np.arange(6, 11)), ([5], [11]))
  algorithm = _algorithm(factory, num_clusters=2)
  _, sim = _run(algorithm, dataset, rounds=4)
  clusters = sim.store.stacked.cluster
  assert clusters[0] != clusters[1]
  for client, rows in enumerate(((0, 1, 2, 3), (6, 7, 8, 9))):
    rows = np.array([rows])
    train = Batch(x=jnp.asarray(x[rows]), y=jnp.asarray(y[rows]),
                  mask=jnp.ones((1, 4)))
    params = algorithm.personalization.personal_params(
        sim.server_state, algorithm.client_state_init(None), train, None)
    np.testing.assert_allclose(params['params']['Dense_0']['kernel'],
                               sim.server_state.params['params']['Dense_0'][
                                   'kernel'][clusters[client]])
    predicted = np.argmax(tiny.model().apply(params, x[rows[0]]), axis=-1)
    np.testing.assert_array_equal(predicted, y[rows[0]])


@pytest.mark.parametrize('factory', [ifca, hypcluster])
def test_initial_models(factory):
  model = tiny.model()
  params = model.init(jax.random.key(1))
  key = jax.random.key(2)
  state = _algorithm(factory).server_init(params, key)
  drawn = [model.init(k) for k in jax.random.split(key, K)]
  want = ([params] if factory is ifca else drawn[:1]) + drawn[1:]
  np.testing.assert_array_equal(
      _stacked_flat(state.params),
      np.stack([tiny.flat(*tiny.as_numpy(m)) for m in want]))


def _shapes(jaxpr, primitive):
  """The shapes of the inputs and outputs of every `primitive` equation,
  nested ones included."""
  shapes = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == primitive:
      shapes += [v.aval.shape for v in eqn.invars + eqn.outvars]
    for param in eqn.params.values():
      for sub in param if isinstance(param, tuple) else (param,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          shapes += _shapes(sub.jaxpr, primitive)
  return shapes


def test_ifca_clients_share_the_frozen_models_in_the_scan():
  """Under the engine's vmap over clients, the k models ride the local-step
  scan once ([k, 3, 2]), not once per client ([cohort, k, 3, 2])."""
  cohort, k = 5, 4
  algorithm = _algorithm(ifca, num_clusters=k)
  server_state = algorithm.server_init(tiny.model().init(jax.random.key(0)),
                                       jax.random.key(1))

  def one_client(client_state, indices, mask, rng):
    return local_training.client_update(
        algorithm, server_state, client_state, indices, mask, rng,
        jnp.asarray(X), jnp.asarray(Y), unroll=False, skip_empty_steps=True)

  states = jax.tree.map(lambda leaf: jnp.stack([leaf] * cohort),
                        algorithm.client_state_init(None))
  jaxpr = jax.make_jaxpr(jax.vmap(one_client))(
      states, jnp.zeros((cohort, 3, 2), jnp.int32),
      jnp.ones((cohort, 3, 2)), jax.random.split(jax.random.key(0), cohort))
  shapes = _shapes(jaxpr.jaxpr, 'scan')
  assert (k, 3, 2) in shapes
  assert (cohort, k, 3, 2) not in shapes


@pytest.mark.parametrize('kwargs, setting', [
    ({'num_clusters': 0}, 'num_clusters'),
    ({'num_clusters': 2.0}, 'num_clusters'),
    ({'select_batches': -1}, 'select_batches'),
])
def test_bad_hyperparameters_are_errors(kwargs, setting):
  model = tiny.model()
  with pytest.raises(SettingError) as error:
    ifca(model.apply, LocalSGD(0.1), optax.sgd(1.0), model_init=model.init,
         **kwargs)
  assert error.value.setting == setting
