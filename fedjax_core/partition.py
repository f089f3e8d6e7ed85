"""Seeded partitions of a training set into disjoint client shards.

Every function is pure: it draws all randomness from
`np.random.default_rng(seed)`, so the same arguments give the same clients.
Each returns one sorted int64 index array per client; together the arrays are
disjoint and cover every example.

`dirichlet_partition` is the label-skew scheme of Hsu, Qi and Brown, 2019,
"Measuring the Effects of Non-Identical Data Distribution for Federated
Visual Classification" (arXiv:1909.06335).
"""

import numpy as np

_MAX_DIRICHLET_TRIES = 1000


def _check_num_clients(num_clients: int, num_examples: int):
  if num_clients < 1:
    raise ValueError(f'num_clients must be >= 1, got {num_clients}.')
  if num_clients > num_examples:
    raise ValueError(
        f'num_clients={num_clients} exceeds the {num_examples} examples; use '
        f'at most {num_examples} clients.')


def _sorted_shards(shards) -> tuple[np.ndarray, ...]:
  return tuple(np.sort(np.asarray(s, np.int64)) for s in shards)


def iid_partition(num_examples: int, num_clients: int,
                  seed: int) -> tuple[np.ndarray, ...]:
  """Shuffles the examples and splits them as evenly as possible.

  Args:
    num_examples: size of the training set.
    num_clients: number of shards; client sizes differ by at most one.
    seed: seed of the shuffle.

  Returns:
    `num_clients` sorted int64 index arrays into `range(num_examples)`.

  Raises:
    ValueError: if `num_clients` is not in `[1, num_examples]`.
  """
  _check_num_clients(num_clients, num_examples)
  order = np.random.default_rng(seed).permutation(num_examples)
  return _sorted_shards(np.array_split(order, num_clients))


def _dirichlet_draw(rng: np.random.Generator, class_indices, num_clients: int,
                    alpha: float) -> list[list[np.ndarray]]:
  """Splits each class's shuffled examples by proportions ~ Dir(alpha)."""
  shards = [[] for _ in range(num_clients)]
  for indices in class_indices:
    indices = rng.permutation(indices)
    proportions = rng.dirichlet(np.full(num_clients, alpha))
    cuts = (np.cumsum(proportions)[:-1] * len(indices)).astype(np.int64)
    for shard, part in zip(shards, np.split(indices, cuts)):
      shard.append(part)
  return shards


def dirichlet_partition(labels: np.ndarray, num_clients: int, alpha: float,
                        seed: int,
                        min_client_size: int = 1) -> tuple[np.ndarray, ...]:
  """Label-skewed partition of Hsu et al. (2019).

  For each class, proportions `p ~ Dir(alpha * 1_num_clients)` are drawn and
  the class's shuffled examples are cut at `cumsum(p) * class_size`. Small
  `alpha` gives clients dominated by few classes; large `alpha` approaches the
  global class mix. The whole draw is repeated (continuing the same random
  stream) until every client holds at least `min_client_size` examples.

  Args:
    labels: `[num_examples]` integer class labels.
    num_clients: number of shards.
    alpha: Dirichlet concentration per client, > 0.
    seed: seed of the shuffles and proportions.
    min_client_size: minimum examples per client.

  Returns:
    `num_clients` sorted int64 index arrays into `labels`.

  Raises:
    ValueError: on invalid arguments, or if no draw within 1000 tries gives
      every client `min_client_size` examples.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'labels must be 1-D, got shape {labels.shape}.')
  num_examples = len(labels)
  _check_num_clients(num_clients, num_examples)
  if alpha <= 0:
    raise ValueError(
        f'alpha must be > 0, got {alpha}; use e.g. 0.1 for strong label skew '
        'or 100 for near-IID clients.')
  if min_client_size < 0 or min_client_size * num_clients > num_examples:
    raise ValueError(
        f'min_client_size={min_client_size} is impossible for {num_clients} '
        f'clients and {num_examples} examples; it must lie in '
        f'[0, {num_examples // num_clients}].')
  class_indices = [np.flatnonzero(labels == c) for c in np.unique(labels)]
  rng = np.random.default_rng(seed)
  for _ in range(_MAX_DIRICHLET_TRIES):
    shards = [np.concatenate(parts) for parts in
              _dirichlet_draw(rng, class_indices, num_clients, alpha)]
    if min(len(s) for s in shards) >= min_client_size:
      return _sorted_shards(shards)
  raise ValueError(
      f'dirichlet_partition: no draw in {_MAX_DIRICHLET_TRIES} tries gave all '
      f'{num_clients} clients at least {min_client_size} examples; alpha='
      f'{alpha} is too small or there are too many clients for the '
      f'{num_examples} examples. Use a larger alpha or fewer clients.')
