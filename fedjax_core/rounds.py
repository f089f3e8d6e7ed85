"""The compiled federated round: every client's local training, aggregation
and the server update as one jitted function, traced once per local-step
bucket.
"""

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_core import aggregation
from fedjax_core import local_training
from fedjax_core import placement
from fedjax_core.algorithm import Algorithm, CohortInfo
from fedjax_core.secagg_protocol import SecAggRoundInputs

PyTree = Any
# Folded into the round key for the aggregation's keys; the clients' keys
# fold in client ids, which are below 2^31.
_AGGREGATION_STREAM = 0x7fffffff


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
  """

  def __init__(self, algorithm: Algorithm, *, unroll: bool,
               skip_empty_steps: bool, client_chunk: int | None = None,
               augment: local_training.AugmentFn | None = None,
               aggregator: aggregation.Aggregator | None = None):
    self.num_traces = 0
    self._algorithm = algorithm
    self._aggregator = aggregator or aggregation.Aggregator(None, None)
    self._client_update = functools.partial(
        local_training.client_update, algorithm, unroll=unroll,
        skip_empty_steps=skip_empty_steps, augment=augment)
    self._client_chunk = client_chunk
    self._jitted = jax.jit(self._round, donate_argnums=(0, 1, 2))

  def __call__(self, server_state, cohort_state, aggregator_state, train_x,
               train_y, inputs: RoundInputs, round_key):
    return self._jitted(server_state, cohort_state, aggregator_state, train_x,
                        train_y, inputs, round_key)

  def _round(self, server_state, cohort_state, aggregator_state, train_x,
             train_y, inputs: RoundInputs, round_key):
    self.num_traces += 1

    def one_client(args):
      client_state, client_id, indices, mask = args
      rng = jax.random.fold_in(round_key, client_id)
      return self._client_update(server_state, client_state, indices, mask,
                                 rng, train_x, train_y)

    outputs, infos, train_metrics = placement.map_clients(
        one_client,
        (cohort_state, inputs.client_ids, inputs.indices, inputs.mask),
        chunk_size=self._client_chunk)
    weights = outputs.weight * inputs.is_real
    aggregated = self._aggregator(
        aggregator_state, outputs.message, weights, inputs.client_ids,
        inputs.is_real, inputs.secagg,
        jax.random.fold_in(round_key, _AGGREGATION_STREAM))
    arrived = aggregated.arrived.astype(jnp.float32)
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
    metrics = {
        **{f'train_{k}': v for k, v in train_means.items()},
        **placement.reduce_weighted_mean(outputs.metrics, weights * arrived),
        **server_metrics,
        **aggregated.metrics,
        'num_examples': jnp.sum(examples),
    }
    return server_state, client_state, aggregated.state, metrics
