"""Which training rows each client owns, as two flat arrays.

A population of 100,000 clients must not cost 100,000 Python objects: the
rows of all clients are stored back to back (`rows`) with `offsets` marking
where each client's rows start, the compressed-sparse-row layout. Looking up
one client is a slice; building, splitting and summarizing are vectorized.
"""

from collections.abc import Iterator, Sequence

import numpy as np


class ClientIndices:
  """Client id -> sorted int64 row indices, in compressed-sparse-row form.

  Client `i` owns `rows[offsets[i]:offsets[i + 1]]`.

  Examples:
    >>> clients = ClientIndices.from_assignment(np.array([1, 0, 1]), 2)
    >>> clients[1].tolist(), clients.sizes.tolist()
    ([0, 2], [1, 2])
  """

  def __init__(self, rows: np.ndarray, offsets: np.ndarray):
    rows = np.asarray(rows, np.int64)
    offsets = np.asarray(offsets, np.int64)
    if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0:
      raise ValueError('offsets must be a 1-D array starting at 0.')
    if np.any(np.diff(offsets) < 0) or offsets[-1] != len(rows):
      raise ValueError(
          f'offsets must be non-decreasing and end at len(rows)={len(rows)}.')
    self.rows = rows
    self.offsets = offsets

  @classmethod
  def from_assignment(cls, client_of_row: np.ndarray,
                      num_clients: int) -> 'ClientIndices':
    """Row `j` goes to client `client_of_row[j]`; rows ascend per client."""
    client_of_row = np.asarray(client_of_row, np.int64)
    if client_of_row.size and (client_of_row.min() < 0 or
                               client_of_row.max() >= num_clients):
      raise ValueError(f'client ids must lie in [0, {num_clients}).')
    n = len(client_of_row)
    # Sorting the keys client * n + row is a stable sort by client, several
    # times faster than a stable argsort (BUILD_NOTES.md).
    rows = np.sort(client_of_row * n + np.arange(n)) % max(n, 1)
    counts = np.bincount(client_of_row, minlength=num_clients)
    return cls(rows, np.concatenate([[0], np.cumsum(counts)]))

  @classmethod
  def from_lists(cls, per_client: Sequence[np.ndarray]) -> 'ClientIndices':
    """From one row array per client (each is sorted)."""
    sizes = [len(r) for r in per_client]
    rows = (np.concatenate([np.sort(np.asarray(r, np.int64))
                            for r in per_client])
            if per_client else np.zeros(0, np.int64))
    return cls(rows, np.concatenate([[0], np.cumsum(sizes)]))

  def __len__(self) -> int:
    return len(self.offsets) - 1

  def __getitem__(self, client: int) -> np.ndarray:
    return self.rows[self.offsets[client]:self.offsets[client + 1]]

  def __iter__(self) -> Iterator[np.ndarray]:
    return (self[i] for i in range(len(self)))

  @property
  def sizes(self) -> np.ndarray:
    """`[num_clients]` int64 number of rows per client."""
    return np.diff(self.offsets)

  def client_of_row(self) -> np.ndarray:
    """`[len(rows)]` the client of each entry of `rows`."""
    return np.repeat(np.arange(len(self)), self.sizes)

  def select(self, clients: np.ndarray) -> 'ClientIndices':
    """The rows of `clients` only, as clients 0 to len(clients) - 1."""
    clients = np.asarray(clients, np.int64)
    sizes = self.sizes[clients]
    rows = (np.concatenate([self[i] for i in clients]) if len(clients)
            else np.zeros(0, np.int64))
    return ClientIndices(rows, np.concatenate([[0], np.cumsum(sizes)]))

  def hold_out(self, fraction: float,
               seed: int) -> tuple['ClientIndices', 'ClientIndices']:
    """Splits every client's rows into (kept, held out).

    Client `i` holds out `floor(fraction * n_i)` of its rows, drawn at
    random, but always keeps at least one (LEAF's per-user test split).

    Args:
      fraction: share of each client's rows to hold out, in [0, 1).
      seed: seed of the draw.

    Returns:
      The kept rows and the held-out rows, both per client.
    """
    if not 0 <= fraction < 1:
      raise ValueError(f'the held-out fraction must be in [0, 1), got '
                       f'{fraction}.')
    sizes = self.sizes
    held = np.minimum(np.floor(fraction * sizes).astype(np.int64),
                      np.maximum(sizes - 1, 0))
    client = self.client_of_row()
    noise = np.random.default_rng(seed).random(len(self.rows))
    is_held = random_ranks(client, self.offsets, noise) < held[client]
    return (_select(self.rows, client, ~is_held, len(self)),
            _select(self.rows, client, is_held, len(self)))


def random_ranks(client: np.ndarray, starts: np.ndarray,
                 noise: np.ndarray) -> np.ndarray:
  """Each entry's rank among its client's entries in the order of `noise`
  (a shuffle within each client).

  Args:
    client: `[n]` int client of each entry, in `[0, len(starts))`.
    starts: where each client's entries would start if sorted by client
      (the cumulative sizes, as `ClientIndices.offsets`).
    noise: `[n]` random keys.

  Returns:
    `[n]` int64 ranks, `0..size - 1` within each client.
  """
  order = np.lexsort((noise, client))
  rank = np.empty(len(order), np.int64)
  rank[order] = np.arange(len(order)) - starts[client[order]]
  return rank


def _select(rows: np.ndarray, client: np.ndarray, keep: np.ndarray,
            num_clients: int) -> ClientIndices:
  """The entries of `rows` where `keep`, still grouped by `client`."""
  counts = np.bincount(client[keep], minlength=num_clients)
  return ClientIndices(rows[keep], np.concatenate([[0], np.cumsum(counts)]))
