"""The compiled federated round: every client's local training, the
channel's stages and the server update as one jitted function, traced once
per local-step bucket.

    broadcast stage(server params)         what the clients receive
    -> map_clients(local training + client stages)
    -> cohort stages -> reducer -> finishes  one aggregate
    -> server_update

The round names no mechanism: compression, attacks, DP, secure
aggregation and robust rules are stages of `fedjax_core.channel`.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_core.channel import downlink
from fedjax_core.engine import local_training
from fedjax_core.engine import placement
from fedjax_core.algorithm import Algorithm, CohortInfo
from fedjax_core.channel import Chain, Packet, RoundContext
from fedjax_core.channel.secagg_protocol import SecAggRoundInputs

PyTree = Any
# Client metrics averaged uniformly over the clients whose messages arrived,
# not weighted by the aggregation weight.
_PER_CLIENT_METRICS = ('bytes_up',)


class RoundInputs(NamedTuple):
  """Per-round host data of the cohort, leading axis = cohort.

  Attributes:
    client_ids: `[cohort]` int32 client ids (keys derive from them).
    indices: `[cohort, num_steps, batch]` int32 training rows.
    mask: `[cohort, num_steps, batch]` float32 real-example mask.
    is_real: `[cohort]` float32, 0.0 for clients that only pad the cohort to
      a multiple of the device count; they get zero aggregation weight.
    secagg: the secure-aggregation protocol's inputs of the round (pair
      seeds, dropouts, the server's recoveries); None without it.
  """

  client_ids: jax.Array
  indices: jax.Array
  mask: jax.Array
  is_real: jax.Array
  secagg: SecAggRoundInputs | None = None

  def arrived(self) -> jax.Array:
    """`[cohort]` bool: the real clients whose messages reach the server."""
    is_real = self.is_real > 0
    return is_real if self.secagg is None else is_real & self.secagg.arrived


class ClientState(NamedTuple):
  """A client's state when the channel has client stages.

  Attributes:
    algorithm: the algorithm's own client state.
    channel: the client stages' states, in order.
  """

  algorithm: PyTree
  channel: tuple


class CompiledRound:
  """`(server_state, cohort_state, channel_state, train_x, train_y, inputs,
  round_key) -> (server_state, cohort_state, channel_state, metrics)`,
  jitted with the three states donated.

  `num_traces` counts how often the round was traced: once per local-step
  bucket a run meets (`SimulationConfig.size_buckets`). With client stages,
  the cohort's state is `ClientState`s; a client whose message did not
  arrive keeps its old state.
  """

  def __init__(self, algorithm: Algorithm, channel: Chain, *, unroll: bool,
               skip_empty_steps: bool,
               clients_in_parallel: int | None = None,
               mesh: jax.sharding.Mesh | None = None,
               augment: local_training.AugmentFn | None = None):
    self.num_traces = 0
    self._algorithm = algorithm
    self._channel = channel
    self._client_update = functools.partial(
        local_training.client_update, algorithm, unroll=unroll,
        skip_empty_steps=skip_empty_steps, augment=augment)
    self._clients_in_parallel = clients_in_parallel
    self._mesh = mesh
    self._unroll = unroll
    self._jitted = jax.jit(self.body, donate_argnums=(0, 1, 2))

  def __call__(self, server_state, cohort_state, channel_state, train_x,
               train_y, inputs: RoundInputs, round_key):
    return self._jitted(server_state, cohort_state, channel_state, train_x,
                        train_y, inputs, round_key)

  def body(self, server_state, cohort_state, channel_state, train_x,
           train_y, inputs: RoundInputs, round_key):
    """The round as a pure function, not jitted: for callers that
    transform it further (`fedjax_core.VmappedRuns` vmaps it over runs)."""
    self.num_traces += 1
    algorithm, channel = self._algorithm, self._channel
    ctx = RoundContext(inputs.client_ids, inputs.is_real > 0,
                       inputs.arrived(), inputs.secagg, round_key)
    params, channel_state, down_metrics = channel.broadcast(
        channel_state, algorithm.server_params(server_state), round_key)
    sent_state = server_state
    if channel.of_phase('broadcast'):
      sent_state = downlink.with_params(algorithm, server_state, params)
    outputs, infos, train_metrics = placement.map_clients(
        self._one_client,
        (cohort_state, inputs.client_ids, inputs.indices, inputs.mask,
         channel.client_inputs(ctx)), self._clients_in_parallel, self._mesh,
        self._unroll, shared=(sent_state, train_x, train_y, round_key))
    packet, client_state, client_metrics = outputs
    packets = packet._replace(weight=packet.weight * inputs.is_real)
    aggregate, channel_state, channel_metrics = channel.aggregate(
        channel_state, packets, ctx)
    arrived = aggregate.arrived.astype(jnp.float32)
    cohort_metrics = {}
    if algorithm.cohort_metrics is not None:
      cohort_metrics = algorithm.cohort_metrics(
          sent_state, packets.message, packets.weight * arrived)
    server_state, server_metrics = algorithm.server_update(
        server_state, aggregate.mean,
        CohortInfo(num_clients=jnp.sum(arrived)))
    client_state = jax.tree.map(  # A client whose message never arrived
        lambda new, old: jnp.where(  # keeps its old state.
            aggregate.arrived.reshape((-1,) + (1,) * (new.ndim - 1)), new,
            old), client_state, cohort_state)

    examples = infos.num_examples * inputs.is_real
    per_client = {k: client_metrics.pop(k) for k in _PER_CLIENT_METRICS
                  if k in client_metrics}
    metrics = {
        **{f'train_{k}': v for k, v in placement.reduce_weighted_mean(
            train_metrics, examples).items()},
        **placement.reduce_weighted_mean(client_metrics,
                                         packets.weight * arrived),
        **placement.reduce_weighted_mean(per_client,
                                         inputs.is_real * arrived),
        **server_metrics,
        **cohort_metrics,
        **channel_metrics,
        **down_metrics,
        'num_examples': jnp.sum(examples),
    }
    return server_state, client_state, channel_state, metrics

  def _one_client(self, shared, args):
    """One client's local training and client stages: its `Packet`, new
    state and metrics, its `ClientInfo` and its train metrics."""
    sent_state, train_x, train_y, round_key = shared
    client_state, client_id, indices, mask, stage_inputs = args
    channel = self._channel
    rng = jax.random.fold_in(round_key, client_id)
    has_stages = bool(channel.of_phase('client'))
    inner = client_state.algorithm if has_stages else client_state
    poison = None
    if channel.poisons:
      poison = functools.partial(channel.poison, stage_inputs)
    output, info, train_metrics = self._client_update(
        sent_state, inner, indices, mask, rng, train_x, train_y,
        poison=poison)
    packet = Packet(output.message, output.weight, {})
    metrics = dict(output.metrics)
    new_state = output.client_state
    if has_stages:
      packet, stage_states, stage_metrics = channel.client(
          client_state.channel, packet, rng)
      metrics.update(stage_metrics)
      new_state = ClientState(new_state, stage_states)
    return (packet, new_state, metrics), info, train_metrics


def initial_client_state(algorithm: Algorithm, channel: Chain,
                         params: PyTree, message_template: PyTree) -> PyTree:
  """One client's initial state: the algorithm's, with the client stages'
  next to it if the channel has any."""
  state = algorithm.client_state_init(params)
  if not channel.of_phase('client'):
    return state
  return ClientState(state, channel.client_init(message_template))


def message_template(algorithm: Algorithm, server_state, client_state,
                     train_x, train_y) -> PyTree:
  """The shapes and dtypes of one client's message
  (`jax.ShapeDtypeStruct`s), found by tracing one client without running
  it; `client_state` is one client's (unstacked) state."""
  def one_step_client(server_state, client_state):
    indices = jnp.zeros((1, 1), jnp.int32)
    output, _, _ = local_training.client_update(
        algorithm, server_state, client_state, indices,
        jnp.ones((1, 1), jnp.float32), jax.random.key(0), train_x, train_y,
        unroll=False, skip_empty_steps=False)
    return output.message
  return jax.eval_shape(one_step_client, server_state, client_state)
