"""Per-client state of the whole population as a stacked host pytree.

Each leaf has a leading `[num_clients]` axis and lives in host memory
(numpy), so device memory grows with the cohort, not the population. A round
gathers the cohort's rows and scatters the updated rows back.
"""

from typing import Any

import jax
import numpy as np

PyTree = Any


class ClientStateStore:
  """Stacked per-client state with gather and scatter by client id.

  Examples:
    >>> store = ClientStateStore.replicate({'c': np.zeros(3)}, num_clients=5)
    >>> store.scatter(np.array([1, 4]), {'c': np.ones((2, 3))})
    >>> store.gather(np.array([4]))['c'].tolist()
    [[1.0, 1.0, 1.0]]
  """

  def __init__(self, stacked: PyTree, num_clients: int):
    for leaf in jax.tree.leaves(stacked):
      if leaf.shape[:1] != (num_clients,):
        raise ValueError(f'state leaf of shape {leaf.shape} has no leading '
                         f'[{num_clients}] client axis.')
    self._stacked = stacked
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
    """Writes `rows` (`[len(ids), ...]` per leaf) back to clients `ids`."""
    def write(store_leaf, row_leaf):
      store_leaf[ids] = np.asarray(row_leaf)
    jax.tree.map(write, self._stacked, rows)
