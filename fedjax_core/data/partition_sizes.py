"""Client sizes and argument checks shared by the partition schemes
(`fedjax_core.data.partition`, `fedjax_core.data.label_partitions`)."""

import numpy as np

from fedjax_core.data.client_indices import ClientIndices


def check_num_clients(num_clients: int, num_examples: int):
  """Raises ValueError unless 1 <= num_clients <= num_examples."""
  if num_clients < 1:
    raise ValueError(f'num_clients must be >= 1, got {num_clients}.')
  if num_clients > num_examples:
    raise ValueError(
        f'num_clients={num_clients} exceeds the {num_examples} examples; use '
        f'at most {num_examples} clients.')


def check_size_sigma(size_sigma: float):
  """Raises ValueError unless the lognormal size spread is >= 0."""
  if size_sigma < 0:
    raise ValueError(f'size_sigma must be >= 0, got {size_sigma}; use 0 for '
                     'equal client sizes.')


def check_min_client_size(min_client_size: int, num_clients: int,
                          num_examples: int):
  """Raises ValueError unless every client can hold `min_client_size`
  examples."""
  if min_client_size < 0 or min_client_size * num_clients > num_examples:
    raise ValueError(
        f'min_client_size={min_client_size} is impossible for {num_clients} '
        f'clients and {num_examples} examples; it must lie in '
        f'[0, {num_examples // num_clients}].')


def even_sizes(total: int, parts: int) -> np.ndarray:
  """The part sizes of `np.array_split(range(total), parts)`."""
  sizes = np.full(parts, total // parts, np.int64)
  sizes[:total % parts] += 1
  return sizes


def cut(order: np.ndarray, sizes: np.ndarray) -> ClientIndices:
  """Client `i` gets the next `sizes[i]` entries of `order`."""
  client_of_row = np.empty(len(order), np.int64)
  client_of_row[order] = np.repeat(np.arange(len(sizes)), sizes)
  return ClientIndices.from_assignment(client_of_row, len(sizes))
