"""FedDyn: Acar et al., ICLR 2021, "Federated Learning Based on Dynamic
Regularization".

The paper's form (Algorithm 1), clients weighted uniformly. Client i keeps
h_i and the server keeps h (all zero at the start). In each round, a client
of the cohort S starts from y = x and takes K local SGD steps on its
dynamically regularized objective `f_i(y) - <h_i, y> + alpha/2 ||y - x||^2`,

  y <- y - eta (g(y) - h_i + alpha (y - x)),

then updates its linear term, `h_i <- h_i - alpha (y_K - x)`. The server,
with N the population size, sets

  h <- h - alpha (1/N) sum_S (y_K - x),
  x <- mean_S y_K - (1/alpha) h,

here as the change `mean_S (y_K - x) - (1/alpha) h` applied through the
server optimizer (SGD with learning rate 1 is the paper's rule exactly).
FL-Simulator (Sun et al.'s reference code) runs the same algorithm in other
variables: its h_i is the running sum of the client's deltas (the paper's
`-h_i / alpha`) and its server adds their mean over the population.

Defaults: alpha = 0.1 (the paper searches alpha in {0.1, 0.01, 0.001};
FL-Simulator's `--lamb` is 0.1). FL-Simulator trains with lr 0.1, weight
decay 1e-3 and gradients clipped to norm 10 (`--client_lr --weight_decay
--max_grad_norm`).
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
from fedjax_core.algorithm import Algorithm, ClientOutput, is_traced

PyTree = Any
ApplyFn = Callable[[PyTree, Any], Any]


@flax.struct.dataclass
class ServerState:
  """The global model x and the server's dual variable h."""

  model: server_model.ServerModel
  h: PyTree


@flax.struct.dataclass
class ClientState:
  """Client i's linear term h_i (the gradient of its dual)."""

  h: PyTree


@flax.struct.dataclass
class LocalState:
  """Local training state: y, x and eta, with the client's h_i."""

  sgd: local_sgd_lib.LocalState
  h: PyTree


def feddyn(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
           server_optimizer: optax.GradientTransformation, *,
           num_clients: int, alpha: float = 0.1) -> Algorithm:
  """FedDyn with regularization `alpha` for a population of `num_clients`.

  Args:
    apply_fn: `(params, x) -> logits`.
    local_sgd: the clients' SGD.
    server_optimizer: applied to the pseudo-gradient `-(x_new - x)`; SGD
      with learning rate 1 is the paper's server.
    num_clients: the population size N (not the cohort size).
    alpha: the dynamic regularization coefficient, > 0.

  Returns:
    The algorithm.

  Examples:
    >>> algorithm = feddyn(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                    num_clients=100, alpha=0.1)
  """
  server_model.check_population('FedDyn', num_clients)
  if not is_traced(alpha) and not alpha > 0:
    raise ValueError(f'FedDyn needs alpha > 0, got {alpha}.')
  grad_fn = losses.loss_and_grad(apply_fn)

  def server_init(params, rng):
    del rng
    return ServerState(model=server_model.init(server_optimizer, params),
                       h=optax.tree.zeros_like(params))

  def client_init(server_state, client_state, rng):
    del rng
    return LocalState(sgd=local_sgd_lib.start(server_state.model, local_sgd),
                      h=client_state.h)

  def local_step(local, batch, rng):
    del rng
    sgd = local.sgd
    loss, grads = grad_fn(sgd.params, batch)
    direction = drift.prox(
        drift.correct(grads, optax.tree.scale(-1.0, local.h)), sgd.params,
        sgd.anchor, alpha)
    params = local_sgd.step(sgd.params, direction, sgd.learning_rate)
    return local.replace(sgd=sgd.replace(params=params)), {'loss': loss}

  def client_final(server_state, client_state, local, info):
    del info
    delta = local_sgd_lib.model_delta(server_state.model, local.sgd)
    h = optax.tree.add_scale(client_state.h, -alpha, delta)
    return ClientOutput(message=delta, weight=jnp.float32(1.0),
                        client_state=ClientState(h=h),
                        metrics={'delta_norm': optax.tree.norm(delta)})

  def server_update(server_state, mean_delta, cohort):
    # h <- h - alpha (1/N) sum_S delta, with sum_S = |S| mean_S.
    h = optax.tree.add_scale(server_state.h,
                             -alpha * cohort.num_clients / num_clients,
                             mean_delta)
    change = jax.tree.map(lambda d, hh: d - hh / alpha, mean_delta, h)
    model, update_norm = server_model.apply_delta(
        server_optimizer, server_state.model, change)
    return (ServerState(model=model, h=h),
            {'server_update_norm': update_norm,
             'h_norm': optax.tree.norm(h)})

  return Algorithm(
      server_init=server_init,
      client_state_init=lambda params: ClientState(
          h=optax.tree.zeros_like(params)),
      client_init=client_init,
      local_step=local_step,
      client_final=client_final,
      server_update=server_update,
      server_params=lambda server_state: server_state.model.params)
