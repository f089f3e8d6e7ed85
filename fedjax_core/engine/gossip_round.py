"""The compiled decentralized round: the active nodes' local training, then
gossip over the round's live graph, then each node's own update, as one
jitted function.

    map_clients(local training of the active nodes)   as clients train
    -> mixing weights of the round's live graph       failures, peers
    -> gossip (mix the sent messages, or a robust     one or several steps
       rule over what each node receives)
    -> server_update of every live node on its own mixed message

A node is an `Algorithm` whose server state is the node's state and whose
message is a `GossipMessage` (`fedjax_core.algorithm`).
"""

import functools
from typing import Any, NamedTuple

import jax
from jax.flatten_util import ravel_pytree
import jax.numpy as jnp
import numpy as np

from fedjax_core import streams
from fedjax_core.algorithm import Algorithm, CohortInfo, GossipMessage
from fedjax_core.channel import gossip
from fedjax_core.channel import mixing_weights
from fedjax_core.channel import peer_robust
from fedjax_core.channel import topology as topology_lib
from fedjax_core.engine import local_training
from fedjax_core.engine import placement
from fedjax_core.engine.config import GossipConfig

PyTree = Any


class GossipInputs(NamedTuple):
  """A round's host data of its active nodes, leading axis = active nodes.

  Attributes:
    node_ids: `[A]` int32 ids of the nodes that train; ids equal to the node
      count only pad A to a multiple of the device count.
    indices: `[A, num_steps, batch]` int32 training rows.
    mask: `[A, num_steps, batch]` float32 real-example mask.
  """

  node_ids: jax.Array
  indices: jax.Array
  mask: jax.Array


