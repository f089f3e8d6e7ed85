"""The placement flags shared by `scripts.train` and `scripts.benchmark`:
the mesh, the loop strategy, clients in lockstep and the state store."""

import functools

from absl import flags
import jax

from fedjax_core import placement
from fedjax_core import simulation

_LOOP = flags.DEFINE_enum(
    'loop', 'auto', simulation.LOOPS,
    'Loop over local steps and client chunks: scan (rolled), unroll '
    '(straight-line code), or auto (unroll convolutional models on CPU, '
    'scan otherwise).')
_CLIENTS_IN_PARALLEL = flags.DEFINE_integer(
    'clients_in_parallel', None, 'Clients each device trains in lockstep '
    '(vmap width); its other clients follow chunk by chunk. Default: 1 for '
    'convolutional models on CPU, else the whole cohort.')
_STATE_STORE = flags.DEFINE_enum(
    'state_store', 'auto', simulation.STATE_STORES,
    'Where the clients\' persistent state lives: host (numpy), device '
    '(whole on every device), sharded (split over the devices), or auto '
    '(on the devices while it takes at most a quarter of their memory).')
_MESH_SHAPE = flags.DEFINE_string(
    'mesh_shape', None, 'Devices on the mesh\'s axes: "CLIENTS" or '
    '"CLIENTS,MODEL" (the model axis replicates, for now); default: every '
    'device on the clients axis.')


def settings() -> dict:
  """The `SimulationConfig` fields these flags set."""
  return dict(loop=_LOOP.value,
              clients_in_parallel=_CLIENTS_IN_PARALLEL.value,
              state_store=_STATE_STORE.value)


@functools.cache
def mesh() -> jax.sharding.Mesh:
  """The device mesh of --mesh_shape; raises ValueError on a bad one."""
  return placement.build_mesh(_MESH_SHAPE.value)
