"""Personalization by layers: FedPer, FedRep, FedBABU and LG-FedAvg.

Each splits the model by `personal_layers`, a path regex
(`fedjax_core.toolkit.personal_layers`): the matched leaves are the personal
part, the others the shared part. Clients train by local SGD and send the
change of the shared part only, so the message (and what `bytes_up`, DP,
secure aggregation and compression act on) is the shared part; the server
applies its optimizer to the mean change, FedAvg's weights.

- FedPer: Arivazhagan et al. 2019, "Federated Learning with Personalization
  Layers". Shared body, personal head kept by each client; clients train
  all layers jointly from (global body, own head).
- FedRep: Collins et al. 2021, "Exploiting Shared Representations for
  Personalized Federated Learning". As FedPer, but each round a client first
  trains its head alone (`head_steps` steps, body frozen), then the body
  alone (head frozen).
- FedBABU: Oh et al. 2022, "FedBABU: Toward Enhanced Representation for
  Federated Image Classification". The head stays at its random
  initialization, shared by all; clients train the body only; at evaluation
  each client fine-tunes the head on its own data.
- LG-FedAvg: Liang et al. 2020, "Think Locally, Act Globally: Federated
  Learning with Local and Global Representations". The personal part is the
  local representation (the body), the shared part the global head; clients
  train all layers jointly. Its training is FedPer's with the roles of the
  layers swapped, so here `personal_layers` names the body.

A client that never trained (a new client) has no personal part of its own
in FedPer, FedRep and LG-FedAvg: it fits one from the initial value on its
own training split, the shared part frozen (FedRep's protocol for new
clients). `full_params`, the "global model" that the test split scores, is
the shared part with the personal part's (or FedBABU's fixed head's)
initial value.
"""

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from fedjax_core.algorithm import (Algorithm, ClientOutput, Frozen,
                                   Personalization)
from fedjax_core.errors import check_count
from fedjax_core.toolkit import fine_tuning
from fedjax_core.toolkit import local_sgd as local_sgd_lib
from fedjax_core.toolkit import losses
from fedjax_core.toolkit import personal_state
from fedjax_core.toolkit import server_model
from fedjax_core.toolkit.personal_layers import PersonalLayers

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
# `(local, (shared_grads, personal_grads)) -> (shared, personal)`.
UpdateFn = Callable[[Any, tuple[PyTree, PyTree]], tuple[PyTree, PyTree]]


@flax.struct.dataclass
class ServerState:
  """The shared part's server model and the personal part's initial value
  (`Frozen`: neither checkpointed nor copied per client)."""

  model: server_model.ServerModel
  initial: Frozen


@flax.struct.dataclass
class LocalState:
  """A client's parts during a round (FedBABU's personal part `Frozen`),
  the round's learning rate and the real local steps done."""

  shared: PyTree
  personal: PyTree
  learning_rate: jax.Array
  step: jax.Array


def fedper(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
           server_optimizer: optax.GradientTransformation, *,
           weighted: bool = True, personal_layers: str,
           finetune_steps: int = 5) -> Algorithm:
  """FedPer: a shared body and personal heads, trained jointly.

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the clients' SGD (also fits a new client's head).
    server_optimizer: applied to the negated mean body change.
    weighted: weight clients by example count (FedAvg) or equally.
    personal_layers: path regex of the head (`models.head_layers`);
      `server_init` raises SettingError if it matches no parameter or all.
    finetune_steps: batches a never-trained client fits its head on, >= 0.

  Returns:
    The algorithm, with its `personalization`.

  Examples:
    >>> algorithm = fedper(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                    personal_layers='^params/Dense_2/')
  """

  def joint(local, grads):
    return local_sgd.step((local.shared, local.personal), grads,
                          local.learning_rate)

  return _layered(apply_fn, local_sgd, server_optimizer, personal_layers,
                  joint, weighted=weighted, finetune_steps=finetune_steps)


def fedrep(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
           server_optimizer: optax.GradientTransformation, *,
           weighted: bool = True, personal_layers: str,
           finetune_steps: int = 5, head_steps: int = 5) -> Algorithm:
  """FedRep: each round, the personal head alone, then the shared body.

  A client's first `head_steps` local steps with data move its head only,
  the remaining ones the body only. Arguments as `fedper`'s, and:

  Args:
    head_steps: local steps on the head each round, >= 0.

  Examples:
    >>> algorithm = fedrep(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                    personal_layers='^params/Dense_2/', head_steps=5)
  """
  check_count('head_steps', head_steps)

  def alternating(local, grads):
    on_head = local.step < head_steps
    shared = local_sgd.step(local.shared, grads[0], local.learning_rate)
    personal = local_sgd.step(local.personal, grads[1], local.learning_rate)
    pick = lambda chosen, new, old: jax.tree.map(
        lambda n, o: jnp.where(chosen, n, o), new, old)
    return (pick(on_head, local.shared, shared),
            pick(on_head, personal, local.personal))

  return _layered(apply_fn, local_sgd, server_optimizer, personal_layers,
                  alternating, weighted=weighted,
                  finetune_steps=finetune_steps)


