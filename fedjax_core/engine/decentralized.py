"""A decentralized run: N node models on a graph, no server.

Every node holds its own model (and optimizer state) and its own data; the
node states are stacked on a leading `[N]` axis, on the devices (sharded
over the mesh's 'clients' axis when N divides). Each round the active nodes
(all, or a seeded sample as in MoDeST, Dhasade et al. 2023) run their local
steps, vmapped and sharded exactly as a cohort of clients, and then gossip
with their live neighbours (`fedjax_core.engine.gossip_round`). The driver
(`fedjax_core.engine.driver`) runs the loop, so a decentralized run
checkpoints, resumes bit-identically, logs and summarizes as a federated
one does.

Evaluation scores every honest node's model (or a seeded sample of them) on
the test split: the mean, 10th percentile and spread of their accuracy,
and the accuracy of the average model. Each round reports the consensus
distance (1/N) sum_i ||x_i - x_bar||^2 over the honest nodes, the live
nodes and links, and the bytes sent.
"""

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_core import streams
from fedjax_core.algorithm import Algorithm
from fedjax_core.channel import gossip
from fedjax_core.channel import mixing_weights
from fedjax_core.channel import peer_robust
from fedjax_core.channel import topology as topology_lib
from fedjax_core.data import augmentation
from fedjax_core.data import sampling
from fedjax_core.data.federated import FederatedDataset
from fedjax_core.engine import batching
from fedjax_core.engine import driver
from fedjax_core.engine import placement
from fedjax_core.engine import rounds
from fedjax_core.engine.config import GossipConfig, SimulationConfig
from fedjax_core.engine.config import resolve_loop
from fedjax_core.engine.driver import TrainingDivergedError
from fedjax_core.engine.evaluation import Evaluator, NodesEvaluator
from fedjax_core.engine.gossip_round import CompiledGossipRound, GossipInputs
from fedjax_core.errors import SettingError

PyTree = Any
# Server-side settings of `SimulationConfig` that a run without a server
# refuses, with what replaces them.
_SERVER_SETTINGS = {
    'secure_aggregation': 'there is no server to aggregate securely',
    'client_dp': 'client-level DP is accounted at a server',
    'sample_dp': 'sample-level DP is not accounted for node models',
    'robust': "use GossipConfig's rule (per-node robust aggregation)",
    'attack': "use GossipConfig's attack and byzantine_fraction",
    'uplink': 'messages are not compressed between nodes',
    'downlink': 'there is no broadcast',
    'rqm': 'RQM is accounted at a server',
    'backdoor': 'backdoors are evaluated on a global model',
    'norm_bound': 'use GossipConfig\'s clipped gossip to bound updates',
}


