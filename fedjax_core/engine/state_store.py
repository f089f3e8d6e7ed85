"""Per-client state of the whole population, stacked along a leading
`[num_clients]` axis, with gather and scatter by client id.

Three placements (`SimulationConfig.state_store`):
  host: numpy in host memory; a round copies the cohort's rows to the
    devices and back. Device memory grows with the cohort, not the
    population.
  device: one copy on every device; gathers and scatters run on the device.
  sharded: the population's rows split over the mesh's 'clients' axis, so
    each device holds 1/N of it; XLA moves the cohort's rows.
'auto' keeps the state on the devices when it is small enough
(`resolve_state_store`).
"""

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh

from fedjax_core.engine import placement

PyTree = Any
# 'auto' keeps state of at most this share of one device's memory on the
# devices.
_AUTO_DEVICE_SHARE = 0.25


def _check_leading_axis(stacked: PyTree, num_clients: int) -> None:
  for leaf in jax.tree.leaves(stacked):
    if leaf.shape[:1] != (num_clients,):
      raise ValueError(f'state leaf of shape {leaf.shape} has no leading '
                       f'[{num_clients}] client axis.')


def _writable(x) -> np.ndarray:
  """`x` as a numpy array the store can write rows into (arrays fetched
  from a device are read-only views)."""
  if isinstance(x, np.ndarray) and x.flags.writeable:
    return x
  return np.array(x)


class ClientStateStore:
  """Host-resident stacked per-client state.

  Examples:
    >>> store = ClientStateStore.replicate({'c': np.zeros(3)}, num_clients=5)
    >>> store.scatter(np.array([1, 4]), {'c': np.ones((2, 3))})
    >>> store.gather(np.array([4]))['c'].tolist()
    [[1.0, 1.0, 1.0]]
  """

  placement = 'host'

  def __init__(self, stacked: PyTree, num_clients: int):
    _check_leading_axis(stacked, num_clients)
    self._stacked = jax.tree.map(_writable, stacked)
    self._num_clients = num_clients

  @classmethod
  def replicate(cls, one_client: PyTree,
                num_clients: int) -> 'ClientStateStore':
    """A store in which every client starts with `one_client`'s state."""
    stacked = jax.tree.map(
        lambda x: np.repeat(np.asarray(x)[None], num_clients, axis=0),
        one_client)
    return cls(stacked, num_clients)

  @property
  def num_clients(self) -> int:
    return self._num_clients

  @property
  def stacked(self) -> PyTree:
    """The whole population's state, `[num_clients, ...]` per leaf."""
    return self._stacked

  def gather(self, ids: np.ndarray) -> PyTree:
    """The rows of `ids`, stacked as `[len(ids), ...]` per leaf."""
    return jax.tree.map(lambda a: a[ids], self._stacked)

  def scatter(self, ids: np.ndarray, rows: PyTree) -> None:
    """Writes the first `len(ids)` of `rows` (`[>= len(ids), ...]` per leaf)
    back to clients `ids`."""
    rows = placement.to_host(rows)
    def write(store_leaf, row_leaf):
      store_leaf[ids] = np.asarray(row_leaf)[:len(ids)]
    jax.tree.map(write, self._stacked, rows)


def _take(stacked, ids):
  return jax.tree.map(lambda a: a[ids], stacked)


def _put(stacked, ids, rows):
  return jax.tree.map(lambda a, r: a.at[ids].set(r, mode='drop'), stacked,
                      rows)


class DeviceStateStore:
  """Device-resident stacked per-client state, whole on every device
  ('device') or split over the mesh's 'clients' axis ('sharded').

  A sharded store pads the population to a multiple of that axis with rows
  no client owns. `stacked` is the population's rows without them.
  """

  def __init__(self, stacked: PyTree, num_clients: int, mesh: Mesh,
               sharded: bool):
    _check_leading_axis(stacked, num_clients)
    self.placement = 'sharded' if sharded else 'device'
    self._num_clients = num_clients
    # Each store jits its own gather and scatter (functions of its own, so
    # no cache entry is shared). With one module-level jit for every store,
    # a full test run once got another algorithm's client-state class back
    # from the gather; two reruns did not repeat it, and the cause was not
    # found.
    self._take = jax.jit(lambda stacked, ids: _take(stacked, ids))
    # Donated, so the scatter writes in place: O(cohort), not O(population).
    self._put = jax.jit(lambda stacked, ids, rows: _put(stacked, ids, rows),
                        donate_argnums=0)
    self._cohort_sharding = placement.cohort_sharding(mesh)
    self._replicated = sharding = placement.replicated_sharding(mesh)
    pad = 0
    if sharded:
      sharding = self._cohort_sharding
      pad = -num_clients % mesh.shape[placement.CLIENTS_AXIS]
    self._stacked = placement.put(jax.tree.map(
        lambda x: np.concatenate([np.asarray(x),
                                  np.zeros((pad,) + x.shape[1:], x.dtype)]),
        placement.to_host(stacked)), sharding)

  @property
  def num_clients(self) -> int:
    return self._num_clients

  @property
  def stacked(self) -> PyTree:
    """The whole population's state, `[num_clients, ...]` per leaf."""
    return jax.tree.map(lambda a: a[:self._num_clients], self._stacked)

  def gather(self, ids: np.ndarray) -> PyTree:
    """The rows of `ids` as device arrays sharded over the cohort."""
    rows = self._take(
        self._stacked,
        placement.put(np.asarray(ids, np.int32), self._replicated))
    return jax.device_put(rows, self._cohort_sharding)

  def scatter(self, ids: np.ndarray, rows: PyTree) -> None:
    """Writes the first `len(ids)` of `rows` back to clients `ids`; the
    other rows (padding clients) are dropped."""
    if not jax.tree.leaves(rows):  # A stateless algorithm.
      return
    cohort = jax.tree.leaves(rows)[0].shape[0]
    # Out-of-range ids are dropped: one compile whatever len(ids) is.
    padded = np.full(cohort, np.iinfo(np.int32).max, np.int32)
    padded[:len(ids)] = ids
    self._stacked = self._put(self._stacked,
                              placement.put(padded, self._replicated), rows)


def resolve_state_store(state_store: str, one_client: PyTree,
                        num_clients: int, mesh: Mesh) -> str:
  """The placement `state_store` stands for.

  'auto' is 'device' when the population's state takes at most a quarter of
  one device's memory, else 'sharded' when each device's share of it does
  (a mesh of more than one device on the 'clients' axis), else 'host'.
  """
  if state_store != 'auto':
    return state_store
  total = num_clients * sum(np.asarray(x).nbytes
                            for x in jax.tree.leaves(one_client))
  budget = _AUTO_DEVICE_SHARE * _device_bytes()
  if total <= budget:
    return 'device'
  if total / mesh.shape[placement.CLIENTS_AXIS] <= budget:
    return 'sharded'
  return 'host'


def _device_bytes() -> int:
  """Memory of one of this process's devices; on CPU, the host's memory
  split between them."""
  stats = jax.local_devices()[0].memory_stats()
  if stats and 'bytes_limit' in stats:
    return stats['bytes_limit']
  host = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  return host // len(jax.local_devices())


def make_store(placement_name: str, stacked: PyTree, num_clients: int,
               mesh: Mesh):
  """A store of `stacked` with the placement 'host', 'device' or
  'sharded'."""
  if placement_name == 'host':
    return ClientStateStore(stacked, num_clients)
  return DeviceStateStore(stacked, num_clients, mesh,
                          sharded=placement_name == 'sharded')
