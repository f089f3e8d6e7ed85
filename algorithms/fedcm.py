"""FedCM and MoFedSAM: local SGD steered by the server's last direction.

FedCM: Xu et al. 2021, "FedCM: Federated Learning with Client-level
Momentum"; the same rule is FedAvg-M of Cheng et al. 2023, "Momentum
Benefits Non-IID Federated Learning Simply and Provably". In round t client
i starts from the global model x and runs K_i steps of local SGD on

  d = beta g(y) + (1 - beta) Delta_t
  y <- y - eta_t d,

where Delta_t is the cohort's mean pseudo-gradient of the previous round,

  Delta_{t+1} = mean_S (x - y_K,i) / (K_i eta_t),     Delta_0 = 0,

i.e. the mean local gradient direction per step (K_i: the client's real
local steps; eta_t: the round's local learning rate). The server averages
the models, `x <- x + eta_g mean_S (y_K - x)` (eta_g = 1 in FL-Simulator),
and keeps Delta_{t+1} for the next round. FL-Simulator writes the client's
loss as `alpha f_i(y) + (1 - alpha) <y, Delta>` with the same Delta, whose
gradient is d with beta = alpha.

MoFedSAM: Qu et al. 2022, "Generalized Federated Learning via Sharpness
Aware Minimization": FedCM with the SAM gradient of FedSAM in place of g,
`g = grad f_i(y + rho g0 / (||g0|| + 1e-12))`, `g0 = grad f_i(y)`.

Defaults: beta = 0.1 (Xu et al.'s alpha = 0.1, as FL-Simulator), rho = 0.1.
FL-Simulator trains with lr 0.1, lr decay 0.998, weight decay 1e-3 and
gradients clipped to norm 10 (`--client_lr --client_lr_decay
--weight_decay --max_grad_norm`). Clients are weighted uniformly.
"""

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from fedjax_core.toolkit import drift
from fedjax_core.toolkit import local_sgd as local_sgd_lib
from fedjax_core.toolkit import losses
from fedjax_core.toolkit import server_model
from fedjax_core.toolkit import sharpness
from fedjax_core.algorithm import Algorithm, ClientOutput, is_traced

PyTree = Any
ApplyFn = Callable[[PyTree, Any], Any]


@flax.struct.dataclass
class ServerState:
  """The global model and the momentum direction clients mix in.

  Attributes:
    model: the global model x with its server optimizer state.
    momentum: Delta, the cohort's mean pseudo-gradient of the last round.
  """

  model: server_model.ServerModel
  momentum: PyTree


@flax.struct.dataclass
class LocalState:
  """A client's local SGD state with the momentum it was sent."""

  sgd: local_sgd_lib.LocalState
  momentum: PyTree


class Message(NamedTuple):
  """What a client sends: its model change and its mean step direction.

  Attributes:
    delta: `y_K - x`.
    pseudo_gradient: `(x - y_K) / (K_i eta_t)`.
  """

  delta: PyTree
  pseudo_gradient: PyTree


def _client_momentum(grad_fn: sharpness.GradFn,
                     local_sgd: local_sgd_lib.LocalSGD,
                     server_optimizer: optax.GradientTransformation,
                     beta: float) -> Algorithm:
  """Local SGD on `beta grad_fn(y) + (1 - beta) Delta`, then averaging."""

  def server_init(params, rng):
    del rng
    return ServerState(model=server_model.init(server_optimizer, params),
                       momentum=jax.tree.map(jnp.zeros_like, params))

  def client_init(server_state, client_state, rng):
    del client_state, rng
    return LocalState(sgd=local_sgd_lib.start(server_state.model, local_sgd),
                      momentum=server_state.momentum)

  def local_step(local, batch, rng):
    del rng
    sgd = local.sgd
    loss, grads = grad_fn(sgd.params, batch)
    direction = drift.momentum_mix(grads, local.momentum, beta)
    params = local_sgd.step(sgd.params, direction, sgd.learning_rate)
    return local.replace(sgd=sgd.replace(params=params)), {'loss': loss}

  def client_final(server_state, client_state, local, info):
    del client_state
    delta = local_sgd_lib.model_delta(server_state.model, local.sgd)
    pseudo_gradient = local_sgd_lib.mean_direction(
        delta, info.num_steps, local.sgd.learning_rate)
    return ClientOutput(
        message=Message(delta=delta, pseudo_gradient=pseudo_gradient),
        weight=jnp.float32(1.0), client_state=(),
        metrics={'delta_norm': optax.tree.norm(delta)})

  def server_update(server_state, mean_message, cohort):
    del cohort
    model, update_norm = server_model.apply_delta(
        server_optimizer, server_state.model, mean_message.delta)
    momentum = mean_message.pseudo_gradient
    return (ServerState(model=model, momentum=momentum),
            {'server_update_norm': update_norm,
             'momentum_norm': optax.tree.norm(momentum)})

  return Algorithm(
      server_init=server_init,
      client_state_init=lambda params: (),
      client_init=client_init,
      local_step=local_step,
      client_final=client_final,
      server_update=server_update,
      server_params=lambda server_state: server_state.model.params)


def _check_beta(name: str, beta: float) -> None:
  if not is_traced(beta) and not 0 < beta <= 1:
    raise ValueError(f'{name} needs beta in (0, 1], got {beta}.')


def fedcm(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
          server_optimizer: optax.GradientTransformation, *,
          beta: float = 0.1) -> Algorithm:
  """FedCM with gradient weight `beta` (Xu et al.'s alpha).

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the clients' SGD.
    server_optimizer: applied to the pseudo-gradient `-mean_S (y_K - x)`.
    beta: weight of the local gradient in the step direction, in (0, 1];
      beta = 1 is FedAvg.

  Returns:
    The algorithm.

  Examples:
    >>> algorithm = fedcm(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                   beta=0.1)
  """
  _check_beta('FedCM', beta)
  return _client_momentum(losses.loss_and_grad(apply_fn), local_sgd,
                          server_optimizer, beta)


def mofedsam(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
             server_optimizer: optax.GradientTransformation, *,
             beta: float = 0.1, rho: float = 0.1) -> Algorithm:
  """MoFedSAM: FedCM on the SAM gradient with radius `rho`.

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the clients' SGD.
    server_optimizer: applied to the pseudo-gradient `-mean_S (y_K - x)`.
    beta: weight of the local SAM gradient in the step direction, in
      (0, 1].
    rho: radius of the SAM ascent step, > 0.

  Returns:
    The algorithm.

  Examples:
    >>> algorithm = mofedsam(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                      beta=0.1, rho=0.1)
  """
  _check_beta('MoFedSAM', beta)
  if not is_traced(rho) and not rho > 0:
    raise ValueError(f'MoFedSAM needs rho > 0, got {rho}.')
  return _client_momentum(
      sharpness.sam(losses.loss_and_grad(apply_fn), rho), local_sgd,
      server_optimizer, beta)
