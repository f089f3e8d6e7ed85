"""FedAvg and the FedOpt family.

FedAvg: McMahan et al. 2017, "Communication-Efficient Learning of Deep
Networks from Decentralized Data". FedOpt: Reddi et al. 2021, "Adaptive
Federated Optimization": clients run local optimization from the global
model, the server treats the negated (weighted) mean client delta as a
pseudo-gradient and applies a server optimizer to it: SGD with learning rate
1 is FedAvg, SGD with momentum is FedAvgM (Hsu et al. 2019), and the adaptive
forms are FedAdagrad, FedYogi and FedAdam.

With `dp_sgd`, each local step is DP-SGD (Abadi et al. 2016; per-example
clipping and noise, `fedjax_core.toolkit.dp_sgd`), sample-level privacy for
cross-silo settings.
"""

from typing import Any, Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from fedjax_core.toolkit import dp_sgd as dp_sgd_lib
from fedjax_core.toolkit import losses
from fedjax_core.toolkit import server_model
from fedjax_core.algorithm import Algorithm, Batch, ClientInfo, ClientOutput

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


@flax.struct.dataclass
class LocalState:
  """A client's model, optimizer state and learning-rate scale."""

  params: PyTree
  opt_state: optax.OptState
  lr_scale: jax.Array


def fedavg(apply_fn: ApplyFn, client_optimizer: optax.GradientTransformation,
           server_optimizer: optax.GradientTransformation, *,
           weighted: bool = True, client_lr_decay: float = 1.0,
           dp_sgd: dp_sgd_lib.DPSGDConfig | None = None) -> Algorithm:
  """FedAvg / FedOpt with the given client and server optimizers.

  Client i starts from the global model x, runs local steps of
  `client_optimizer` on the masked cross-entropy, and sends
  `delta_i = y_i - x` (the sum of its local updates). The server computes
  `delta = sum_i w_i delta_i / sum_i w_i` with `w_i` the client's example
  count (or 1 if not `weighted`) and applies `server_optimizer` to the
  pseudo-gradient `-delta`.

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    client_optimizer: local optax transform (its state restarts each round).
    server_optimizer: optax transform applied to the pseudo-gradient.
    weighted: weight clients by example count (FedAvg) or equally.
    client_lr_decay: the client's updates are scaled by this to the power of
      the round (for SGD and Adam alike, a per-round learning-rate decay).
    dp_sgd: run every local step as DP-SGD with this per-example clip norm
      and noise multiplier; None takes plain gradients.

  Returns:
    The algorithm's pure functions.

  Examples:
    >>> from fedjax_core.toolkit import optimizers
    >>> algorithm = fedavg(model.apply, optimizers.client_optimizer('sgd', 0.1),
    ...                    optimizers.server_optimizer('adam', 0.01))
  """

  def server_init(params, rng):
    del rng
    return server_model.init(server_optimizer, params)

  def client_state_init(params):
    del params
    return ()

  def client_init(server_state, client_state, rng):
    del client_state, rng
    params = server_state.params
    lr_scale = jnp.float32(client_lr_decay)**server_state.round_num
    return LocalState(params=params, opt_state=client_optimizer.init(params),
                      lr_scale=lr_scale)

  if dp_sgd is None:
    plain_grad_fn = losses.loss_and_grad(apply_fn)
    grad_fn = lambda params, batch, rng: plain_grad_fn(params, batch)
  else:
    grad_fn = dp_sgd_lib.private_loss_and_grad(apply_fn, dp_sgd)

  def local_step(local, batch: Batch, rng):
    loss, grads = grad_fn(local.params, batch, rng)
    updates, opt_state = client_optimizer.update(grads, local.opt_state,
                                                 local.params)
    params = optax.apply_updates(local.params,
                                 optax.tree.scale(local.lr_scale, updates))
    return local.replace(params=params, opt_state=opt_state), {'loss': loss}

  def client_final(server_state, client_state, local, info: ClientInfo):
    del client_state
    delta = jax.tree.map(jnp.subtract, local.params, server_state.params)
    weight = info.num_examples if weighted else jnp.float32(1.0)
    return ClientOutput(message=delta, weight=weight, client_state=(),
                        metrics={'delta_norm': optax.tree.norm(delta)})

  def server_update(server_state, mean_delta, cohort):
    del cohort
    chex.assert_trees_all_equal_shapes(mean_delta, server_state.params)
    server_state, update_norm = server_model.apply_delta(
        server_optimizer, server_state, mean_delta)
    return server_state, {'server_update_norm': update_norm}

  return Algorithm(
      server_init=server_init,
      client_state_init=client_state_init,
      client_init=client_init,
      local_step=local_step,
      client_final=client_final,
      server_update=server_update,
      server_params=lambda server_state: server_state.params)
