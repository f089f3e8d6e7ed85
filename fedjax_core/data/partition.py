"""Seeded partitions of a training set into disjoint clients.

Every function is pure: it draws all randomness from
`np.random.default_rng(seed)`, so the same arguments give the same clients.
Each returns a `ClientIndices` whose rows ascend within every client and
which holds every example exactly once. All are vectorized over examples and
clients except `dirichlet_equal_partition`, which deals examples one by one.

Schemes (`make_partition` dispatches on `PARTITION_NAMES`):
  * 'iid': a shuffle cut into equal parts.
  * 'dirichlet': the label skew of Hsu, Qi and Brown, 2019, "Measuring the
    Effects of Non-Identical Data Distribution for Federated Visual
    Classification" (arXiv:1909.06335): every class is split across clients
    in Dir(alpha) proportions, so client sizes vary.
  * 'dirichlet_equal': the form of Acar et al., 2021, "Federated Learning
    Based on Dynamic Regularization" (FedDyn, arXiv:2111.04263), also used
    by FL-Simulator: clients of set sizes (equal, or lognormal with
    `size_sigma`) each draw their examples' classes from a Dir(alpha) prior.
  * 'pathological': the label-sorted shards of McMahan et al., 2017,
    "Communication-Efficient Learning of Deep Networks from Decentralized
    Data" (arXiv:1602.05629).
  * 'quantity_skew': IID labels with lognormal client sizes (the unbalanced
    setting of Acar et al., 2021; see Li et al., 2022, "Federated Learning on
    Non-IID Data Silos: An Experimental Study", arXiv:2102.02079).
  * 'natural': clients are the groups of a natural key such as the writer or
    device of each row, as in LEAF (Caldas et al., 2018, arXiv:1812.01097).
"""

import bisect

import numpy as np

from fedjax_core import targets
from fedjax_core.data.client_indices import ClientIndices
from fedjax_core.errors import SettingError

PARTITION_NAMES = ('iid', 'dirichlet', 'dirichlet_equal', 'pathological',
                   'quantity_skew', 'natural')

# The partitions that split by class label (the others need only a count).
_BY_LABEL = ('dirichlet', 'dirichlet_equal', 'pathological')
_MAX_DIRICHLET_TRIES = 1000


def _check_labels(labels) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'labels must be 1-D, one per example, got shape '
                     f'{labels.shape}; flatten them first.')
  return labels


def _check_num_clients(num_clients: int, num_examples: int):
  if num_clients < 1:
    raise ValueError(f'num_clients must be >= 1, got {num_clients}.')
  if num_clients > num_examples:
    raise ValueError(
        f'num_clients={num_clients} exceeds the {num_examples} examples; use '
        f'at most {num_examples} clients.')


def check_alpha(alpha: float) -> None:
  """Raises ValueError unless the Dirichlet concentration is positive."""
  if not alpha > 0:
    raise ValueError(
        f'alpha must be > 0, got {alpha}; use e.g. 0.1 for strong label skew '
        'or 100 for near-IID clients.')


def _check_size_sigma(size_sigma: float):
  if size_sigma < 0:
    raise ValueError(f'size_sigma must be >= 0, got {size_sigma}; use 0 for '
                     'equal client sizes.')


def _check_min_client_size(min_client_size: int, num_clients: int,
                           num_examples: int):
  if min_client_size < 0 or min_client_size * num_clients > num_examples:
    raise ValueError(
        f'min_client_size={min_client_size} is impossible for {num_clients} '
        f'clients and {num_examples} examples; it must lie in '
        f'[0, {num_examples // num_clients}].')


