"""The global model as the server keeps it: params, optimizer state, round.

Every algorithm of the drift-correcting family moves the global model by a
change `delta` it computes from the cohort's messages (FedAvg: the mean
client delta; FedDyn: that minus h / alpha; ...). The server applies
`-delta` as a pseudo-gradient to any optax optimizer (FedOpt, Reddi et al.
2021): SGD with learning rate 1 is `x <- x + delta` exactly, SGD with eta_g
is SCAFFOLD's server learning rate, Adam gives the adaptive variant.
"""

import numbers
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from fedjax_core.toolkit import optimizers

PyTree = Any


@flax.struct.dataclass
class ServerModel:
  """The global model x, its server optimizer state and the rounds done."""

  params: PyTree
  opt_state: optax.OptState
  round_num: jax.Array


def check_population(algorithm: str, num_clients: int) -> None:
  """Raises ValueError unless `num_clients` (the population N that an
  algorithm's server averages over) is a positive int."""
  if isinstance(num_clients, bool) or not (
      isinstance(num_clients, numbers.Integral) and num_clients >= 1):
    raise ValueError(f'{algorithm} needs num_clients a positive int, got '
                     f'{num_clients!r}.')


def init(server_optimizer: optax.GradientTransformation,
         params: PyTree) -> ServerModel:
  """The server model before round 0."""
  return ServerModel(params=params, opt_state=server_optimizer.init(params),
                     round_num=jnp.int32(0))


def apply_delta(server_optimizer: optax.GradientTransformation,
                model: ServerModel, delta: PyTree
                ) -> tuple[ServerModel, jax.Array]:
  """Moves x by `delta` through the server optimizer and counts the round.

  Returns:
    The new server model and the norm of the update actually applied.
  """
  params, opt_state, update_norm = optimizers.apply_pseudo_gradient(
      server_optimizer, model.params, model.opt_state,
      optax.tree.scale(-1.0, delta))
  return (ServerModel(params=params, opt_state=opt_state,
                      round_num=model.round_num + 1), update_norm)
