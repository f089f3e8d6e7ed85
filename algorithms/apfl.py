"""APFL: Deng et al. 2020, "Adaptive Personalized Federated Learning",
Algorithm 1.

Each client of the cohort trains a local copy w of the global model and its
own model v, and is personalized by their mixture `vbar = alpha v + (1 -
alpha) w`. Per local step, on the same batch, from the step's w, v and
alpha:

  w     <- w - eta grad f(w),
  v     <- v - eta grad_v f(vbar) = v - eta alpha grad f(vbar),
  alpha <- clip(alpha - alpha_lr <v - w, grad f(vbar)>, 0, 1),

the last the paper's adaptive mixing (its Section 3.2: `grad_alpha f(vbar)
= <v - w, grad f(vbar)>`) with a learning rate of its own (alpha_lr = 0
keeps alpha fixed), clipped to [0, 1]. All three steps start from the
step's w, v and alpha, as Algorithm 1 writes them; the w and v steps go
through the clients' SGD (clipping and coupled weight decay alike). The
authors' code (github.com/MLOPTPSU/FedTorch) differs: it mixes the two
models' outputs rather than their parameters, after w's step, and moves
alpha once per round with an extra `0.02 alpha` in its gradient. Clients
send w's change, so the global model is FedAvg's (McMahan et al. 2017).

A client's personal model is `alpha v + (1 - alpha) x` with x the current
global model; a client that never trained gets x. v starts at the global
model of the client's first round (so vbar = w at its first step).

Defaults: alpha = 0.25 (the paper's experiments use alpha in {0.25, 0.5,
0.75}) and alpha_lr = 0, a fixed mixing.
"""

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from fedjax_core.algorithm import Algorithm, Personalization, is_traced
from fedjax_core.errors import SettingError
from fedjax_core.toolkit import drift
from fedjax_core.toolkit import local_sgd as local_sgd_lib
from fedjax_core.toolkit import losses
from fedjax_core.toolkit import personal_state

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


@flax.struct.dataclass
class ClientState(personal_state.PersonalState):
  """Client i's own model v and 1.0 once it has trained (0.0 before, when
  v is a placeholder), and its mixing weight alpha."""

  alpha: jax.Array


@flax.struct.dataclass
class LocalState:
  """The local copy w of the global model (with x and eta), v and alpha."""

  sgd: local_sgd_lib.LocalState
  personal: PyTree
  alpha: jax.Array


def _mix(alpha: jax.Array, personal: PyTree, params: PyTree) -> PyTree:
  """`alpha v + (1 - alpha) w`."""
  return jax.tree.map(lambda v, w: alpha * v + (1 - alpha) * w, personal,
                      params)


def apfl(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
         server_optimizer: optax.GradientTransformation, *,
         weighted: bool = True, alpha: float = 0.25,
         alpha_lr: float = 0.0) -> Algorithm:
  """APFL: FedAvg, and per client a model mixed with the global one.

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the clients' SGD, for w and v.
    server_optimizer: applied to the pseudo-gradient `-mean delta`.
    weighted: weight clients by example count (FedAvg) or equally.
    alpha: every client's initial mixing weight, in [0, 1] (0: the global
      model, 1: the client's own model).
    alpha_lr: learning rate of the adaptive mixing, >= 0 (0: alpha fixed).

  Returns:
    The algorithm, with its `personalization`.

  Examples:
    >>> algorithm = apfl(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                  alpha=0.25, alpha_lr=0.01)
  """
  if not is_traced(alpha) and not 0 <= alpha <= 1:
    raise SettingError('alpha', f'APFL needs alpha in [0, 1], got {alpha!r}.')
  if not is_traced(alpha_lr) and not alpha_lr >= 0:
    raise SettingError('alpha_lr', 'APFL needs alpha_lr >= 0 (0 keeps alpha '
                       f'fixed), got {alpha_lr!r}.')
  grad_fn = losses.loss_and_grad(apply_fn)
  fedavg = local_sgd_lib.stateless_algorithm(
      grad_fn, drift.uncorrected, local_sgd, server_optimizer,
      weighted=weighted)

  def client_state_init(params):
    return ClientState(personal=params, trained=jnp.float32(0.0),
                       alpha=jnp.asarray(alpha, jnp.float32))

  def client_init(server_state, client_state, rng):
    return LocalState(
        sgd=fedavg.client_init(server_state, client_state, rng),
        personal=personal_state.personal_or_global(client_state,
                                                   server_state.params),
        alpha=client_state.alpha)

  def local_step(local, batch, rng):
    v, a = local.personal, local.alpha
    w = local.sgd.params  # The step's w, before w's own step.
    sgd, metrics = fedavg.local_step(local.sgd, batch, rng)
    personal_loss, mixed_grads = grad_fn(_mix(a, v, w), batch)
    alpha_grad = optax.tree.vdot(optax.tree.sub(v, w), mixed_grads)
    personal = local_sgd.step(v, optax.tree.scale(a, mixed_grads),
                              sgd.learning_rate)
    return (LocalState(sgd=sgd, personal=personal,
                       alpha=jnp.clip(a - alpha_lr * alpha_grad, 0.0, 1.0)),
            {**metrics, 'personal_loss': personal_loss})

  def client_final(server_state, client_state, local, info):
    output = fedavg.client_final(server_state, client_state, local.sgd, info)
    return output._replace(
        client_state=ClientState(personal=local.personal,
                                 trained=jnp.float32(1.0), alpha=local.alpha),
        metrics={**output.metrics, 'alpha': local.alpha})

  def personal_params(server_state, client_state, train, rng):
    del train, rng
    params = server_state.params
    return _mix(client_state.alpha,
                personal_state.personal_or_global(client_state, params),
                params)

  return fedavg._replace(
      client_state_init=client_state_init,
      client_init=client_init,
      local_step=local_step,
      client_final=client_final,
      personalization=Personalization(personal_params))