def fedbabu(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
            server_optimizer: optax.GradientTransformation, *,
            weighted: bool = True, personal_layers: str,
            finetune_steps: int = 5) -> Algorithm:
  """FedBABU: the body trained and shared, the head fixed at its random
  initialization; each client's model has the head fine-tuned on
  `finetune_steps` batches of its training split (body frozen). Clients
  keep no state. Arguments as `fedper`'s.

  Examples:
    >>> algorithm = fedbabu(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                     personal_layers='^params/Dense_2/')
  """

  def body_only(local, grads):
    return (local_sgd.step(local.shared, grads[0], local.learning_rate),
            local.personal)

  return _layered(apply_fn, local_sgd, server_optimizer, personal_layers,
                  body_only, weighted=weighted,
                  finetune_steps=finetune_steps, personal_clients=False)


def lg_fedavg(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
              server_optimizer: optax.GradientTransformation, *,
              weighted: bool = True, personal_layers: str,
              finetune_steps: int = 5) -> Algorithm:
  """LG-FedAvg: personal local representations, a shared global head.

  Arguments as `fedper`'s, but `personal_layers` names the personal body
  (e.g. `PersonalLayers(head).complement().pattern`), and a never-trained
  client fits its body.

  Examples:
    >>> algorithm = lg_fedavg(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                       personal_layers='^(?!params/Dense_2/)')
  """
  return fedper(apply_fn, local_sgd, server_optimizer, weighted=weighted,
                personal_layers=personal_layers,
                finetune_steps=finetune_steps)


def _layered(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
             server_optimizer: optax.GradientTransformation,
             personal_layers: str, update: UpdateFn, *, weighted: bool,
             finetune_steps: int, personal_clients: bool = True
             ) -> Algorithm:
  """The family's algorithm; `update` is its local SGD step on the parts.
  With `personal_clients`, clients keep their personal part (a
  `personal_state.PersonalState`); else it is the fixed initial one
  (FedBABU)."""
  check_count('finetune_steps', finetune_steps)
  layers = PersonalLayers(personal_layers)
  loss_and_grad = jax.value_and_grad(
      lambda shared, personal, batch: losses.cross_entropy(
          apply_fn(layers.merge(shared, personal), batch.x), batch.y,
          batch.mask), argnums=(0, 1))
  unfrozen = lambda part: part.value if isinstance(part, Frozen) else part

  def server_init(params, rng):
    del rng
    shared, personal = layers.split(params)
    return ServerState(model=server_model.init(server_optimizer, shared),
                       initial=Frozen(personal))

  def client_state_init(params):
    if not personal_clients:
      return ()
    return personal_state.initial(layers.split(params)[1])

  def client_init(server_state, client_state, rng):
    del rng
    return LocalState(
        shared=server_state.model.params,
        personal=(client_state.personal if personal_clients
                  else server_state.initial),
        learning_rate=local_sgd.learning_rate_at(
            server_state.model.round_num),
        step=jnp.int32(0))

  def local_step(local, batch, rng):
    del rng
    loss, grads = loss_and_grad(local.shared, unfrozen(local.personal),
                                batch)
    shared, personal = update(local, grads)
    return local.replace(shared=shared, personal=personal,
                         step=local.step + 1), {'loss': loss}

  def client_final(server_state, client_state, local, info):
    delta = optax.tree.sub(local.shared, server_state.model.params)
    if personal_clients:
      client_state = client_state.replace(
          personal=local.personal, trained=jnp.maximum(
              client_state.trained,
              (info.num_steps > 0).astype(jnp.float32)))
    return ClientOutput(
        message=delta,
        weight=info.num_examples if weighted else jnp.float32(1.0),
        client_state=client_state,
        metrics={'delta_norm': optax.tree.norm(delta)})

  def server_update(server_state, mean_delta, cohort):
    del cohort
    model, update_norm = server_model.apply_delta(
        server_optimizer, server_state.model, mean_delta)
    return server_state.replace(model=model), {
        'server_update_norm': update_norm}

  def personal_params(server_state, client_state, train, rng):
    del rng
    learning_rate = local_sgd.learning_rate_at(server_state.model.round_num)
    kept = layers.merge(server_state.model.params,
                        client_state.personal if personal_clients
                        else server_state.initial.value)
    fitted = fine_tuning.fine_tune(apply_fn, kept, train, learning_rate,
                                   trainable=layers)
    if not personal_clients:
      return fitted
    shared, fitted_personal = layers.split(fitted)
    return layers.merge(shared, personal_state.personal_or_global(
        client_state, fitted_personal))

  return Algorithm(
      server_init=server_init,
      client_state_init=client_state_init,
      client_init=client_init,
      local_step=local_step,
      client_final=client_final,
      server_update=server_update,
      server_params=lambda server_state: server_state.model.params,
      full_params=lambda server_state: layers.merge(
          server_state.model.params, server_state.initial.value),
      personalization=Personalization(personal_params, finetune_steps))