def _even_sizes(total: int, parts: int) -> np.ndarray:
  """The part sizes of `np.array_split(range(total), parts)`."""
  sizes = np.full(parts, total // parts, np.int64)
  sizes[:total % parts] += 1
  return sizes


def _cut(order: np.ndarray, sizes: np.ndarray) -> ClientIndices:
  """Client `i` gets the next `sizes[i]` entries of `order`."""
  client_of_row = np.empty(len(order), np.int64)
  client_of_row[order] = np.repeat(np.arange(len(sizes)), sizes)
  return ClientIndices.from_assignment(client_of_row, len(sizes))


def iid_partition(num_examples: int, num_clients: int,
                  seed: int) -> ClientIndices:
  """Shuffles the examples and splits them as evenly as possible.

  Client `i` gets the `i`-th part of `np.array_split` of the shuffle, so
  sizes differ by at most one and the larger clients come first.

  Args:
    num_examples: size of the training set.
    num_clients: number of clients.
    seed: seed of the shuffle.

  Returns:
    The rows of each client.

  Raises:
    ValueError: if `num_clients` is not in `[1, num_examples]`.
  """
  _check_num_clients(num_clients, num_examples)
  order = np.random.default_rng(seed).permutation(num_examples)
  return _cut(order, _even_sizes(num_examples, num_clients))


def dirichlet_partition(labels: np.ndarray, num_clients: int, alpha: float,
                        seed: int, min_client_size: int = 1) -> ClientIndices:
  """Label-skewed partition of Hsu et al. (2019), with unequal sizes.

  For each class in sorted order, its examples are shuffled, proportions
  `p ~ Dir(alpha * 1_num_clients)` are drawn and the shuffle is cut at
  `floor(cumsum(p) * class_size)`. Small `alpha` gives clients dominated by
  few classes; large `alpha` approaches the global class mix. The whole draw
  is repeated (continuing the same random stream) until every client holds
  at least `min_client_size` examples.

  Args:
    labels: `[num_examples]` class labels.
    num_clients: number of clients.
    alpha: Dirichlet concentration per client, > 0.
    seed: seed of the shuffles and proportions.
    min_client_size: minimum examples per client.

  Returns:
    The rows of each client.

  Raises:
    ValueError: on invalid arguments, or if no draw within 1000 tries gives
      every client `min_client_size` examples.
  """
  labels = _check_labels(labels)
  num_examples = len(labels)
  _check_num_clients(num_clients, num_examples)
  check_alpha(alpha)
  _check_min_client_size(min_client_size, num_clients, num_examples)
  class_sizes = np.unique(labels, return_counts=True)[1]
  by_class = np.split(np.argsort(labels, kind='stable'),
                      np.cumsum(class_sizes)[:-1])
  rng = np.random.default_rng(seed)
  client_of_row = np.empty(num_examples, np.int64)
  for _ in range(_MAX_DIRICHLET_TRIES):
    for rows in by_class:
      rows = rng.permutation(rows)
      proportions = rng.dirichlet(np.full(num_clients, alpha))
      cuts = (np.cumsum(proportions)[:-1] * len(rows)).astype(np.int64)
      client_of_row[rows] = np.searchsorted(cuts, np.arange(len(rows)),
                                            'right')
    if np.bincount(client_of_row,
                   minlength=num_clients).min() >= min_client_size:
      return ClientIndices.from_assignment(client_of_row, num_clients)
  raise ValueError(
      f'dirichlet_partition: no draw in {_MAX_DIRICHLET_TRIES} tries gave all '
      f'{num_clients} clients at least {min_client_size} examples; alpha='
      f'{alpha} is too small or there are too many clients for the '
      f'{num_examples} examples. Use a larger alpha or fewer clients.')


def _deal(sizes: np.ndarray, priors: np.ndarray, class_sizes: np.ndarray,
          u_client: np.ndarray,
          u_class: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The (client, class) of each deal of `dirichlet_equal_partition`.

  Deal `i` goes to the open client `int(u_client[i] * num_open)` (swap-
  removed when full), which picks its class by inverting `u_class[i]` on the
  cumulative prior over the classes left. A client's cumulative prior is
  rebuilt, lazily, only when classes ran out since it was last used.
  """
  num_classes = len(class_sizes)
  capacity = sizes.tolist()
  open_clients = np.flatnonzero(sizes).tolist()
  left = class_sizes.tolist()
  alive = np.ones(num_classes)
  cumulative = np.cumsum(priors, axis=1).tolist()
  version = [0] * len(sizes)  # Classes exhausted when `cumulative` was built.
  exhausted = 0
  clients, classes = [], []
  for uc, uk in zip(u_client.tolist(), u_class.tolist(), strict=True):
    j = int(uc * len(open_clients))
    client = open_clients[j]
    capacity[client] -= 1
    if not capacity[client]:
      open_clients[j] = open_clients[-1]
      open_clients.pop()
    if version[client] != exhausted:
      cumulative[client] = np.cumsum(priors[client] * alive).tolist()
      version[client] = exhausted
    row = cumulative[client]
    k = bisect.bisect_right(row, uk * row[-1])
    if k == num_classes:  # `uk * row[-1]` rounded up, or no mass is left.
      k = (bisect.bisect_left(row, row[-1]) if row[-1] > 0 else
           int(np.flatnonzero(alive)[int(uk * (num_classes - exhausted))]))
    left[k] -= 1
    if not left[k]:
      alive[k] = 0.0
      exhausted += 1
    clients.append(client)
    classes.append(k)
  return np.array(clients, np.int64), np.array(classes, np.int64)


def dirichlet_equal_partition(labels: np.ndarray, num_clients: int,
                              alpha: float, seed: int,
                              size_sigma: float = 0.0) -> ClientIndices:
  """Label skew with set client sizes: the FedDyn / FL-Simulator form.

  As in the 'Dirichlet' rule of Acar et al. (2021)'s code and FL-Simulator:
  client sizes are `n // num_clients` (`size_sigma=0`) or proportional to
  `lognormal(log(n / num_clients), size_sigma)` draws and floored (their
  `unbalanced_sgm`); the shortfall to `n` goes to the first client (an
  excess, from rounding, is taken from the first client that can spare it).
  Every client draws class priors `Dir(alpha * 1_num_classes)`. Examples are
  then dealt one at a time: a uniformly random client with room left draws a
  class from its prior renormalized over the classes not yet exhausted (the
  originals' redraw loop in distribution, which cannot spin here) and gets a
  random remaining example of it. A client whose prior has no mass left
  draws uniformly among the remaining classes.

  Cost: the deal is a Python loop over examples, about 1.5 us each (0.074 s
  for 50,000 labels of 10 classes and 100 clients in `python -m
  scripts.benchmark --workload=cohort_assembly`, BUILD_NOTES.md), plus
  O(num_classes) per client for each class exhausted since that client was
  last dealt to.

  Args:
    labels: `[num_examples]` class labels.
    num_clients: number of clients.
    alpha: Dirichlet concentration of each client's class prior, > 0.
    seed: seed of the sizes, priors and deal.
    size_sigma: lognormal sigma of the client sizes; 0 for equal sizes.
      Large values with few examples per client can leave clients empty.

  Returns:
    The rows of each client.

  Raises:
    ValueError: on invalid arguments.
  """
  labels = _check_labels(labels)
  num_examples = len(labels)
  _check_num_clients(num_clients, num_examples)
  check_alpha(alpha)
  _check_size_sigma(size_sigma)
  rng = np.random.default_rng(seed)
  if size_sigma:
    weights = rng.lognormal(np.log(num_examples / num_clients), size_sigma,
                            num_clients)
    sizes = (weights / weights.sum() * num_examples).astype(np.int64)
  else:
    sizes = np.full(num_clients, num_examples // num_clients, np.int64)
  excess = sizes.sum() - num_examples
  sizes[np.argmax(sizes > excess)] -= excess
  label_ids = np.unique(labels, return_inverse=True)[1]
  class_sizes = np.bincount(label_ids)
  priors = rng.dirichlet(np.full(len(class_sizes), alpha), num_clients)
  shuffled = rng.permutation(num_examples)
  by_class = shuffled[np.argsort(label_ids[shuffled], kind='stable')]
  u_client, u_class = rng.random((2, num_examples))
  clients, classes = _deal(sizes, priors, class_sizes, u_client, u_class)
  # The t-th deal of class k takes the t-th of its shuffled examples.
  client_of_row = np.empty(num_examples, np.int64)
  client_of_row[by_class] = clients[np.argsort(classes, kind='stable')]
  return ClientIndices.from_assignment(client_of_row, num_clients)


def pathological_partition(labels: np.ndarray, num_clients: int,
                           classes_per_client: int,
                           seed: int) -> ClientIndices:
  """Label-sorted shards of McMahan et al. (2017).

  The examples are sorted by label (ties in a random order) and cut into
  `num_clients * classes_per_client` shards of sizes differing by at most
  one; each client gets `classes_per_client` random shards. Where shards do
  not straddle class boundaries, a client sees at most `classes_per_client`
  classes.

  Args:
    labels: `[num_examples]` class labels.
    num_clients: number of clients.
    classes_per_client: shards per client, in `[1, num_classes]`.
    seed: seed of the tie order and of the shard deal.

  Returns:
    The rows of each client.

  Raises:
    ValueError: on invalid arguments, or fewer examples than shards.
  """
  labels = _check_labels(labels)
  num_examples = len(labels)
  _check_num_clients(num_clients, num_examples)
  num_classes = len(np.unique(labels))
  if not 1 <= classes_per_client <= num_classes:
    raise ValueError(
        f'classes_per_client must be in [1, {num_classes}] (the number of '
        f'classes), got {classes_per_client}.')
  num_shards = num_clients * classes_per_client
  if num_shards > num_examples:
    raise ValueError(
        f'{num_clients} clients x {classes_per_client} shards need at least '
        f'{num_shards} examples, got {num_examples}; use fewer clients or '
        'classes per client.')
  rng = np.random.default_rng(seed)
  shuffled = rng.permutation(num_examples)
  by_label = shuffled[np.argsort(labels[shuffled], kind='stable')]
  client_of_shard = np.empty(num_shards, np.int64)
  client_of_shard[rng.permutation(num_shards)] = (
      np.arange(num_shards) // classes_per_client)
  client_of_row = np.empty(num_examples, np.int64)
  client_of_row[by_label] = np.repeat(client_of_shard,
                                      _even_sizes(num_examples, num_shards))
  return ClientIndices.from_assignment(client_of_row, num_clients)


def quantity_skew_partition(num_examples: int, num_clients: int,
                            size_sigma: float, seed: int,
                            min_client_size: int = 1) -> ClientIndices:
  """IID labels with lognormal client sizes.

  Every client gets `min_client_size` examples plus a share of the rest
  proportional to a `lognormal(0, size_sigma)` weight, rounded by flooring
  the cumulative shares (so each client gets the floor or the ceiling of its
  share, and they add up); then a shuffle is cut into those sizes.
  `size_sigma=0` gives sizes that differ by at most one.

  Args:
    num_examples: size of the training set.
    num_clients: number of clients.
    size_sigma: lognormal sigma of the client weights, >= 0.
    seed: seed of the weights and the shuffle.
    min_client_size: minimum examples per client.

  Returns:
    The rows of each client.

  Raises:
    ValueError: on invalid arguments.
  """
  _check_num_clients(num_clients, num_examples)
  _check_size_sigma(size_sigma)
  _check_min_client_size(min_client_size, num_clients, num_examples)
  rng = np.random.default_rng(seed)
  weights = rng.lognormal(0.0, size_sigma, num_clients)
  spare = num_examples - num_clients * min_client_size
  ends = np.minimum(np.floor(np.cumsum(weights) * spare / weights.sum()),
                    spare).astype(np.int64)
  ends[-1] = spare
  sizes = min_client_size + np.diff(ends, prepend=0)
  return _cut(rng.permutation(num_examples), sizes)


def natural_partition(groups: np.ndarray, num_clients: int,
                      seed: int) -> ClientIndices:
  """Clients made of whole groups of a natural key (a writer or device id).

  With one client per group, client `i` is the group of the `i`-th smallest
  key (the seed is unused). With fewer clients, the groups are shuffled and
  dealt by `np.array_split` of the shuffled groups, so clients hold numbers
  of groups differing by at most one.

  Args:
    groups: `[num_examples]` group key of each row.
    num_clients: number of clients, at most the number of groups.
    seed: seed of the group shuffle.

  Returns:
    The rows of each client.

  Raises:
    ValueError: if `groups` is not 1-D or `num_clients` is not in
      `[1, num_groups]`.
  """
  groups = np.asarray(groups)
  if groups.ndim != 1:
    raise ValueError(f'groups must be 1-D, one key per example, got shape '
                     f'{groups.shape}.')
  if num_clients < 1:
    raise ValueError(f'num_clients must be >= 1, got {num_clients}.')
  keys, group_of_row = np.unique(groups, return_inverse=True)
  num_groups = len(keys)
  if num_clients > num_groups:
    raise ValueError(
        f'num_clients={num_clients} exceeds the {num_groups} natural groups; '
        f'use at most {num_groups} clients.')
  if num_clients == num_groups:
    return ClientIndices.from_assignment(group_of_row, num_clients)
  client_of_group = np.empty(num_groups, np.int64)
  client_of_group[np.random.default_rng(seed).permutation(num_groups)] = (
      np.repeat(np.arange(num_clients), _even_sizes(num_groups, num_clients)))
  return ClientIndices.from_assignment(client_of_group[group_of_row],
                                       num_clients)


def make_partition(name: str, *, labels: np.ndarray, num_clients: int,
                   seed: int, groups: np.ndarray | None = None,
                   dirichlet_alpha: float = 0.5, classes_per_client: int = 2,
                   size_sigma: float | None = None,
                   min_client_size: int = 1) -> ClientIndices:
  """The partition `name` of `labels`, one of `PARTITION_NAMES`.

  Args:
    name: the scheme; see the module docstring.
    labels: `[num_examples]` class labels (only their count matters for
      'iid', 'quantity_skew' and 'natural').
    num_clients: number of clients.
    seed: seed of the partition.
    groups: `[num_examples]` natural group key of each row; 'natural' only.
    dirichlet_alpha: concentration for 'dirichlet' and 'dirichlet_equal'.
    classes_per_client: shards per client for 'pathological'.
    size_sigma: lognormal sigma of client sizes for 'quantity_skew'
      (default 1.0) and 'dirichlet_equal' (default 0.0, equal sizes).
    min_client_size: minimum client size for 'dirichlet' and
      'quantity_skew'.

  Returns:
    The rows of each client.

  Raises:
    ValueError: on an unknown `name`, 'natural' without `groups`, or invalid
      arguments of the scheme.
  """
  if name in _BY_LABEL and targets.kind(labels) != targets.CLASSES:
    raise SettingError(
        'partition', f"Partition '{name}' splits examples by their class, "
        'but these labels are not one class per example (they are '
        f"'{targets.kind(labels)}'); use one of: "
        f"{', '.join(n for n in PARTITION_NAMES if n not in _BY_LABEL)}.")
  if name == 'iid':
    return iid_partition(len(labels), num_clients, seed)
  if name == 'dirichlet':
    return dirichlet_partition(labels, num_clients, dirichlet_alpha, seed,
                               min_client_size)
  if name == 'dirichlet_equal':
    return dirichlet_equal_partition(
        labels, num_clients, dirichlet_alpha, seed,
        0.0 if size_sigma is None else size_sigma)
  if name == 'pathological':
    return pathological_partition(labels, num_clients, classes_per_client,
                                  seed)
  if name == 'quantity_skew':
    return quantity_skew_partition(
        len(labels), num_clients, 1.0 if size_sigma is None else size_sigma,
        seed, min_client_size)
  if name == 'natural':
    if groups is None:
      others = ', '.join(n for n in PARTITION_NAMES if n != 'natural')
      raise ValueError(
          'this dataset has no natural grouping key (a writer or device id '
          f"per row), which partition 'natural' needs; use one of: {others}.")
    if len(groups) != len(labels):
      raise ValueError(f'groups has {len(groups)} entries but there are '
                       f'{len(labels)} labels; give one key per example.')
    return natural_partition(groups, num_clients, seed)
  raise ValueError(f"Unknown partition '{name}'; valid partitions: "
                   f"{', '.join(PARTITION_NAMES)}.")
