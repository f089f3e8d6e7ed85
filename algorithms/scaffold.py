"""SCAFFOLD and its variants: control variates against client drift.

- SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled
  Averaging for Federated Learning"), option II: each client keeps c_i, the
  server keeps c (both zero at the start);
    y <- y - eta (g(y) - c_i + c)                       K local steps
    c_i+ = c_i - c + (x - y_K) / (K eta)
    x <- x + eta_g mean_S (y_K - x),  c <- c + (1/N) sum_S (c_i+ - c_i).
- SCAFFOLD-M (Cheng et al. 2023, "Momentum Benefits Non-IID Federated
  Learning Simply and Provably", Algorithm 3): the same corrected gradient
  mixed with the server's last direction v, as FedCM,
    y <- y - eta (beta (g(y) - c_i + c) + (1 - beta) v),
    v = mean_S (x - y_K) / (K eta) of the previous round (zero at first),
  with c_i+ = the mean of the raw gradients g(y_k) along the path (equal to
  option II when beta = 1 and the step is plain SGD).
- FedGamma (Dai et al. 2023, "FedGAMMA: Federated Learning With Global
  Sharpness-Aware Minimization"): SCAFFOLD with the SAM gradient (eps = rho g
  / ||g||) in place of g.

K is each client's count of real local steps and eta the round's local
learning rate. Clients are averaged uniformly, as in the papers.

Defaults: eta_g = 1 (`--server_lr`), beta = 0.1 (FL-Simulator's FedCM
alpha), rho = 0.1 (FL-Simulator); FL-Simulator also trains with lr 0.1,
lr decay 0.998, weight decay 1e-3 and clipping at norm 10.
"""

from typing import Any, Callable

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
  """The global model, the server control variate c and (SCAFFOLD-M) the
  server's last direction v (None otherwise)."""

  model: server_model.ServerModel
  control: PyTree
  momentum: PyTree | None


@flax.struct.dataclass
class LocalState:
  """Local training state: y, x, eta, `c - c_i`, v and the gradient sum."""

  sgd: local_sgd_lib.LocalState
  correction: PyTree
  momentum: PyTree | None
  grad_sum: PyTree | None


def _scaffold(grad_fn: sharpness.GradFn,
              local_sgd: local_sgd_lib.LocalSGD,
              server_optimizer: optax.GradientTransformation,
              num_clients: int, beta: float | None) -> Algorithm:
  """SCAFFOLD on `grad_fn`; with momentum `beta`, SCAFFOLD-M."""
  server_model.check_population('SCAFFOLD', num_clients)
  use_momentum = beta is not None
  if use_momentum and not is_traced(beta) and not 0 < beta <= 1:
    raise ValueError(f'SCAFFOLD-M needs 0 < beta <= 1, got {beta}.')

  def server_init(params, rng):
    del rng
    zeros = optax.tree.zeros_like(params)
    return ServerState(model=server_model.init(server_optimizer, params),
                       control=zeros,
                       momentum=zeros if use_momentum else None)

  def client_init(server_state, control_i, rng):
    del rng
    sgd = local_sgd_lib.start(server_state.model, local_sgd)
    return LocalState(
        sgd=sgd,
        correction=optax.tree.sub(server_state.control, control_i),
        momentum=server_state.momentum,
        grad_sum=(optax.tree.zeros_like(sgd.params) if use_momentum
                  else None))

  def local_step(local, batch, rng):
    del rng
    sgd = local.sgd
    loss, grads = grad_fn(sgd.params, batch)
    direction = drift.correct(grads, local.correction)
    grad_sum = local.grad_sum
    if use_momentum:
      direction = drift.momentum_mix(direction, local.momentum, beta)
      grad_sum = optax.tree.add(grad_sum, grads)
    params = local_sgd.step(sgd.params, direction, sgd.learning_rate)
    return local.replace(sgd=sgd.replace(params=params),
                         grad_sum=grad_sum), {'loss': loss}

  def client_final(server_state, control_i, local, info):
    delta = local_sgd_lib.model_delta(server_state.model, local.sgd)
    direction = local_sgd_lib.mean_direction(delta, info.num_steps,
                                             local.sgd.learning_rate)
    if use_momentum:  # Cheng et al.: the mean raw gradient along the path.
      steps = jnp.maximum(info.num_steps, 1).astype(jnp.float32)
      new_control_i = optax.tree.scale(1.0 / steps, local.grad_sum)
    else:  # Option II: c_i - c + (x - y_K) / (K eta).
      new_control_i = jax.tree.map(lambda ci, c, d: ci - c + d, control_i,
                                   server_state.control, direction)
    trained = info.num_steps > 0  # A client without data keeps its c_i.
    new_control_i = optax.tree.where(trained, new_control_i, control_i)
    message = {'delta': delta,
               'control_change': optax.tree.sub(new_control_i, control_i)}
    if use_momentum:
      message['direction'] = direction
    return ClientOutput(message=message, weight=jnp.float32(1.0),
                        client_state=new_control_i,
                        metrics={'delta_norm': optax.tree.norm(delta)})

  def server_update(server_state, mean, cohort):
    model, update_norm = server_model.apply_delta(
        server_optimizer, server_state.model, mean['delta'])
    control = optax.tree.add_scale(server_state.control,
                                   cohort.num_clients / num_clients,
                                   mean['control_change'])
    momentum = mean['direction'] if use_momentum else None
    return (ServerState(model=model, control=control, momentum=momentum),
            {'server_update_norm': update_norm,
             'control_norm': optax.tree.norm(control)})

  return Algorithm(
      server_init=server_init,
      client_state_init=optax.tree.zeros_like,
      client_init=client_init,
      local_step=local_step,
      client_final=client_final,
      server_update=server_update,
      server_params=lambda server_state: server_state.model.params)


def scaffold(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
             server_optimizer: optax.GradientTransformation, *,
             num_clients: int) -> Algorithm:
  """SCAFFOLD, option II, for a population of `num_clients`.

  Examples:
    >>> algorithm = scaffold(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                      num_clients=100)
  """
  return _scaffold(losses.loss_and_grad(apply_fn), local_sgd,
                   server_optimizer, num_clients, beta=None)


def scaffold_m(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
               server_optimizer: optax.GradientTransformation, *,
               num_clients: int, beta: float = 0.1) -> Algorithm:
  """SCAFFOLD-M: SCAFFOLD's corrected gradient with client momentum `beta`.

  Examples:
    >>> algorithm = scaffold_m(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                        num_clients=100, beta=0.1)
  """
  return _scaffold(losses.loss_and_grad(apply_fn), local_sgd,
                   server_optimizer, num_clients, beta=beta)


def fedgamma(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
             server_optimizer: optax.GradientTransformation, *,
             num_clients: int, rho: float = 0.1) -> Algorithm:
  """FedGamma: SCAFFOLD's control variates on the SAM gradient.

  Examples:
    >>> algorithm = fedgamma(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                      num_clients=100, rho=0.1)
  """
  if not is_traced(rho) and not rho > 0:
    raise ValueError(f'FedGamma needs rho > 0, got {rho}.')
  return _scaffold(sharpness.sam(losses.loss_and_grad(apply_fn), rho),
                   local_sgd, server_optimizer, num_clients, beta=None)
