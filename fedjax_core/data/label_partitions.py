"""Partitions that split a training set by class label.

Pure functions of their seed, like every scheme of
`fedjax_core.data.partition` (which dispatches to them and re-exports them):
  * `dirichlet_partition`: the label skew of Hsu, Qi and Brown, 2019,
    "Measuring the Effects of Non-Identical Data Distribution for Federated
    Visual Classification" (arXiv:1909.06335): every class is split across
    clients in Dir(alpha) proportions, so client sizes vary.
  * `dirichlet_equal_partition`: the form of Acar et al., 2021, "Federated
    Learning Based on Dynamic Regularization" (FedDyn, arXiv:2111.04263),
    also used by FL-Simulator: clients of set sizes each draw their
    examples' classes from a Dir(alpha) prior.
  * `pathological_partition`: the label-sorted shards of McMahan et al.,
    2017, "Communication-Efficient Learning of Deep Networks from
    Decentralized Data" (arXiv:1602.05629).
They need one class label per example (`fedjax_core.targets.CLASSES`).
"""

import bisect

import numpy as np

from fedjax_core.data import partition_sizes
from fedjax_core.data.client_indices import ClientIndices

_MAX_DIRICHLET_TRIES = 1000


def _check_labels(labels) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise ValueError(f'labels must be 1-D, one per example, got shape '
                     f'{labels.shape}; flatten them first.')
  return labels


def check_alpha(alpha: float) -> None:
  """Raises ValueError unless the Dirichlet concentration is positive."""
  if not alpha > 0:
    raise ValueError(
        f'alpha must be > 0, got {alpha}; use e.g. 0.1 for strong label skew '
        'or 100 for near-IID clients.')


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
  partition_sizes.check_num_clients(num_clients, num_examples)
  check_alpha(alpha)
  partition_sizes.check_min_client_size(min_client_size, num_clients,
                                        num_examples)
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
  partition_sizes.check_num_clients(num_clients, num_examples)
  check_alpha(alpha)
  partition_sizes.check_size_sigma(size_sigma)
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
  partition_sizes.check_num_clients(num_clients, num_examples)
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
  client_of_row[by_label] = np.repeat(
      client_of_shard, partition_sizes.even_sizes(num_examples, num_shards))
  return ClientIndices.from_assignment(client_of_row, num_clients)
