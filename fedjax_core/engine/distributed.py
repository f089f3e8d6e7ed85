"""Start-up of a multi-process (multi-host) run through `jax.distributed`.

Every process runs the same program on the same host data (all of it a
function of the seed); the mesh spans every process's devices, orbax writes
checkpoints collectively, and only process 0 writes logs and metrics.
"""

import os

import jax

from fedjax_core.errors import SettingError

# Launchers under which `jax.distributed.initialize()` finds the processes
# by itself: the variable each sets, and whether its value names more than
# one process.
_CLUSTER_VARIABLES = {
    'TPU_WORKER_HOSTNAMES': lambda v: ',' in v,  # Cloud TPU pod slices.
    'MEGASCALE_COORDINATOR_ADDRESS': bool,  # Multi-slice TPU.
    'SLURM_NTASKS': lambda v: v.isdigit() and int(v) > 1,
    'OMPI_COMM_WORLD_SIZE': lambda v: v.isdigit() and int(v) > 1,
}


def in_cluster_environment() -> bool:
  """Whether a launcher (TPU pod, SLURM, Open MPI) started this process as
  one of several."""
  return any(name in os.environ and multi(os.environ[name])
             for name, multi in _CLUSTER_VARIABLES.items())


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None) -> bool:
  """Joins a multi-process run; returns whether this is one.

  With `coordinator_address` (host:port of process 0) all three must be
  given. Without any, a TPU pod, SLURM or Open MPI launch is detected from
  the environment and `jax.distributed.initialize` reads its settings there;
  otherwise the run has one process. Call it before anything starts JAX's
  backends.

  Raises:
    SettingError: the settings are incomplete or out of range.
  """
  given = {'coordinator_address': coordinator_address,
           'num_processes': num_processes, 'process_id': process_id}
  if all(v is None for v in given.values()):
    if not in_cluster_environment():
      return False
    jax.distributed.initialize()
    return True
  missing = [name for name, value in given.items() if value is None]
  if missing:
    raise SettingError(missing[0], 'A multi-process run needs '
                       'coordinator_address, num_processes and process_id; '
                       f'{", ".join(missing)} missing.')
  if num_processes < 1:
    raise SettingError('num_processes', 'num_processes must be positive, '
                       f'got {num_processes}.')
  if not 0 <= process_id < num_processes:
    raise SettingError('process_id', 'process_id must be in [0, '
                       f'num_processes={num_processes}), got {process_id}.')
  jax.distributed.initialize(coordinator_address, num_processes=num_processes,
                             process_id=process_id)
  return True