class CompiledGossipRound:
  """`(node_states, train_x, train_y, inputs, round_num, round_key) ->
  (node_states, metrics)`, jitted with the node states donated; `round_num`
  (from 0) orders a time-varying graph's peers.

  `node_states` stacks every node's state on a leading `[N]` axis. A node
  that is inactive or down this round keeps its state and takes no part in
  the gossip; Byzantine nodes send their attack's messages and their own
  state is left out of the metrics.
  """

  def __init__(self, algorithm: Algorithm,
               topology: topology_lib.Topology, settings: GossipConfig,
               byzantine: np.ndarray, *, method: str, all_active: bool,
               unroll: bool, skip_empty_steps: bool,
               clients_in_parallel: int | None = None,
               mesh: jax.sharding.Mesh | None = None,
               augment: local_training.AugmentFn | None = None):
    self.num_traces = 0
    self._algorithm = algorithm
    self._topology = topology
    self._settings = settings
    self._byzantine = np.asarray(byzantine, bool)
    self._method = method
    self._all_active = all_active
    self._client_update = functools.partial(
        local_training.client_update, algorithm, unroll=unroll,
        skip_empty_steps=skip_empty_steps, augment=augment)
    self._clients_in_parallel = clients_in_parallel
    self._mesh = mesh
    self._unroll = unroll
    self._jitted = jax.jit(self.body, donate_argnums=(0,))

  def __call__(self, node_states, train_x, train_y, inputs: GossipInputs,
               round_num, round_key):
    return self._jitted(node_states, train_x, train_y, inputs, round_num,
                        round_key)

  def body(self, node_states, train_x, train_y, inputs: GossipInputs,
           round_num, round_key):
    """The round as a pure function, not jitted."""
    self.num_traces += 1
    algorithm, settings = self._algorithm, self._settings
    num_nodes = self._topology.num_nodes
    ids = inputs.node_ids
    active_states = node_states if self._all_active else _rows(node_states,
                                                               ids)
    outputs, infos, train_metrics = placement.map_clients(
        self._one_node, (active_states, ids, inputs.indices, inputs.mask),
        self._clients_in_parallel, self._mesh, self._unroll,
        shared=(train_x, train_y, round_key))

    key = jax.random.fold_in(round_key, streams.GOSSIP)
    up = ~jax.random.bernoulli(jax.random.fold_in(key, streams.NODE_FAILURE),
                               settings.node_failure_rate, (num_nodes,))
    active = (jnp.ones(num_nodes, bool) if self._all_active else
              jnp.zeros(num_nodes, bool).at[ids].set(True, mode='drop'))
    live = active & up
    mixing, live_edges = mixing_weights.round_mixing(
        self._topology, settings.mixing, round_num,
        jax.random.fold_in(key, streams.LINK_FAILURE), live,
        settings.link_failure_rate)
    sent = self._full(outputs.message.sent, ids)
    mixed = self._gossip(sent, mixing,
                         jax.random.fold_in(key, streams.PEER_ATTACK))
    if not self._all_active:
      mixed = _rows(mixed, ids)
    updated, node_metrics = jax.vmap(algorithm.server_update)(
        active_states, GossipMessage(mixed, outputs.message.kept),
        CohortInfo(num_clients=jnp.ones(ids.shape, jnp.float32)))
    trained = live if self._all_active else jnp.take(live, ids, mode='fill',
                                                     fill_value=False)
    updated = jax.tree.map(
        lambda new, old: jnp.where(
            trained.reshape((-1,) + (1,) * (new.ndim - 1)), new, old),
        updated, active_states)
    if self._all_active:
      node_states = updated
    else:
      node_states = jax.tree.map(
          lambda full, rows: full.at[ids].set(rows, mode='drop'),
          node_states, updated)

    honest = jnp.asarray(~self._byzantine)
    weight = trained.astype(jnp.float32) * jnp.take(honest, ids, mode='fill',
                                                    fill_value=False)
    examples = infos.num_examples * weight
    params = jax.vmap(algorithm.server_params)(node_states)
    metrics = {
        **{f'train_{k}': v for k, v in placement.reduce_weighted_mean(
            train_metrics, examples).items()},
        **placement.reduce_weighted_mean(
            {**outputs.metrics, **node_metrics}, weight),
        'consensus_distance': gossip.consensus_distance(params, honest),
        'live_nodes': jnp.sum(live),
        'live_edges': live_edges,
        'directed_links': jnp.sum(mixing.weights > 0),
        'num_examples': jnp.sum(examples),
    }
    return node_states, metrics

  def _one_node(self, shared, args):
    """One node's local training: its `ClientOutput`, `ClientInfo` and
    train metrics."""
    train_x, train_y, round_key = shared
    node_state, node_id, indices, mask = args
    rng = jax.random.fold_in(round_key, node_id)
    return self._client_update(node_state, (), indices, mask, rng, train_x,
                               train_y)

  def _full(self, sent: PyTree, ids: jax.Array) -> PyTree:
    """The active nodes' messages placed in `[N]` rows (zeros for the other
    nodes, whose weights in the round's mixing are 0)."""
    if self._all_active:
      return sent
    num_nodes = self._topology.num_nodes
    return jax.tree.map(
        lambda x: jnp.zeros((num_nodes,) + x.shape[1:], x.dtype).at[ids].set(
            x, mode='drop'), sent)

  def _gossip(self, sent: PyTree, mixing: mixing_weights.Mixing,
              key: jax.Array) -> PyTree:
    """`settings.gossip_steps` rounds of mixing `sent`: plain gossip, or the
    robust rule over what each node receives, Byzantine senders
    included."""
    settings = self._settings
    if settings.rule == 'mean' and not self._byzantine.any():
      mix = (gossip.mix_preserving_variance if settings.variance_correction
             else gossip.mix)
      return mix(sent, mixing, self._method, steps=settings.gossip_steps,
                 grid=self._topology.grid, mesh=self._mesh)
    flat, unravel = _ravel_rows(sent)
    byzantine = jnp.asarray(self._byzantine)
    for step in range(settings.gossip_steps):
      received = peer_robust.received(
          flat, mixing, byzantine, settings.attack,
          jax.random.fold_in(key, step), scale=settings.attack_scale,
          stddev=settings.attack_scale, ipm_epsilon=settings.attack_scale,
          dissensus_epsilon=settings.attack_scale)
      flat = peer_robust.aggregate(
          flat, received, mixing, settings.rule,
          num_byzantine=settings.num_byzantine,
          clip_radius=settings.clip_radius)
    return unravel(flat)


def _rows(tree: PyTree, ids: jax.Array) -> PyTree:
  """Rows `ids` of every leaf (a padding id, = N, reads the last row)."""
  return jax.tree.map(lambda x: jnp.take(x, ids, axis=0, mode='clip'), tree)


def _ravel_rows(tree: PyTree):
  """`[N, d]` flat rows of a node-stacked pytree, and the inverse."""
  one = jax.tree.map(lambda x: x[0], tree)
  _, unravel_one = ravel_pytree(one)
  flat = jax.vmap(lambda t: ravel_pytree(t)[0])(tree)
  return flat, jax.vmap(unravel_one)
