"""Leaves stacked on a leading node axis, as gossip mixes them: their
compute dtype, their checks, per-node weights broadcast against them."""

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
# The mesh axis the nodes are sharded over (`engine.placement.CLIENTS_AXIS`;
# re-declared because the channel does not import the engine).
CLIENTS_AXIS = 'clients'


def compute_dtype(dtype) -> jnp.dtype:
  return jnp.promote_types(dtype, jnp.float32)


def check_floating(tree: PyTree) -> None:
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    if not jnp.issubdtype(x.dtype, jnp.inexact):
      raise TypeError(
          f'Gossip mixes floating-point leaves only; leaf '
          f'{jax.tree_util.keystr(path)} has dtype {x.dtype}. Mix the model '
          'parameters, not counters or keys.')


def num_nodes(tree: PyTree) -> int:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise ValueError('Gossip needs a pytree with at least one leaf.')
  return leaves[0].shape[0]


def per_node(w: jax.Array, x: jax.Array) -> jax.Array:
  """`w`, `[N]` or `[rows, cols]`, broadcast against the node axes of `x`."""
  return w.reshape(w.shape + (1,) * (x.ndim - w.ndim)).astype(x.dtype)
