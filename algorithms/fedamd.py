"""FedAMD: Wu et al., ICML 2023, "Anchor Sampling for Federated Learning with
Partial Client Participation".

Each sampled client independently becomes an anchor with probability p, else
a miner; the draw is `jax.random.bernoulli` of the client's own init key, so
a run with the same seed draws the same groups.

- An anchor does not move. It computes its full-batch gradient at the global
  model x, `nu_i = sum_B |B| grad f(x; B) / sum_B |B|` over all its local
  batches of the round (|B| its real examples), and keeps it as its
  persistent state in place of the old nu_i.
- A miner runs SARAH-style variance-reduced steps from x, started from the
  server's `nu_bar = (1/N) sum_{i=1..N} nu_i` over the whole population.
  Its local state is (y_prev, y, v), starting at (x, x, nu_bar); a step on
  batch B is

    v <- grad f(y; B) - grad f(y_prev; B) + v
    y_prev <- y
    y <- y - eta v

  so the first step moves by nu_bar (the paper's x_1 = x - eta v_0) and the
  later ones are SARAH's.

The server moves x by the miners' mean change, `x <- x + eta_g mean_{miners}
(y_K - x)` (no change in a round without a miner), and keeps nu_bar the mean
of the stored nu_i, `nu_bar <- nu_bar + (1/N) sum_{anchors} (nu_i_new -
nu_i_old)`. Both come from one uniformly weighted mean message: each client
sends `is_miner (y_K - x)`, `is_miner` and `is_anchor (nu_new - nu_old)`.

Defaults and choices (ours): p = 0.5 (the paper studies both constant and
time-varying, "sequential", anchor probabilities; we found no single default
to copy); nu_i and nu_bar start at zero, so miners do not move until some
anchor has reported; eta_g = 1 with `optax.sgd(1.0)` is the paper's server.
The local learning rate, its decay, weight decay and clipping are
`LocalSGD`'s, applied to the direction v.

Metrics: `anchor_fraction` (the cohort's share of anchors), `delta_norm`
(`||y_K - x||`, 0 for an anchor, averaged over the whole cohort),
`server_update_norm` (0 in a round without a miner) and `nu_bar_norm`.
"""

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from fedjax_core.toolkit import local_sgd as local_sgd_lib
from fedjax_core.toolkit import losses
from fedjax_core.toolkit import server_model
from fedjax_core.algorithm import Algorithm, ClientOutput, is_traced

PyTree = Any
ApplyFn = Callable[[PyTree, Any], Any]


@flax.struct.dataclass
class ServerState:
  """The global model and the population's mean anchor gradient.

  Attributes:
    model: the global model x with its server optimizer state.
    nu_bar: `(1/N) sum_i nu_i` over all N clients' stored gradients.
  """

  model: server_model.ServerModel
  nu_bar: PyTree


@flax.struct.dataclass
class ClientState:
  """One client's persistent state.

  Attributes:
    nu: its full-batch gradient from the last round it was an anchor (zero
      before that).
  """

  nu: PyTree


@flax.struct.dataclass
class LocalState:
  """A client's state during one round.

  Attributes:
    params: the model y (stays at x for an anchor).
    prev_params: the model of the previous step, y_prev.
    direction: the SARAH estimate v.
    grad_sum: `sum_B |B| grad f(y; B)`; an anchor's y is x throughout.
    is_anchor: 1.0 for an anchor, 0.0 for a miner.
    learning_rate: this round's local learning rate eta.
  """

  params: PyTree
  prev_params: PyTree
  direction: PyTree
  grad_sum: PyTree
  is_anchor: jax.Array
  learning_rate: jax.Array


def draw_anchor(rng: jax.Array, anchor_prob: float) -> jax.Array:
  """1.0 if the client with init key `rng` is an anchor this round, else 0.0."""
  return jax.random.bernoulli(rng, anchor_prob).astype(jnp.float32)


