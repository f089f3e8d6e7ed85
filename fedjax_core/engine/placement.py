"""Placement of the cohort on a device mesh with a 'clients' axis.

Clients are the leading array axis. Cohort arrays are sharded over the
mesh's 'clients' axis and model state is replicated; inside the compiled
round `map_clients` maps a per-client function over that axis (vmapped
whole, or per device in chunks) and the reductions sum over it, so XLA
inserts the cross-device reductions. The same program runs on one CPU, many
accelerators or several processes (`put` and `to_host` move host data in
and out of arrays that span them); the mesh is always passed explicitly.
"""

import functools
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# The cohort reductions, re-exported for the engine and its users.
from fedjax_core.cohort import flatten_clients
from fedjax_core.cohort import reduce_sum
from fedjax_core.cohort import reduce_weighted_mean
from fedjax_core.cohort import reduce_weighted_sum
from fedjax_core.errors import SettingError

PyTree = Any
CLIENTS_AXIS = 'clients'
MODEL_AXIS = 'model'


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


def parse_mesh_shape(text: str | None, num_devices: int) -> tuple[int, int]:
  """`(clients, model)` axis sizes from `--mesh_shape`.

  'N' puts N devices on the 'clients' axis, 'N,M' adds a 'model' axis of M
  (state is replicated over it for now); None or '' puts every device on
  'clients'. The product must equal the device count.
  """
  if not text:
    return num_devices, 1
  try:
    sizes = tuple(int(part) for part in text.split(','))
  except ValueError:
    sizes = ()
  if len(sizes) not in (1, 2) or min(sizes) < 1:
    raise SettingError('mesh_shape', f'mesh_shape {text!r} is not "CLIENTS" '
                       'or "CLIENTS,MODEL" with positive integers, e.g. "8" '
                       'or "4,2".')
  clients, model = sizes if len(sizes) == 2 else (sizes[0], 1)
  if clients * model != num_devices:
    raise SettingError(
        'mesh_shape',
        f'mesh_shape {text!r} has {clients * model} devices but JAX has '
        f'{num_devices}; make the product equal {num_devices}.')
  return clients, model


def build_mesh(text: str | None = None,
               devices: list[jax.Device] | None = None) -> Mesh:
  """The mesh `--mesh_shape` describes over `devices` (default: all): a
  'clients' axis, plus a 'model' axis when one is asked for."""
  devices = jax.devices() if devices is None else devices
  clients, model = parse_mesh_shape(text, len(devices))
  if model == 1:
    return client_mesh(devices)
  return Mesh(np.array(devices).reshape(clients, model),
              (CLIENTS_AXIS, MODEL_AXIS))


def cohort_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays whose leading axis is the cohort."""
  return NamedSharding(mesh, PartitionSpec(CLIENTS_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays every device holds whole (model, data)."""
  return NamedSharding(mesh, PartitionSpec())


def put(tree: PyTree, sharding: NamedSharding) -> PyTree:
  """`tree`'s host arrays as global arrays with `sharding`.

  Every process holds the same host values (everything is a function of
  the seed), so in a multi-process run each builds its own devices' shards
  from them; `jax.device_put` would first gather every value across the
  processes to check that they agree.
  """
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def global_array(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return jax.device_put(x, sharding)  # Already global.
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(
          global_array(jax.random.key_data(x)),
          impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding,
                                        lambda index: x[index])

  return jax.tree.map(global_array, tree)


def to_host(tree: PyTree) -> PyTree:
  """`tree`'s arrays as numpy arrays on every process; arrays sharded over
  other processes' devices are gathered (a collective: every process must
  call it)."""
  def fetch(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)

  return jax.tree.map(fetch, tree)


def is_main_process() -> bool:
  """Whether this process writes logs, metrics and summaries (process 0 of
  a multi-process run; checkpoints are written by all, through orbax)."""
  return jax.process_index() == 0


def map_clients(fn: Callable[..., PyTree], xs: PyTree,
                clients_in_parallel: int | None = None,
                mesh: Mesh | None = None, unroll: bool = False,
                shared: PyTree = None) -> PyTree:
  """Maps `fn` over the leading (client) axis of every leaf of `xs`.

  Args:
    fn: per-client function of one pytree argument, or of `(shared, x)`
      when `shared` is given.
    xs: pytree whose leaves have a leading cohort axis.
    clients_in_parallel: clients each device runs in lockstep (vmapped).
      None vmaps the whole cohort (sharded by XLA over the mesh). A number
      runs each device's share of the cohort (`shard_map` over the mesh's
      'clients' axis) in chunks of this many clients, one chunk after
      another; 1 runs a device's clients one by one.
    mesh: the mesh the cohort is sharded over; needed to chunk per device
      on more than one device.
    unroll: run the chunks as straight-line code rather than a `lax.map`
      loop (XLA:CPU runs convolutions inside loops slowly).
    shared: arrays every client reads whole (model, data). Pass them here
      rather than closing over them: every device then gets them whole.

  Returns:
    `fn`'s outputs stacked along a leading cohort axis.
  """
  with_shared = fn if shared is not None else (lambda _, x: fn(x))
  if clients_in_parallel is None:
    return jax.vmap(functools.partial(with_shared, shared))(xs)

  def per_device(shared, xs):
    one = functools.partial(with_shared, shared)
    cohort = jax.tree.leaves(xs)[0].shape[0]
    if clients_in_parallel >= cohort:
      return jax.vmap(one)(xs)
    if not unroll:
      return jax.lax.map(one, xs, batch_size=clients_in_parallel)
    chunks = [jax.vmap(one)(jax.tree.map(
        lambda x: x[start:start + clients_in_parallel], xs))
              for start in range(0, cohort, clients_in_parallel)]
    return jax.tree.map(lambda *c: jnp.concatenate(c), *chunks)

  if mesh is None or mesh.shape[CLIENTS_AXIS] == 1:
    return per_device(shared, xs)
  spec = PartitionSpec(CLIENTS_AXIS)
  return jax.shard_map(per_device, mesh=mesh,
                       in_specs=(PartitionSpec(), spec), out_specs=spec,
                       check_vma=False)(shared, xs)