class DecentralizedSimulation:
  """A decentralized run of `algorithm` on `dataset`, one node per client.

  `config.clients_per_round` is not read (the nodes that train are
  `gossip.active_nodes`), and the server-side settings of `config`
  (secure aggregation, DP, robust rules, attacks, compression) are refused.

  Examples:
    >>> sim = DecentralizedSimulation(
    ...     algorithms.dfedavg(model.apply, LocalSGD(0.1)), model, dataset,
    ...     SimulationConfig(num_rounds=5, clients_per_round=1,
    ...                      batch_size=10),
    ...     GossipConfig(topology='ring'))
    >>> summary = sim.run()
  """

  def __init__(self, algorithm: Algorithm, model, dataset: FederatedDataset,
               config: SimulationConfig, gossip_config: GossipConfig,
               mesh: jax.sharding.Mesh | None = None):
    """Prepares the run; raises `SettingError` on bad settings before
    compiling.

    Args:
      algorithm: the node algorithm (its messages are `GossipMessage`s).
      model: has `init(rng) -> params` and `apply(params, x) -> logits`.
      dataset: the federated dataset; client i is node i.
      config: the run's settings.
      gossip_config: the graph and how nodes gossip over it.
      mesh: device mesh with a 'clients' axis (default: all devices).
    """
    num_nodes = dataset.num_clients
    refuse_server_settings(config)
    config.validate()
    self.config = config
    self.gossip = gossip_config
    self.dataset = dataset
    self._algorithm = algorithm
    self.topology = checked_topology(gossip_config, num_nodes, config.seed)
    self.mesh = placement.client_mesh() if mesh is None else mesh
    devices = self.mesh.shape[placement.CLIENTS_AXIS]
    self.method = gossip_config.method
    if self.method == 'auto':
      self.method = gossip.choose_method(
          self.topology.name, num_nodes, self.topology.neighbours.shape[1],
          devices, grid=self.topology.grid)
    self.active_nodes = gossip_config.active_nodes or num_nodes
    self._local_work = batching.LocalWork(
        dataset.client_indices, seed=config.seed,
        batch_size=config.batch_size, local_epochs=config.local_epochs,
        local_steps=config.local_steps, cohort_size=self.active_nodes,
        size_buckets=config.size_buckets)
    self.step_buckets = self._local_work.buckets
    # The node axis is sharded when it divides over the devices. Otherwise
    # (and for a sample of nodes) the nodes that train are gathered inside
    # the round, padded to a multiple of the device count.
    self._node_sharding = placement.replicated_sharding(self.mesh)
    if num_nodes % devices == 0:
      self._node_sharding = placement.cohort_sharding(self.mesh)
    self._gathered = (self.active_nodes < num_nodes
                      or num_nodes % devices != 0)
    replicated = placement.replicated_sharding(self.mesh)

    init_key, node_key, self.rounds_key = jax.random.split(
        jax.random.key(config.seed), 3)
    params = model.init(init_key)
    self.loop, self.clients_in_parallel = resolve_loop(
        config.loop, config.clients_in_parallel, model.apply, params,
        dataset.example_shape)
    node_state = algorithm.server_init(params, node_key)
    if gossip_config.independent_init:
      stacked = jax.vmap(algorithm.server_init)(
          jax.vmap(model.init)(jax.random.split(init_key, num_nodes)),
          jax.random.split(node_key, num_nodes))
    else:
      stacked = jax.tree.map(lambda x: np.broadcast_to(
          np.asarray(x), (num_nodes,) + np.shape(x)).copy(), node_state)
    self.node_states = placement.put(jax.device_get(stacked),
                                     self._node_sharding)
    self._train_x = placement.put(dataset.train_x, replicated)
    self._train_y = placement.put(dataset.train_y, replicated)
    template = rounds.message_template(algorithm, node_state, (),
                                       self._train_x, self._train_y)
    # One node's message to one neighbour in float32.
    self.message_bytes = 4 * sum(
        x.size for x in jax.tree.leaves(template.sent))
    # A fixed set over the run, as He et al. (2022) give it.
    self.byzantine = np.asarray(peer_robust.byzantine_nodes(
        jax.random.fold_in(jax.random.key(config.seed),
                           streams.BYZANTINE_NODES),
        num_nodes, gossip_config.byzantine_fraction))
    self._evaluated = _evaluated_nodes(config.seed, self.byzantine,
                                       gossip_config.eval_nodes)
    self.round_fn = CompiledGossipRound(
        algorithm, self.topology, gossip_config, self.byzantine,
        method=self.method, all_active=not self._gathered,
        unroll=self.loop == 'unroll',
        skip_empty_steps=config.local_steps is None,
        clients_in_parallel=self.clients_in_parallel, mesh=self.mesh,
        augment=augmentation.for_dataset(config.augment, dataset))
    self._nodes_evaluator = NodesEvaluator(
        model.apply, dataset.test_x, dataset.test_y, config.eval_batch_size)
    self._evaluator = Evaluator(model.apply, dataset.test_x, dataset.test_y,
                                config.eval_batch_size)
    self.final_round = config.num_rounds
    self.completed_rounds = 0
    self.consistent = True  # node states and round count agree.
    self.history: list[dict[str, Any]] = []

  def describe(self) -> str:
    """One line: the graph, its spectral gap, the mixing and who attacks."""
    gossip_config = self.gossip
    line = (f'{mixing_weights.describe(self.topology, gossip_config.mixing)}; '
            f'{gossip_config.mixing} weights, {gossip_config.gossip_steps} '
            f'gossip step(s) by {self.method}; {self.active_nodes} of '
            f'{self.topology.num_nodes} nodes active a round')
    if self.byzantine.any():
      line += (f'; {int(self.byzantine.sum())} Byzantine nodes attack by '
               f'{gossip_config.attack}')
    if gossip_config.rule != 'mean' or self.byzantine.any():
      line += (f'; nodes aggregate by {gossip_config.rule} tolerating '
               f'b={gossip_config.num_byzantine}')
    return line

  def _round_inputs(self, round_num: int) -> GossipInputs:
    """The active nodes of `round_num` and their batches; when they are
    gathered inside the round, padded with ids N to a multiple of the device
    count."""
    num_nodes = self.topology.num_nodes
    if self.active_nodes == num_nodes:
      ids = np.arange(num_nodes)
    else:
      ids = sampling.sample_clients(self.config.seed, round_num, num_nodes,
                                    self.active_nodes)
    batches = self._local_work.batches(ids, round_num)
    pad = 0
    if self._gathered:
      pad = -len(ids) % self.mesh.shape[placement.CLIENTS_AXIS]

    def pad_rows(a, value=0):
      return np.concatenate([a, np.full((pad,) + a.shape[1:], value,
                                        a.dtype)])

    return GossipInputs(
        node_ids=pad_rows(ids, num_nodes).astype(np.int32),
        indices=pad_rows(batches.indices), mask=pad_rows(batches.mask))

  def run_round(self) -> dict[str, Any]:
    """Runs the next round and returns its record.

    Raises:
      TrainingDivergedError: the nodes' train loss is not finite.
    """
    start = time.perf_counter()
    round_num = self.completed_rounds
    inputs = self._round_inputs(round_num)
    round_key = jax.random.fold_in(self.rounds_key, round_num)
    traces = self.round_fn.num_traces
    self.consistent = False
    self.node_states, metrics = self.round_fn(
        self.node_states, self._train_x, self._train_y,
        placement.put(inputs, placement.cohort_sharding(self.mesh)),
        np.int32(round_num),
        round_key)
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not math.isfinite(metrics['train_loss']):
      raise TrainingDivergedError(
          f'Training diverged: the nodes\' train loss is '
          f'{metrics["train_loss"]} in round {round_num + 1}. Lower '
          '--client_lr.', round_num + 1)
    self.completed_rounds += 1
    self.consistent = True
    wall_s = time.perf_counter() - start
    num_nodes = self.topology.num_nodes
    per_link = self.message_bytes * self.gossip.gossip_steps
    return {'round': self.completed_rounds, **metrics,
            'bytes_sent_per_node': per_link * metrics['directed_links']
                                   / num_nodes,
            'bytes_per_live_edge': 2 * per_link,
            'wall_s': wall_s,
            'examples_per_s': metrics['num_examples'] / wall_s,
            'local_steps': inputs.mask.shape[1],
            'compiled': self.round_fn.num_traces > traces}

  def node_params(self) -> PyTree:
    """Every node's model, stacked on the node axis."""
    return jax.vmap(self._algorithm.server_params)(self.node_states)

  def evaluate(self) -> dict[str, float]:
    """The evaluated nodes' models on the test split: mean loss, mean, 10th
    percentile and standard deviation of their accuracy; and the average
    model's (over the honest nodes) loss and accuracy."""
    params = self.node_params()
    chosen = jax.tree.map(lambda p: p[self._evaluated], params)
    loss, accuracy = self._nodes_evaluator(chosen)
    honest = jnp.asarray(np.flatnonzero(~self.byzantine))
    average = self._evaluator(jax.tree.map(
        lambda p: jnp.mean(p[honest], axis=0), params))
    return {'test_loss': float(np.mean(loss)),
            'test_accuracy': float(np.mean(accuracy)),
            'test_accuracy_p10': float(np.percentile(accuracy, 10)),
            'test_accuracy_std': float(np.std(accuracy)),
            'average_model_test_loss': average['loss'],
            'average_model_test_accuracy': average['accuracy']}

  def complete_record(self, record: dict[str, Any],
                      evaluation: dict[str, float] | None = None) -> None:
    """Keeps the round's record in `history`, with its `evaluation`."""
    if evaluation is not None:
      record.update(evaluation)
    self.history.append(record)

  def checkpoint_state(self) -> tuple[PyTree, PyTree, PyTree]:
    """The node states (in the server state's slot of a checkpoint)."""
    return self.node_states, (), ()

  def restore(self, completed_rounds: int, node_states: PyTree,
              client_states: PyTree, channel_state: PyTree) -> None:
    """Continues from a checkpoint's node states, saved after
    `completed_rounds` rounds."""
    del client_states, channel_state
    self.node_states = placement.put(node_states, self._node_sharding)
    self.completed_rounds = completed_rounds

  def summary_entries(self) -> dict[str, Any]:
    """The graph: its name and spectral gap."""
    return {'topology': self.topology.name,
            'spectral_gap': mixing_weights.spectral_gap(
                self.topology, self.gossip.mixing)}

  def run(self) -> dict[str, Any]:
    """Runs (or resumes) the whole run and returns its summary."""
    config = self.config
    summaries = driver.run(
        driver.LoneRun(self), workdir=config.workdir,
        run_workdirs=[config.workdir], eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every, progress=config.progress)
    return summaries[0]


