"""The algorithm protocol: a federated algorithm as a tuple of pure functions.

An algorithm is built by a factory that closes over the model, the optax
transforms and the hyperparameters, in the style of optax's
`GradientTransformation(init, update)`. The engine (`fedjax_core.rounds`)
owns `jit`, `vmap` and sharding; an algorithm never calls them and knows
nothing of devices.

One round, for each client of the cohort (vmapped by the engine):

  local = client_init(server_state, client_state, rng)
  for each local step with data:
    local, step_metrics = local_step(local, batch, rng)
  output = client_final(server_state, client_state, local, info)

then, for the cohort as a whole:

  message = weighted mean of output.message with weights output.weight
  server_state, metrics = server_update(server_state, message, cohort)

Algorithms that need a sum over the cohort rather than a mean (SCAFFOLD's
`(1/N) sum_S`) send uniform weights and multiply by `cohort.num_clients`.
"""

from typing import Any, Callable, NamedTuple

import jax

PyTree = Any
Params = PyTree
ServerState = PyTree
ClientState = PyTree
LocalState = PyTree
Metrics = dict[str, jax.Array]


class Batch(NamedTuple):
  """One local step's padded batch.

  Attributes:
    x: `[batch, *example_shape]` float inputs.
    y: `[batch]` int labels.
    mask: `[batch]` float32, 1.0 for real examples and 0.0 for padding.
  """

  x: jax.Array
  y: jax.Array
  mask: jax.Array


class ClientInfo(NamedTuple):
  """What the engine counted during one client's local training.

  Attributes:
    num_examples: real (unmasked) examples processed over all local steps.
    num_steps: local steps that held at least one real example.
  """

  num_examples: jax.Array
  num_steps: jax.Array


class CohortInfo(NamedTuple):
  """What the engine tells `server_update` about the round's cohort.

  Attributes:
    num_clients: float32 count of clients that took part (padding excluded);
      it varies from round to round under Bernoulli participation.
  """

  num_clients: jax.Array


class ClientOutput(NamedTuple):
  """What one client sends back at the end of a round.

  Attributes:
    message: pytree averaged over the cohort and given to `server_update`.
    weight: scalar aggregation weight of `message` (e.g. the example count).
    client_state: the client's new persistent state, scattered to the store.
    metrics: scalar diagnostics, averaged over the cohort with `weight`.
  """

  message: PyTree
  weight: jax.Array
  client_state: ClientState
  metrics: Metrics


class Algorithm(NamedTuple):
  """A federated algorithm as pure functions of pytrees.

  Attributes:
    server_init: `(params, rng) -> server_state`.
    client_state_init: `(params) -> client_state`, one client's persistent
      state at the start of the run (an empty tuple for stateless clients);
      the engine stacks it over the population.
    client_init: `(server_state, client_state, rng) -> local_state`.
    local_step: `(local_state, batch, rng) -> (local_state, step_metrics)`;
      `step_metrics` are scalars averaged over the batch's real examples.
    client_final: `(server_state, client_state, local_state, info) ->
      ClientOutput`.
    server_update: `(server_state, aggregated_message, cohort_info) ->
      (server_state, metrics)`.
    server_params: `(server_state) -> params` of the global model to
      evaluate.
  """

  server_init: Callable[[Params, jax.Array], ServerState]
  client_state_init: Callable[[Params], ClientState]
  client_init: Callable[[ServerState, ClientState, jax.Array], LocalState]
  local_step: Callable[[LocalState, Batch, jax.Array],
                       tuple[LocalState, Metrics]]
  client_final: Callable[[ServerState, ClientState, LocalState, ClientInfo],
                         ClientOutput]
  server_update: Callable[[ServerState, PyTree, CohortInfo],
                          tuple[ServerState, Metrics]]
  server_params: Callable[[ServerState], Params]


def is_traced(hyperparameter: Any) -> bool:
  """Whether a hyperparameter is a tracer: it varies along the run axis of
  `fedjax_core.VmappedRuns`, which checked each run's value when it built
  that run's algorithm, so a factory skips its checks of the value."""
  return isinstance(hyperparameter, jax.core.Tracer)
