"""Decentralized runs on an 8-device 'clients' mesh equal their one-device
runs.

Run by `test_decentralized_simulation.py` in a subprocess with
`XLA_FLAGS=--xla_force_host_platform_device_count=8`: 16 nodes on a ring
(node states sharded, gossip by `ppermute`), and a sample of 5 active nodes
of a complete graph with failures (padded to 8 with the id N), each run for
two rounds on 8 devices and on one; the node models must agree. Prints
'decentralized sharded: ok' on success.
"""

import sys

import jax
import numpy as np

import algorithms
from fedjax_core import DecentralizedSimulation, GossipConfig
from fedjax_core import SimulationConfig
from fedjax_core.data.datasets import load_dataset
from fedjax_core.engine import placement
import models

_RUNS = {
    'ring_all_active': GossipConfig(topology='ring'),
    'complete_sampled_with_failures': GossipConfig(
        topology='complete', active_nodes=5, node_failure_rate=0.2,
        link_failure_rate=0.2),
}


def _node_params(gossip: GossipConfig, devices) -> tuple[np.ndarray, str]:
  dataset = load_dataset('digits', num_clients=16, seed=0)
  model = models.get_model('logreg', dataset.example_shape,
                           dataset.num_classes)
  sim = DecentralizedSimulation(
      algorithms.build_algorithm('dfedavgm', model.apply, num_clients=16,
                                 client_lr=0.1),
      model, dataset,
      SimulationConfig(num_rounds=2, clients_per_round=1, batch_size=16,
                       local_steps=2, eval_every=0, progress=False),
      gossip, mesh=placement.client_mesh(devices))
  for _ in range(2):
    sim.run_round()
  leaves = jax.tree.leaves(jax.device_get(sim.node_params()))
  return np.concatenate([x.reshape(16, -1) for x in leaves], 1), sim.method


def main() -> int:
  assert jax.device_count() == 8, jax.device_count()
  for name, gossip in _RUNS.items():
    sharded, method = _node_params(gossip, jax.devices())
    single, _ = _node_params(gossip, jax.devices()[:1])
    np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-6,
                               err_msg=name)
    print(f'{name}: gossip by {method}, 8 devices = 1 device')
  print('decentralized sharded: ok')
  return 0


if __name__ == '__main__':
  sys.exit(main())
