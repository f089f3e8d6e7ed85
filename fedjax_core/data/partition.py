"""Seeded partitions of a training set into disjoint clients.

Every function is pure: it draws all randomness from
`np.random.default_rng(seed)`, so the same arguments give the same clients.
Each returns a `ClientIndices` whose rows ascend within every client and
which holds every example exactly once. All are vectorized over examples and
clients except `dirichlet_equal_partition`, which deals examples one by one.

Schemes (`make_partition` dispatches on `PARTITION_NAMES`; the three that
split by class label live in `label_partitions` and are re-exported here,
the client sizes and checks all share in `partition_sizes`):
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

import numpy as np

from fedjax_core import targets
from fedjax_core.data import partition_sizes
from fedjax_core.data.client_indices import ClientIndices
# The label-based schemes, re-exported: they are partitions like the others.
from fedjax_core.data.label_partitions import check_alpha
from fedjax_core.data.label_partitions import dirichlet_equal_partition
from fedjax_core.data.label_partitions import dirichlet_partition
from fedjax_core.data.label_partitions import pathological_partition
from fedjax_core.errors import SettingError

PARTITION_NAMES = ('iid', 'dirichlet', 'dirichlet_equal', 'pathological',
                   'quantity_skew', 'natural')

# The partitions that split by class label (the others need only a count).
_BY_LABEL = ('dirichlet', 'dirichlet_equal', 'pathological')


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
  partition_sizes.check_num_clients(num_clients, num_examples)
  order = np.random.default_rng(seed).permutation(num_examples)
  return partition_sizes.cut(
      order, partition_sizes.even_sizes(num_examples, num_clients))


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
  partition_sizes.check_num_clients(num_clients, num_examples)
  partition_sizes.check_size_sigma(size_sigma)
  partition_sizes.check_min_client_size(min_client_size, num_clients,
                                        num_examples)
  rng = np.random.default_rng(seed)
  weights = rng.lognormal(0.0, size_sigma, num_clients)
  spare = num_examples - num_clients * min_client_size
  ends = np.minimum(np.floor(np.cumsum(weights) * spare / weights.sum()),
                    spare).astype(np.int64)
  ends[-1] = spare
  sizes = min_client_size + np.diff(ends, prepend=0)
  return partition_sizes.cut(rng.permutation(num_examples), sizes)


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
      np.repeat(np.arange(num_clients),
                partition_sizes.even_sizes(num_groups, num_clients)))
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
