"""The personal evaluation against a numpy re-statement: every client's own
model (here: its last local model, kept in the store) scored on its own
held-out rows, the global model on the same rows, the sample of clients,
the adaptation batches, and new clients that never train."""

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from algorithms.fedavg import fedavg
from fedjax_core import Simulation, SimulationConfig
from fedjax_core import streams
from fedjax_core.algorithm import Personalization
from fedjax_core.data import datasets
from fedjax_core.engine import batching
from fedjax_core.engine import personal_evaluation
from fedjax_core.errors import SettingError
import models


@flax.struct.dataclass
class _Kept:
  params: dict
  trained: jax.Array


def _last_local_model(apply_fn, tune_steps=0):
  """FedAvg whose clients keep their last local model as their personal
  model (the global model until they train); with `tune_steps`, the
  personal model of a client that never trained is the global model moved
  by the mean of its adaptation batches' inputs (a marker the test can
  recompute)."""
  base = fedavg(apply_fn, optax.sgd(0.1), optax.sgd(1.0))

  def client_state_init(params):
    return _Kept(jax.tree.map(jnp.zeros_like, params), jnp.float32(0.0))

  def client_final(server_state, client_state, local, info):
    output = base.client_final(server_state, client_state, local, info)
    return output._replace(client_state=_Kept(local.params, jnp.float32(1)))

  def personal_params(server_state, client_state, train, rng):
    del rng
    global_params = server_state.params
    if tune_steps:
      shift = jnp.sum(train.x * train.mask[..., None]) / jnp.maximum(
          jnp.sum(train.mask), 1.0)
      global_params = jax.tree.map(lambda p: p + shift, global_params)
    return jax.tree.map(
        lambda kept, g: jnp.where(client_state.trained > 0, kept, g),
        client_state.params, global_params)

  return base._replace(
      client_state_init=client_state_init, client_final=client_final,
      personalization=Personalization(personal_params, tune_steps))


def _accuracy(params, x, y) -> float:
  dense = params['params']['Dense_0']
  logits = np.asarray(x, np.float64) @ np.asarray(dense['kernel']) + (
      np.asarray(dense['bias']))
  return float(np.mean(np.argmax(logits, axis=1) == y))


def _dataset(**kwargs):
  return datasets.load_dataset('synthetic', num_clients=12, seed=0,
                               local_test_fraction=0.3, **kwargs)


def _run(algorithm, dataset, **kwargs):
  model = models.get_model('logreg', dataset.example_shape,
                           dataset.num_classes)
  config = SimulationConfig(num_rounds=2, clients_per_round=4, batch_size=5,
                            local_steps=2, eval_every=0, progress=False,
                            **kwargs)
  sim = Simulation(algorithm, model, dataset, config)
  return sim, sim.run()


def _per_client(sim, dataset, ids):
  """Numpy: accuracy of each client's kept (or the global) model and of the
  global model on the client's held-out rows."""
  stacked = jax.device_get(sim.store.stacked)
  global_params = jax.device_get(sim.server_state.params)
  personal, global_ = [], []
  for i in ids:
    rows = dataset.local_test_indices[i]
    x, y = dataset.train_x[rows], dataset.train_y[rows]
    own = jax.tree.map(lambda a: a[i], stacked.params)
    chosen = own if stacked.trained[i] > 0 else global_params
    personal.append(_accuracy(chosen, x, y))
    global_.append(_accuracy(global_params, x, y))
  return np.array(personal), np.array(global_)


def test_every_client_scored_by_its_own_model():
  dataset = _dataset()
  model = models.get_model('logreg', dataset.example_shape,
                           dataset.num_classes)
  sim, summary = _run(_last_local_model(model.apply), dataset)
  personal, global_ = _per_client(sim, dataset, range(dataset.num_clients))
  assert summary['final_personal_accuracy_mean'] == pytest.approx(
      personal.mean())
  assert summary['final_personal_accuracy_p10'] == pytest.approx(
      np.percentile(personal, 10))
  assert sim.history[-1]['personal_accuracy_std'] == pytest.approx(
      personal.std())
  assert summary['final_local_test_accuracy_mean'] == pytest.approx(
      global_.mean())
  assert not np.allclose(personal, global_)  # Personal models differ.


def test_a_seeded_sample_of_clients_is_scored():
  dataset = _dataset()
  model = models.get_model('logreg', dataset.example_shape,
                           dataset.num_classes)
  sim, summary = _run(_last_local_model(model.apply), dataset,
                      personal_eval_clients=5)
  ids = personal_evaluation.sample_clients(
      dataset.local_test_indices.sizes, 5, seed=0)
  assert len(ids) == 5 and len(set(ids)) == 5
  personal, _ = _per_client(sim, dataset, ids)
  assert summary['final_personal_accuracy_mean'] == pytest.approx(
      personal.mean())


def test_new_clients_are_personalized_from_their_own_batches():
  dataset = _dataset(holdout_clients=0.25)
  new = dataset.new_clients
  assert new.num_clients == 3 and dataset.num_clients == 9
  model = models.get_model('logreg', dataset.example_shape,
                           dataset.num_classes)
  sim, summary = _run(_last_local_model(model.apply, tune_steps=2), dataset)
  global_params = jax.device_get(sim.server_state.params)
  want = []
  for i in range(new.num_clients):
    # The engine's adaptation batches: 2 steps of 5 rows of the client's
    # training split, drawn from (seed, rounds done, client, stream).
    batches = _adaptation_batches(new.client_indices, i)
    shift = dataset.train_x[batches.indices[0]][batches.mask[0] > 0].mean()
    shifted = jax.tree.map(lambda p: p + shift, global_params)
    rows = new.local_test_indices[i]
    want.append(_accuracy(shifted, dataset.train_x[rows],
                          dataset.train_y[rows]))
  assert summary['final_newclient_accuracy_mean'] == pytest.approx(
      np.mean(want), abs=1e-6)


def _adaptation_batches(client_indices, client):
  return batching.cohort_batches(
      client_indices, np.array([client]), seed=0, round_num=2, batch_size=5,
      num_steps=2, local_steps=2, stream=streams.PERSONAL_BATCHES)


def test_personalized_algorithm_without_local_test_rows_is_an_error():
  dataset = datasets.load_dataset('synthetic', num_clients=6, seed=0)
  model = models.get_model('logreg', dataset.example_shape,
                           dataset.num_classes)
  with pytest.raises(SettingError, match='local_test_fraction'):
    _run(_last_local_model(model.apply), dataset)


@pytest.mark.parametrize('fraction, match', [
    (1.0, r'\[0, 1\)'), (0.01, 'holds out 0 of 12')])
def test_bad_holdout_clients(fraction, match):
  with pytest.raises(SettingError, match=match):
    _dataset(holdout_clients=fraction)


def test_holdout_clients_needs_local_test_rows():
  with pytest.raises(SettingError, match='local_test_fraction'):
    datasets.load_dataset('synthetic', num_clients=12, holdout_clients=0.25)
