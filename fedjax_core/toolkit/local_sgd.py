"""Local SGD on a corrected direction, as the drift-correcting family runs it.

The algorithms of FL-Simulator (Sun et al.'s reference code for FedSpeed and
FedSMOO, and their SCAFFOLD, FedDyn, FedCM, FedSAM ... baselines) all train
clients with plain SGD on a corrected gradient. One step, in this order:

  d = direction(y)                      the algorithm's (corrected) gradient
  d = clip_by_global_norm(d, max_norm)  if max_grad_norm is set
  d = d + weight_decay * y              coupled weight decay, as torch's SGD
  y = y - lr_t * d                      lr_t = lr * lr_decay ** round

FL-Simulator's defaults are lr 0.1, lr_decay 0.998, weight_decay 1e-3 and
max_grad_norm 10; ours are the neutral 1.0, 0 and None so that an algorithm
is its paper's update rule unless a flag says otherwise.
"""

import dataclasses
from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from fedjax_core.toolkit import optimizers
from fedjax_core.toolkit import server_model
from fedjax_core.algorithm import Algorithm, ClientOutput
from fedjax_core.errors import SettingError
from fedjax_core.toolkit.sharpness import GradFn

PyTree = Any
DirectionFn = Callable[[PyTree, PyTree, PyTree], PyTree]


@dataclasses.dataclass(frozen=True)
class LocalSGD:
  """Hyperparameters of the clients' SGD.

  Attributes:
    learning_rate: local learning rate eta at round 0.
    lr_decay: eta is multiplied by this once per round.
    weight_decay: coupled L2 coefficient added to the direction.
    max_grad_norm: clip the direction to this global norm (None: no clip).

  Examples:
    >>> sgd = LocalSGD(learning_rate=0.1, lr_decay=0.998)
    >>> params = sgd.step(params, grads, sgd.learning_rate_at(round_num))
  """

  learning_rate: float
  lr_decay: float = 1.0
  weight_decay: float = 0.0
  max_grad_norm: float | None = None

  def __post_init__(self):
    optimizers.check_learning_rate('client', self.learning_rate)
    if not 0 < self.lr_decay <= 1:
      raise SettingError('client_lr_decay', 'client_lr_decay must be in '
                         f'(0, 1], got {self.lr_decay!r}.')
    if not self.weight_decay >= 0:
      raise SettingError('weight_decay', 'weight_decay must be >= 0, got '
                         f'{self.weight_decay!r}.')
    if self.max_grad_norm is not None and not self.max_grad_norm > 0:
      raise SettingError('max_grad_norm', 'max_grad_norm must be positive '
                         f'(or None), got {self.max_grad_norm!r}.')

  def learning_rate_at(self, round_num: jax.Array) -> jax.Array:
    """`lr * lr_decay ** round_num` as a float32 scalar."""
    return jnp.float32(self.learning_rate) * jnp.float32(
        self.lr_decay) ** round_num

  def step(self, params: PyTree, direction: PyTree,
           learning_rate: jax.Array) -> PyTree:
    """One SGD step on `direction`, with clipping and weight decay."""
    if self.max_grad_norm is not None:
      clip = optax.clip_by_global_norm(self.max_grad_norm)
      direction, _ = clip.update(direction, clip.init(params))
    if self.weight_decay:
      direction = jax.tree.map(lambda d, p: d + self.weight_decay * p,
                               direction, params)
    return jax.tree.map(lambda p, d: p - learning_rate * d, params, direction)


@flax.struct.dataclass
class LocalState:
  """A client's model y during local training, with what its steps need.

  Attributes:
    params: the client model y.
    anchor: the global model x the client started from.
    learning_rate: this round's local learning rate.
  """

  params: PyTree
  anchor: PyTree
  learning_rate: jax.Array


def start(server_state: server_model.ServerModel,
          local_sgd: LocalSGD) -> LocalState:
  """A client's local state at the start of a round: y = x."""
  return LocalState(params=server_state.params, anchor=server_state.params,
                    learning_rate=local_sgd.learning_rate_at(
                        server_state.round_num))


def model_delta(server_state: server_model.ServerModel,
                local: LocalState) -> PyTree:
  """`y_K - x`, the client's model change over the round."""
  return optax.tree.sub(local.params, server_state.params)


def mean_direction(delta: PyTree, num_steps: jax.Array,
                   learning_rate: jax.Array) -> PyTree:
  """`(x - y_K) / (K eta)` from `delta = y_K - x`: the mean direction of a
  client's K local SGD steps (FedCM's and SCAFFOLD's normalisation).

  K is taken as at least 1, so a client without data (only padding, K = 0,
  delta = 0) gets a zero direction rather than 0/0.
  """
  steps = jnp.maximum(num_steps, 1).astype(jnp.float32)
  return optax.tree.scale(-1.0 / (steps * learning_rate), delta)


def stateless_algorithm(grad_fn: GradFn, direction_fn: DirectionFn,
                        local_sgd: LocalSGD,
                        server_optimizer: optax.GradientTransformation, *,
                        weighted: bool = False) -> Algorithm:
  """Local SGD on `direction_fn(grads, y, x)`, then a model average.

  Clients keep no state between rounds. Each sends `y_K - x`; the server
  moves x by the cohort's mean of it through `server_optimizer` (SGD with
  learning rate 1: `x <- mean_S y_K`). FedProx and FedSAM are this with
  their own `direction_fn` and `grad_fn`; the personalized algorithms
  whose global model is FedAvg's build on it.

  Args:
    grad_fn: `(params, batch) -> (loss, grads)`, e.g. `sharpness.sam(...)`.
    direction_fn: `(grads, y, x) -> direction`, e.g. `drift.prox`.
    local_sgd: the clients' SGD.
    server_optimizer: applied to the pseudo-gradient `-mean_S (y_K - x)`.
    weighted: weight clients by example count (FedAvg) or equally (as
      FL-Simulator).

  Returns:
    The algorithm.
  """

  def local_step(local, batch, rng):
    del rng
    loss, grads = grad_fn(local.params, batch)
    direction = direction_fn(grads, local.params, local.anchor)
    params = local_sgd.step(local.params, direction, local.learning_rate)
    return local.replace(params=params), {'loss': loss}

  def client_final(server_state, client_state, local, info):
    del client_state
    delta = model_delta(server_state, local)
    return ClientOutput(
        message=delta,
        weight=info.num_examples if weighted else jnp.float32(1.0),
        client_state=(), metrics={'delta_norm': optax.tree.norm(delta)})

  def server_update(server_state, mean_delta, cohort):
    del cohort
    server_state, update_norm = server_model.apply_delta(
        server_optimizer, server_state, mean_delta)
    return server_state, {'server_update_norm': update_norm}

  return Algorithm(
      server_init=lambda params, rng: server_model.init(server_optimizer,
                                                        params),
      client_state_init=lambda params: (),
      client_init=lambda server_state, client_state, rng: start(
          server_state, local_sgd),
      local_step=local_step,
      client_final=client_final,
      server_update=server_update,
      server_params=lambda server_state: server_state.params)