def fedamd(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
           server_optimizer: optax.GradientTransformation, *,
           num_clients: int, anchor_prob: float = 0.5) -> Algorithm:
  """FedAMD with anchor probability `anchor_prob` over N = `num_clients`.

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the miners' SGD (learning rate eta and its options).
    server_optimizer: applied to the pseudo-gradient `-mean_{miners} (y_K -
      x)`; `optax.sgd(1.0)` is the paper's server.
    num_clients: the population size N that nu_bar averages over.
    anchor_prob: probability p that a sampled client is an anchor.

  Returns:
    The algorithm.

  Examples:
    >>> algorithm = fedamd(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                    num_clients=100, anchor_prob=0.5)
  """
  if not is_traced(anchor_prob) and not 0.0 <= anchor_prob <= 1.0:
    raise ValueError(
        f'FedAMD needs anchor_prob in [0, 1], got {anchor_prob!r}.')
  server_model.check_population('FedAMD', num_clients)
  grad_fn = losses.loss_and_grad(apply_fn)

  def server_init(params, rng):
    del rng
    return ServerState(model=server_model.init(server_optimizer, params),
                       nu_bar=optax.tree.zeros_like(params))

  def client_state_init(params):
    return ClientState(nu=optax.tree.zeros_like(params))

  def client_init(server_state, client_state, rng):
    del client_state
    x = server_state.model.params
    return LocalState(
        params=x, prev_params=x, direction=server_state.nu_bar,
        grad_sum=optax.tree.zeros_like(x),
        is_anchor=draw_anchor(rng, anchor_prob),
        learning_rate=local_sgd.learning_rate_at(
            server_state.model.round_num))

  def local_step(local, batch, rng):
    del rng
    loss, grads = grad_fn(local.params, batch)
    _, prev_grads = grad_fn(local.prev_params, batch)
    direction = jax.tree.map(lambda g, gp, v: g - gp + v, grads, prev_grads,
                             local.direction)
    count = jnp.sum(batch.mask)
    moved = local_sgd.step(local.params, direction, local.learning_rate)
    # Anchors stay at x; a step without real examples moves nobody.
    move = (local.is_anchor == 0.0) & (count > 0)
    params = optax.tree.where(move, moved, local.params)
    grad_sum = jax.tree.map(lambda s, g: s + count * g, local.grad_sum, grads)
    return local.replace(params=params, prev_params=local.params,
                         direction=direction, grad_sum=grad_sum), {
                             'loss': loss}

  def client_final(server_state, client_state, local, info):
    is_anchor = local.is_anchor
    is_miner = 1.0 - is_anchor
    delta = local_sgd_lib.model_delta(server_state.model, local)
    full_grad = jax.tree.map(
        lambda s: s / jnp.maximum(info.num_examples, 1.0), local.grad_sum)
    nu = optax.tree.where(is_anchor > 0, full_grad, client_state.nu)
    message = {
        'delta': optax.tree.scale(is_miner, delta),
        'is_miner': is_miner,
        'nu_change': optax.tree.scale(
            is_anchor, optax.tree.sub(nu, client_state.nu)),
    }
    metrics = {'anchor_fraction': is_anchor,
               'delta_norm': is_miner * optax.tree.norm(delta)}
    return ClientOutput(message=message, weight=jnp.float32(1.0),
                        client_state=ClientState(nu=nu), metrics=metrics)

  def server_update(server_state, mean_message, cohort):
    miner_share = mean_message['is_miner']
    has_miner = miner_share > 0
    miner_mean_delta = optax.tree.scale(
        1.0 / jnp.where(has_miner, miner_share, 1.0), mean_message['delta'])
    moved, update_norm = server_model.apply_delta(
        server_optimizer, server_state.model, miner_mean_delta)
    kept = server_state.model.replace(round_num=moved.round_num)
    model = optax.tree.where(has_miner, moved, kept)
    nu_bar = jax.tree.map(
        lambda nb, d: nb + (cohort.num_clients / num_clients) * d,
        server_state.nu_bar, mean_message['nu_change'])
    metrics = {'server_update_norm': jnp.where(has_miner, update_norm, 0.0),
               'nu_bar_norm': optax.tree.norm(nu_bar)}
    return ServerState(model=model, nu_bar=nu_bar), metrics

  return Algorithm(
      server_init=server_init,
      client_state_init=client_state_init,
      client_init=client_init,
      local_step=local_step,
      client_final=client_final,
      server_update=server_update,
      server_params=lambda server_state: server_state.model.params)
