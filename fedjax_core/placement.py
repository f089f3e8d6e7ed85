"""Placement of the cohort on a device mesh with a 'clients' axis.

Clients are the leading array axis. Cohort arrays are sharded over the
mesh's 'clients' axis and model state is replicated; inside the compiled
round `map_clients` maps a per-client function over that axis and the
reductions sum over it, so XLA inserts the cross-device reductions. The same
program runs on one CPU or many accelerators; the mesh is always passed
explicitly.
"""

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec

PyTree = Any
CLIENTS_AXIS = 'clients'


def use_cpu_device_per_core(num_devices: int | None = None) -> None:
  """Splits the host CPU into `num_devices` JAX devices (default: one a core).

  XLA:CPU splits each small per-client matmul across all cores; with one
  device per core the cohort is sharded over the 'clients' axis instead and
  each core trains its own clients with its model in its own cache (about
  2x faster rounds on the `mlp` benchmark; see BUILD_NOTES.md). Call it
  before JAX starts its backends. It changes nothing on GPU or TPU.
  """
  if num_devices is None:
    num_devices = os.cpu_count() or 1
  if num_devices < 1:
    raise ValueError(f'num_devices must be positive, got {num_devices}.')
  if 'xla_force_host_platform_device_count' not in os.environ.get(
      'XLA_FLAGS', ''):
    jax.config.update('jax_num_cpu_devices', num_devices)


def client_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A one-dimensional mesh over `devices` (default: all) named 'clients'."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.array(devices), (CLIENTS_AXIS,))


def cohort_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays whose leading axis is the cohort."""
  return NamedSharding(mesh, PartitionSpec(CLIENTS_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays every device holds whole (model, data)."""
  return NamedSharding(mesh, PartitionSpec())


def map_clients(fn: Callable[..., PyTree], xs: PyTree,
                chunk_size: int | None = None) -> PyTree:
  """Maps `fn` over the leading (client) axis of every leaf of `xs`.

  Args:
    fn: per-client function of one pytree argument.
    xs: pytree whose leaves have a leading cohort axis.
    chunk_size: clients run in lockstep (vmapped); None vmaps the whole
      cohort, a smaller value runs the cohort in sequential chunks of this
      many clients (`lax.map` with `batch_size`), 1 runs clients one by one.

  Returns:
    `fn`'s outputs stacked along a leading cohort axis.
  """
  cohort = jax.tree.leaves(xs)[0].shape[0]
  if chunk_size is None or chunk_size >= cohort:
    return jax.vmap(fn)(xs)
  return jax.lax.map(fn, xs, batch_size=chunk_size)


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
