"""Runs one SCAFFOLD problem under several placements and saves each run's
final server parameters and client store (`python sharded_runs.py OUT`).

Run by test_sharding.py in a process with 8 forced CPU devices.
"""

import sys

import jax
import numpy as np
import optax

from algorithms.scaffold import scaffold
from fedjax_core import FederatedDataset, Simulation, SimulationConfig
from fedjax_core.engine import placement
from fedjax_core.toolkit.local_sgd import LocalSGD
import models

POPULATION, COHORT, ROUNDS = 13, 5, 3
# name: (devices, --mesh_shape, settings)
PLACEMENTS = {
    'one_device': (1, None, dict(state_store='host')),
    'eight_vmapped_sharded_store': (8, None, dict(state_store='sharded')),
    'four_by_two_one_by_one_unrolled': (
        8, '4,2', dict(loop='unroll', clients_in_parallel=1,
                       state_store='device')),
    'two_by_four_chunks_of_two_scan': (
        8, '2,4', dict(loop='scan', clients_in_parallel=2,
                       state_store='sharded')),
}


def _dataset() -> FederatedDataset:
  rng = np.random.default_rng(0)
  sizes = rng.integers(4, 12, POPULATION)
  x = rng.normal(size=(sizes.sum(), 6)).astype(np.float32)
  y = rng.integers(0, 3, sizes.sum()).astype(np.int32)
  starts = np.concatenate([[0], np.cumsum(sizes)])
  clients = tuple(np.arange(starts[i], starts[i + 1])
                  for i in range(POPULATION))
  return FederatedDataset(name='sharding', train_x=x, train_y=y,
                          client_indices=clients, test_x=x[:20],
                          test_y=y[:20], num_classes=3)


def run(devices: int, mesh_shape: str | None, settings: dict):
  dataset = _dataset()
  model = models.get_model('mlp', (6,), 3)
  algorithm = scaffold(model.apply, LocalSGD(0.1), optax.sgd(1.0),
                       num_clients=POPULATION)
  config = SimulationConfig(num_rounds=ROUNDS, clients_per_round=COHORT,
                            batch_size=4, eval_every=0, progress=False,
                            **settings)
  mesh = placement.build_mesh(mesh_shape, jax.devices()[:devices])
  sim = Simulation(algorithm, model, dataset, config, mesh=mesh)
  sim.run()
  assert sim.store.placement == settings['state_store']
  return (jax.device_get(algorithm.server_params(sim.server_state)),
          jax.device_get(sim.store.stacked))


def main(out: str) -> None:
  assert jax.device_count() == 8, jax.devices()
  arrays = {}
  for name, (devices, mesh_shape, settings) in PLACEMENTS.items():
    params, store = run(devices, mesh_shape, settings)
    for i, leaf in enumerate(jax.tree.leaves((params, store))):
      arrays[f'{name}/{i}'] = leaf
  np.savez(out, **arrays)


if __name__ == '__main__':
  main(sys.argv[1])
