"""Reductions over the cohort axis, the leading axis of stacked per-client
pytrees: the layer the engine's placement and the channel's stages share.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any


def _contract_clients(weights: jax.Array, x: jax.Array) -> jax.Array:
  """`sum_i weights[i] * x[i]` as a dot over the cohort axis.

  A contraction, not `jnp.sum(w * x, axis=0)`: XLA:CPU reduces over a leading
  axis about 10x slower than it runs the same sum as a dot (measured on a
  [5, 784, 200] update: 4.3 ms against 0.39 ms).
  """
  return jnp.tensordot(weights.astype(x.dtype), x, axes=1)


def reduce_sum(tree: PyTree) -> PyTree:
  """Sums every leaf over the cohort axis."""
  return jax.tree.map(
      lambda x: _contract_clients(jnp.ones(x.shape[:1], x.dtype), x), tree)


def reduce_weighted_mean(tree: PyTree, weights: jax.Array) -> PyTree:
  """`sum_i w_i x_i / sum_i w_i` over the cohort axis; 0 if all w_i are 0.

  Clients of weight 0 (padding) count as zeros even if their values are not
  finite, so an algorithm need not guard its padding clients' messages.
  """
  total = jnp.sum(weights)
  scale = jnp.where(total > 0, 1.0 / jnp.where(total > 0, total, 1.0), 0.0)
  return reduce_weighted_sum(tree, weights * scale)


def reduce_weighted_sum(tree: PyTree, weights: jax.Array) -> PyTree:
  """`sum_i w_i x_i` over the cohort axis; clients of weight 0 count as
  zeros even if their values are not finite."""

  def weighted_sum(x):
    counted = (weights > 0).reshape(weights.shape + (1,) * (x.ndim - 1))
    return _contract_clients(weights, jnp.where(counted, x, 0))

  return jax.tree.map(weighted_sum, tree)


def flatten_clients(tree: PyTree) -> tuple[jax.Array, Callable]:
  """`[cohort, d]`: each client's leaves raveled into one vector, and the
  function that turns one such `[d]` vector back into a client's tree."""
  flat = jax.vmap(lambda t: ravel_pytree(t)[0])(tree)
  _, unravel = ravel_pytree(jax.tree.map(lambda x: x[0], tree))
  return flat, unravel
