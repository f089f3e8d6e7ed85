"""The compiled federated round: every client's local training, aggregation
and the server update as one jitted function, traced once per local-step
bucket.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_core import aggregation
from fedjax_core import attacks
from fedjax_core import downlink as downlink_lib
from fedjax_core import local_training
from fedjax_core import placement
from fedjax_core import uplink
from fedjax_core.algorithm import Algorithm, CohortInfo
from fedjax_core.secagg_protocol import SecAggRoundInputs

PyTree = Any
# Folded into the round key for the aggregation's keys; the clients' keys
# fold in client ids, which are below 2^31.
_AGGREGATION_STREAM = 0x7fffffff
_ATTACK_STREAM = 0x7ffffffe
_DOWNLINK_STREAM = 0x7ffffffd
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


class CompiledRound:
  """`(server_state, cohort_state, aggregator_state, train_x, train_y,
  inputs, round_key) -> (server_state, cohort_state, aggregator_state,
  metrics)`, jitted with the three states donated.

  `num_traces` counts how often the round was traced: once per local-step
  bucket a run meets (`SimulationConfig.size_buckets`).

  Under an `attack`, a seeded share of each cohort's real clients is
  Byzantine: label flipping poisons their local batches; the other attacks
  replace their messages as the server receives them (after any uplink
  compression) before aggregation. The metric `byzantine_clients` counts
  them.

  Under a `downlink`, the clients train from the compressed broadcast
  (`fedjax_core.downlink`), kept in the aggregator state under
  `downlink.BROADCAST_KEY`; the metric `bytes_down` is its size.
  """

  def __init__(self, algorithm: Algorithm, *, unroll: bool,
               skip_empty_steps: bool,
               clients_in_parallel: int | None = None,
               mesh: jax.sharding.Mesh | None = None,
               augment: local_training.AugmentFn | None = None,
               aggregator: aggregation.Aggregator | None = None,
               attack: attacks.Attack | None = None,
               num_classes: int | None = None,
               downlink: uplink.Uplink | None = None):
    if attack is not None and attack.name == 'label_flip' and not num_classes:
      raise ValueError('Label flipping needs the number of classes.')
    self.num_traces = 0
    self._algorithm = algorithm
    self._aggregator = aggregator or aggregation.Aggregator(None, None)
    self._attack = attack
    self._num_classes = num_classes
    self._downlink = downlink
    self._client_update = functools.partial(
        local_training.client_update, algorithm, unroll=unroll,
        skip_empty_steps=skip_empty_steps, augment=augment)
    self._clients_in_parallel = clients_in_parallel
    self._mesh = mesh
    self._unroll = unroll
    self._jitted = jax.jit(self.body, donate_argnums=(0, 1, 2))

  def __call__(self, server_state, cohort_state, aggregator_state, train_x,
               train_y, inputs: RoundInputs, round_key):
    return self._jitted(server_state, cohort_state, aggregator_state, train_x,
                        train_y, inputs, round_key)

  def body(self, server_state, cohort_state, aggregator_state, train_x,
           train_y, inputs: RoundInputs, round_key):
    """The round as a pure function, not jitted: for callers that
    transform it further (`fedjax_core.VmappedRuns` vmaps it over runs)."""
    self.num_traces += 1
    attack = self._attack
    is_real = inputs.is_real > 0
    byzantine = jnp.zeros(is_real.shape, bool)
    attack_key = jax.random.fold_in(round_key, _ATTACK_STREAM)
    if attack is not None:
      byzantine = attacks.byzantine_mask(
          jax.random.fold_in(attack_key, 0), is_real, attack.fraction)
    flips_labels = attack is not None and attack.name == 'label_flip'
    aggregator_state = dict(aggregator_state)
    sent_state, down_metrics = server_state, {}
    if self._downlink is not None:
      sent_state, broadcast, down_metrics = self._broadcast(
          server_state, aggregator_state.pop(downlink_lib.BROADCAST_KEY),
          jax.random.fold_in(round_key, _DOWNLINK_STREAM))

    def one_client(shared, args):
      sent_state, train_x, train_y, round_key = shared
      client_state, client_id, indices, mask, poisoned = args
      rng = jax.random.fold_in(round_key, client_id)
      relabel = None
      if flips_labels:
        relabel = lambda y: jnp.where(
            poisoned, attacks.flip_labels(y, self._num_classes), y)
      return self._client_update(sent_state, client_state, indices, mask,
                                 rng, train_x, train_y, relabel=relabel)

    outputs, infos, train_metrics = placement.map_clients(
        one_client,
        (cohort_state, inputs.client_ids, inputs.indices, inputs.mask,
         byzantine), self._clients_in_parallel, self._mesh, self._unroll,
        shared=(sent_state, train_x, train_y, round_key))
    messages = outputs.message
    if attack is not None and not flips_labels:
      messages = _attacked(messages, byzantine, is_real,
                           jax.random.fold_in(attack_key, 1), attack)
    weights = outputs.weight * inputs.is_real
    aggregated = self._aggregator(
        aggregator_state, messages, weights, inputs.client_ids,
        inputs.is_real, inputs.secagg,
        jax.random.fold_in(round_key, _AGGREGATION_STREAM))
    arrived = aggregated.arrived.astype(jnp.float32)
    cohort_metrics = {}
    if self._algorithm.cohort_metrics is not None:
      cohort_metrics = self._algorithm.cohort_metrics(
          sent_state, messages, weights * arrived)
    server_state, server_metrics = self._algorithm.server_update(
        server_state, aggregated.message,
        CohortInfo(num_clients=jnp.sum(arrived)))
    client_state = outputs.client_state
    if inputs.secagg is not None:
      # A client whose message never arrived keeps its old state.
      client_state = jax.tree.map(
          lambda new, old: jnp.where(
              aggregated.arrived.reshape((-1,) + (1,) * (new.ndim - 1)), new,
              old), client_state, cohort_state)

    examples = infos.num_examples * inputs.is_real
    train_means = placement.reduce_weighted_mean(train_metrics, examples)
    client_metrics = dict(outputs.metrics)
    per_client = {k: client_metrics.pop(k) for k in _PER_CLIENT_METRICS
                  if k in client_metrics}
    metrics = {
        **{f'train_{k}': v for k, v in train_means.items()},
        **placement.reduce_weighted_mean(client_metrics, weights * arrived),
        **placement.reduce_weighted_mean(per_client,
                                         inputs.is_real * arrived),
        **server_metrics,
        **cohort_metrics,
        **aggregated.metrics,
        'num_examples': jnp.sum(examples),
    }
    if attack is not None:
      metrics['byzantine_clients'] = jnp.sum(byzantine.astype(jnp.float32))
    new_aggregator_state = aggregated.state
    if self._downlink is not None:
      new_aggregator_state = {**new_aggregator_state,
                              downlink_lib.BROADCAST_KEY: broadcast}
    return (server_state, client_state, new_aggregator_state,
            {**metrics, **down_metrics})

  def _broadcast(self, server_state, broadcast, key):
    """The server state the clients see, their new model, and the
    broadcast's size."""
    broadcast, num_bytes = downlink_lib.compress_broadcast(
        self._algorithm.server_params(server_state), broadcast, key,
        self._downlink)
    sent = downlink_lib.with_params(self._algorithm, server_state, broadcast)
    return sent, broadcast, {'bytes_down': num_bytes}


def _attacked(messages, byzantine, is_real, key, attack):
  """The cohort's messages with the Byzantine clients' replaced."""
  flat, unravel = placement.flatten_clients(messages)
  flat = attacks.apply_model_attack(
      attack.name, flat, byzantine, is_real, key, scale=attack.scale,
      stddev=attack.stddev, alie_z=attack.alie_z,
      ipm_epsilon=attack.ipm_epsilon)
  return jax.vmap(unravel)(flat)


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
