"""Workload `gossip`: decentralized rounds against federated ones, the
three mixing kernels, and growth with the node count.

Part 1: 256 nodes of the MLP on digits-shaped data (64 features, 10
classes; 50 random examples a node, since digits' 1,438 training examples
give 256 nodes under 6 each, less than a batch), each 5 local SGD steps of
batch 10 (DFedAvg), then 1 gossip step on a ring with Metropolis weights,
against a FedAvg round with a cohort of 256 of the same population and
local work; target: at most 1.3x. The gossip round runs once with each
mixing kernel: dense (a matrix product over the node axis), gather
(neighbour gather) and ring (shifts; `ppermute` between devices when the
nodes are sharded over more than one). Rounds are interleaved, one of each
run in turn, so that machine noise falls on all alike.

Part 2: 256 and 1,024 nodes of logistic regression on random 28x28 inputs
(20 examples a node), an exponential graph (DFedAvg), the kernel `auto` picks: the
round time of each, their ratio (linear growth is 4x), and the peak host
memory.

It also times the mixing alone (one gossip step of the MLP's parameters,
jitted) for each kernel at 256 nodes.
"""

import jax
import numpy as np

import algorithms
from fedjax_core import DecentralizedSimulation, FederatedDataset
from fedjax_core import GossipConfig, Simulation, SimulationConfig
from fedjax_core.channel import gossip
from fedjax_core.channel import mixing_weights
from fedjax_core.channel import topology
import models
from scripts import config_from_flags
from scripts.benchmarks import harness

_NODES = 256
_STEPS = 5
_BATCH = 10
_LR = 0.05
_KERNELS = ('dense', 'gather', 'ring')
_GROWTH_NODES = (256, 1024)


def _random_dataset(num_nodes: int, per_node: int,
                    example_shape: tuple[int, ...]) -> FederatedDataset:
  """`per_node` random uint8 examples of 10 classes on each node."""
  rng = np.random.default_rng(0)
  n = num_nodes * per_node
  x = rng.integers(0, 256, (n,) + example_shape, np.uint8)
  y = rng.integers(0, 10, n).astype(np.int32)
  clients = tuple(np.arange(i * per_node, (i + 1) * per_node)
                  for i in range(num_nodes))
  return FederatedDataset(name='random_nodes', train_x=x, train_y=y,
                          client_indices=clients, test_x=x[:100],
                          test_y=y[:100], num_classes=10)


def _config(num_nodes: int) -> SimulationConfig:
  return SimulationConfig(
      num_rounds=1 + 2 * harness.ROUNDS.value, clients_per_round=num_nodes,
      batch_size=_BATCH, local_steps=_STEPS, progress=False,
      **config_from_flags.placement_settings())


def _gossip_run(dataset, model_name: str, gossip_config: GossipConfig
                ) -> DecentralizedSimulation:
  model = models.get_model(model_name, dataset.example_shape,
                           dataset.num_classes)
  algorithm = algorithms.build_algorithm(
      'dfedavg', model.apply, num_clients=dataset.num_clients, client_lr=_LR)
  return DecentralizedSimulation(algorithm, model, dataset,
                                 _config(dataset.num_clients), gossip_config,
                                 mesh=config_from_flags.mesh())


def _against_fedavg() -> dict:
  """Part 1: FedAvg with a cohort of 256 and the gossip round with each
  kernel, interleaved."""
  dataset = _random_dataset(_NODES, 50, (64,))
  model = models.get_model('mlp', dataset.example_shape, dataset.num_classes)
  runs = {'fedavg': Simulation(
      algorithms.build_algorithm('fedavg', model.apply,
                                 num_clients=_NODES, client_lr=_LR),
      model, dataset, _config(_NODES), mesh=config_from_flags.mesh())}
  for kernel in _KERNELS:
    runs[f'gossip_{kernel}'] = _gossip_run(
        dataset, 'mlp', GossipConfig(topology='ring', method=kernel))
  result = harness.interleaved_comparison('gossip', runs, 'fedavg')
  result['auto_kernel_256_ring'] = gossip.choose_method(
      'ring', _NODES, 2, jax.device_count())
  return result


def _mixing_alone() -> dict:
  """One jitted gossip step of 256 MLP models on a ring, per kernel."""
  model = models.get_model('mlp', (64,), 10)
  params = model.init(jax.random.key(0))
  stacked = jax.tree.map(
      lambda p: np.broadcast_to(p, (_NODES,) + p.shape) * np.float32(1),
      params)
  ring = topology.build('ring', _NODES, seed=0)
  mixing = mixing_weights.round_mixing(ring, 'metropolis', 0, jax.random.key(0),
                                 np.ones(_NODES, bool), 0.0)[0]
  mesh = config_from_flags.mesh()
  stacked = jax.device_put(stacked, jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec('clients')))
  figures = {}
  for kernel in _KERNELS:
    mix = jax.jit(lambda tree, mixing, kernel=kernel: gossip.mix(
        tree, mixing, kernel, mesh=mesh))
    figures[f'mix_only_s_{kernel}'] = harness.median_seconds(
        lambda mix=mix: jax.block_until_ready(mix(stacked, mixing)),
        harness.REPEATS.value)
  return figures


def _growth() -> dict:
  """Part 2: logistic regression on an exponential graph at 256 and 1,024
  nodes."""
  figures = {}
  for num_nodes in _GROWTH_NODES:
    dataset = _random_dataset(num_nodes, 20, (28, 28, 1))
    sim = _gossip_run(dataset, 'logreg', GossipConfig(topology='exponential'))
    compile_s, round_s = harness.timed_rounds(sim)
    figures.update({f's_per_round_{num_nodes}_nodes': round_s,
                    f'compile_s_{num_nodes}_nodes': compile_s,
                    f'kernel_{num_nodes}_nodes': sim.method,
                    f'num_traces_{num_nodes}_nodes': sim.round_fn.num_traces})
  small, large = _GROWTH_NODES
  figures[f'ratio_{large}_vs_{small}_nodes'] = (
      figures[f's_per_round_{large}_nodes']
      / figures[f's_per_round_{small}_nodes'])
  return figures


def run() -> dict:
  """Runs workload `gossip` and returns its figures."""
  result = _against_fedavg()
  result.update(_mixing_alone())
  result.update(_growth())
  result['peak_mem_mb'] = harness.peak_host_mb()
  return result
