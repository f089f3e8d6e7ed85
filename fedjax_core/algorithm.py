"""The algorithm protocol: a federated algorithm as a tuple of pure functions.

An algorithm is built by a factory that closes over the model, the optax
transforms and the hyperparameters, in the style of optax's
`GradientTransformation(init, update)`. The engine (`fedjax_core.engine.rounds`)
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

import flax.struct
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


class Personalization(NamedTuple):
  """How a personalized algorithm's client is evaluated: its own model, on
  its own held-out split (`fedjax_core.engine.personal_evaluation`).

  Attributes:
    personal_params: `(server_state, client_state, train, rng) -> params` of
      the client's personal model. `client_state` is the client's state in
      the store: its initial state if it was never sampled (or is a new
      client that never trains), so the algorithm decides what such a client
      gets (the global model, or a model fine-tuned from it). `train` is a
      `Batch` of `[train_steps, batch, ...]` rows of the client's own
      training split (masked), for algorithms that adapt at evaluation
      (fine-tuning, a cluster's choice by loss); `rng` is the client's key.
    train_steps: how many batches of its training split each client's
      `personal_params` gets; 0 gives an empty `train`.
  """

  personal_params: Callable[[ServerState, ClientState, Batch, jax.Array],
                            Params]
  train_steps: int = 0


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
    server_params: `(server_state) -> params` of the global model: what
      the server broadcasts each round (downlink compression and
      `bytes_down` act on it) and, unless `full_params` is given, what is
      evaluated.
    full_params: `(server_state) -> params` of the whole model to evaluate
      when `server_params` is only its trained part (a frozen base plus
      adapters); None evaluates `server_params`.
    cohort_metrics: `(server_state, messages, weights) -> metrics` of the
      cohort's stacked messages (leading axis = cohort; weight 0 for clients
      absent or padding) that the mean hides, such as FedLoRA's aggregation
      error; None adds none. A simulator's diagnostic: it sees individual
      messages even where secure aggregation would hide them.
    personalization: how each client's personal model is found and
      evaluated; None for an algorithm with one global model.
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
  full_params: Callable[[ServerState], Params] | None = None
  cohort_metrics: Callable[[ServerState, PyTree, jax.Array],
                           Metrics] | None = None
  personalization: Personalization | None = None

  def evaluated_params(self, server_state: ServerState) -> Params:
    """The params of the model to evaluate."""
    return (self.full_params or self.server_params)(server_state)


class GossipMessage(NamedTuple):
  """A node's message in decentralized learning (`fedjax_core.engine.
  decentralized`), where the same `Algorithm` tuple describes a node.

  There, `server_init(params, rng)` is one node's initial state (stacked
  over the nodes by the engine), `client_init`/`local_step`/`client_final`
  are the node's local training from its own state (its client state is
  `()`), and `client_final`'s message is a `GossipMessage`. The engine mixes
  `sent` with the node's neighbours (one or several gossip steps, robust
  rules, Byzantine senders) and hands the node
  `GossipMessage(mixed, kept)` as `server_update`'s aggregated message;
  `server_params(node_state)` is the node's model.

  Attributes:
    sent: the pytree the node's neighbours receive and mix.
    kept: the pytree the node keeps for its own update, never sent.
  """

  sent: PyTree
  kept: PyTree


@flax.struct.dataclass
class Frozen:
  """State that no round changes, such as a pre-trained base under LoRA.

  The engine treats it as read-only: clients read it from the broadcast
  server state (vmapped with no client axis, so it is never copied per
  client), local steps carry it unchanged, and checkpoints leave it out
  (a resumed run gets it from the run's start, e.g. `--init_checkpoint`).
  """

  value: PyTree


def is_traced(hyperparameter: Any) -> bool:
  """Whether a hyperparameter is a tracer: it varies along the run axis of
  `fedjax_core.VmappedRuns`, which checked each run's value when it built
  that run's algorithm, so a factory skips its checks of the value."""
  return isinstance(hyperparameter, jax.core.Tracer)