def checked_topology(gossip_config: GossipConfig, num_nodes: int,
                     seed: int) -> topology_lib.Topology:
  """The run's graph, once `gossip_config` is checked against it (every
  node has the neighbours its robust rule needs); raises `SettingError`."""
  gossip_config.validate(num_nodes)
  topology = topology_lib.build(gossip_config.topology, num_nodes, seed)
  if gossip_config.rule != 'mean':
    all_live, _ = mixing_weights.round_mixing(
        topology, gossip_config.mixing, 0, jax.random.key(0),
        np.ones(num_nodes, bool), 0.0)
    peer_robust.check_degrees(all_live, gossip_config.rule,
                              gossip_config.num_byzantine,
                              gossip_config.clip_radius)
  return topology


def refuse_server_settings(config: SimulationConfig) -> None:
  """Raises `SettingError` for a server-side setting of `config`, naming
  what a decentralized run uses instead."""
  for name, why in _SERVER_SETTINGS.items():
    if getattr(config, name) is not None:
      raise SettingError(name, f'A decentralized run has no server: {name} '
                         f'does not apply ({why}). Drop it.')
  if config.participation != 'fixed':
    raise SettingError(
        'participation', 'A decentralized run samples its active nodes '
        "with GossipConfig.active_nodes; set participation to 'fixed'.")


def _evaluated_nodes(seed: int, byzantine: np.ndarray,
                     eval_nodes: int | None) -> np.ndarray:
  """The honest nodes evaluated: all, or a fixed seeded sample of
  `eval_nodes` of them."""
  honest = np.flatnonzero(~byzantine)
  if eval_nodes is None or eval_nodes >= len(honest):
    return honest
  rng = np.random.default_rng((seed, streams.EVAL_NODES))
  return np.sort(rng.choice(honest, eval_nodes, replace=False))
