"""Workload `personal_eval`: scoring 1,000 clients' personal models
against one training round of a 10-client cohort.

1,000 clients of the MLP on digits-shaped data (64 features, 10 classes; 50
random examples a client, 10 of them held out as the client's own test
split), a cohort of 10 clients a round, E local epochs of batch 10 (4 steps
an epoch), E = 1 and E = 5 (McMahan et al. 2017's E). For each algorithm
and E: the median seconds of a training round and of an evaluation that
builds and scores all 1,000 clients' personal models on their own held-out
rows (plus the global model on the same rows and on a 100-example test
split), timed alternately in one run after each has compiled; the ratio
evaluation / round (target: below 1 for stored personal models). Ditto
keeps a whole personal MLP per client (200 MB of client state for 1,000
clients); FedPer keeps the head (and fits the head of a client that never
trained on 5 batches of its data, which the evaluation computes for every
client); FedAvg-FT fine-tunes the global model for 5 steps of each
client's data inside the evaluation.

Arithmetic: an evaluation runs 10,000 example forward passes (1,000
clients x 10 rows); a round runs 10 clients x 40 x E examples forward and
backward, about 1,200 x E forward-pass equivalents. The floor
`s_forward_floor` is one jitted, vmapped forward pass of 1,000 stacked MLPs
over 10 rows each, with nothing else (no selection between personal and
global models, no gathering of rows): what scoring 1,000 personal MLPs
costs at the least on this machine.
"""

import statistics
import time

import jax
import numpy as np

import algorithms
from fedjax_core import ClientIndices, FederatedDataset, Simulation
from fedjax_core import SimulationConfig
import models
from scripts import config_from_flags
from scripts.benchmarks import harness

_CLIENTS = 1000
_PER_CLIENT = 50
_SHAPE = (64,)
_CLASSES = 10
_ALGORITHMS = ('ditto', 'fedper', 'fedavg_ft')
_EPOCHS = (1, 5)


def _dataset() -> FederatedDataset:
  rng = np.random.default_rng(0)
  n = _CLIENTS * _PER_CLIENT
  x = rng.integers(0, 256, (n,) + _SHAPE, np.uint8)
  y = rng.integers(0, _CLASSES, n).astype(np.int32)
  clients = ClientIndices(np.arange(n),
                          np.arange(0, n + 1, _PER_CLIENT))
  train, local_test = clients.hold_out(0.2, seed=0)
  return FederatedDataset(name='random_clients', train_x=x, train_y=y,
                          client_indices=train, test_x=x[:100],
                          test_y=y[:100], num_classes=_CLASSES,
                          local_test_indices=local_test)


def _simulation(name: str, dataset: FederatedDataset,
                local_epochs: int) -> Simulation:
  model = models.get_model('mlp', _SHAPE, _CLASSES)
  layers = None
  if name in algorithms.SPLIT_MODEL_ALGORITHMS:
    layers = algorithms.default_personal_layers(
        name, models.head_layers('mlp', _SHAPE, _CLASSES))
  algorithm = algorithms.build_algorithm(
      name, model.apply, num_clients=_CLIENTS, client_lr=0.05,
      personal_layers=layers, model_init=model.init)
  config = SimulationConfig(
      num_rounds=1 + 2 * harness.ROUNDS.value, clients_per_round=10,
      batch_size=10, local_epochs=local_epochs, progress=False,
      **config_from_flags.placement_settings())
  return Simulation(algorithm, model, dataset, config,
                    mesh=config_from_flags.mesh())


def _timed(fn) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _figures(name: str, dataset: FederatedDataset, local_epochs: int
             ) -> dict:
  sim = _simulation(name, dataset, local_epochs)
  name = f'{name}_e{local_epochs}'
  first_round = sim.run_round()['wall_s']
  first_eval = _timed(sim.evaluate)
  rounds, evals = [], []
  for _ in range(harness.ROUNDS.value):
    rounds.append(sim.run_round()['wall_s'])
    evals.append(_timed(sim.evaluate))
  round_s, eval_s = statistics.median(rounds), statistics.median(evals)
  state_mb = sum(np.asarray(x).nbytes for x in jax.tree.leaves(
      sim.store.stacked)) / 2**20
  return {f's_per_round_{name}': round_s,
          f's_per_eval_{name}': eval_s,
          f'ratio_eval_vs_round_{name}': eval_s / round_s,
          f'compile_s_round_{name}': first_round - round_s,
          f'compile_s_eval_{name}': first_eval - eval_s,
          f'client_state_mb_{name}': state_mb,
          f'state_store_{name}': sim.store.placement}


def _forward_floor() -> float:
  """Median seconds of one vmapped forward pass of 1,000 MLPs, 10 rows
  each."""
  model = models.get_model('mlp', _SHAPE, _CLASSES)
  params = model.init(jax.random.key(0))
  stacked = jax.device_put(jax.tree.map(
      lambda p: np.broadcast_to(p, (_CLIENTS,) + p.shape) * np.float32(1),
      params))
  x = jax.device_put(np.ones((_CLIENTS, _PER_CLIENT // 5) + _SHAPE,
                             np.float32))
  forward = jax.jit(jax.vmap(model.apply))
  return harness.median_seconds(
      lambda: jax.block_until_ready(forward(stacked, x)),
      harness.REPEATS.value)


def run() -> dict:
  """Runs workload `personal_eval` and returns its figures."""
  dataset = _dataset()
  result = {'workload': 'personal_eval', 'backend': jax.default_backend(),
            'devices': jax.device_count(), 'clients_scored': _CLIENTS,
            's_forward_floor': _forward_floor()}
  for local_epochs in _EPOCHS:
    for name in _ALGORITHMS:
      result.update(_figures(name, dataset, local_epochs))
  result['peak_host_mb'] = harness.peak_host_mb()
  return result
