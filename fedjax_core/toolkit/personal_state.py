"""A client's personal model as the personalized algorithms store it: the
model (or the personal part of it) and whether the client has trained it.

Ditto, pFedMe and APFL keep a whole model per client, FedPer, FedRep and
LG-FedAvg the personal layers. Every client's state starts as a
placeholder (the initial value) that is not its own until it trains; until
then it is evaluated with the global model, or with whatever the algorithm
puts in its place.

Examples:
  >>> state = initial(params)           # Before the client's first round.
  >>> state = trained(new_personal)     # After it.
  >>> params = personal_or_global(state, server_params)
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

PyTree = Any


@flax.struct.dataclass
class PersonalState:
  """A client's personal model, and 1.0 once it has trained it (0.0
  before, when `personal` is a placeholder).

  Attributes:
    personal: the personal model, or its personal part.
    trained: float32 scalar, 1.0 if the client has trained, else 0.0.
  """

  personal: PyTree
  trained: jax.Array


def initial(personal: PyTree) -> PersonalState:
  """A client's state before it trains, `personal` a placeholder."""
  return PersonalState(personal=personal, trained=jnp.float32(0.0))


def trained(personal: PyTree) -> PersonalState:
  """A client's state once it has trained `personal`."""
  return PersonalState(personal=personal, trained=jnp.float32(1.0))


def personal_or_global(state: PersonalState, global_params: PyTree
                       ) -> PyTree:
  """`state.personal` if the client has trained, else `global_params`: the
  global model, or what the algorithm gives an untrained client in its
  place (of `state.personal`'s structure)."""
  return jax.tree.map(lambda v, w: jnp.where(state.trained > 0, v, w),
                      state.personal, global_params)
