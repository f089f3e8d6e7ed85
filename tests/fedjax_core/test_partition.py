"""Tests of fedjax_core.data.partition."""

import numpy as np
import pytest

from fedjax_core.data import partition
from fedjax_core.data.client_indices import ClientIndices

_NUM_CLASSES = 10


def _labels(num_examples=2000, seed=0):
  return np.random.default_rng(seed).integers(0, _NUM_CLASSES, num_examples)


def _groups(num_examples=2000, num_groups=42, seed=0):
  return np.random.default_rng(seed).integers(0, num_groups, num_examples) * 7


def _assert_valid(clients, num_examples, num_clients):
  """Every example exactly once, rows ascending within every client."""
  assert isinstance(clients, ClientIndices)
  assert len(clients) == num_clients
  assert clients.rows.dtype == np.int64
  np.testing.assert_array_equal(np.sort(clients.rows),
                                np.arange(num_examples))
  same_client = np.diff(clients.client_of_row()) == 0
  assert np.all(np.diff(clients.rows)[same_client] > 0)


def _assert_rows(clients, expected):
  assert len(clients) == len(expected)
  for i, rows in enumerate(expected):
    np.testing.assert_array_equal(clients[i], rows)


def _same(a, b):
  return (np.array_equal(a.rows, b.rows) and
          np.array_equal(a.offsets, b.offsets))


def _client_of(clients, num_examples):
  """`[num_examples]` the client of every example."""
  client = np.empty(num_examples, np.int64)
  client[clients.rows] = clients.client_of_row()
  return client


def _mean_label_entropy(labels, clients):
  counts = np.zeros((len(clients), _NUM_CLASSES))
  np.add.at(counts, (clients.client_of_row(), labels[clients.rows]), 1)
  shares = counts / counts.sum(axis=1, keepdims=True)
  return -np.sum(shares * np.log(np.where(shares > 0, shares, 1)),
                 axis=1).mean()


# name -> (seed -> partition of 2000 examples into 10 clients).
_SCHEMES = {
    'iid': lambda seed: partition.iid_partition(2000, 10, seed),
    'dirichlet': lambda seed: partition.dirichlet_partition(
        _labels(), 10, 0.5, seed),
    'dirichlet_equal': lambda seed: partition.dirichlet_equal_partition(
        _labels(), 10, 0.5, seed, size_sigma=0.5),
    'pathological': lambda seed: partition.pathological_partition(
        _labels(), 10, 2, seed),
    'quantity_skew': lambda seed: partition.quantity_skew_partition(
        2000, 10, 1.0, seed),
    'natural': lambda seed: partition.natural_partition(_groups(), 10, seed),
}


def test_schemes_cover_partition_names():
  assert tuple(_SCHEMES) == partition.PARTITION_NAMES


@pytest.mark.parametrize('name', partition.PARTITION_NAMES)
def test_partition_is_valid(name):
  _assert_valid(_SCHEMES[name](0), 2000, 10)


@pytest.mark.parametrize('name', partition.PARTITION_NAMES)
def test_partition_is_deterministic_in_the_seed(name):
  a = _SCHEMES[name](3)
  assert _same(a, _SCHEMES[name](3))
  assert not _same(a, _SCHEMES[name](4))


# iid.


@pytest.mark.parametrize('num_examples,num_clients,seed',
                         [(100, 7, 0), (10, 10, 1), (5, 1, 2), (1003, 10, 3)])
def test_iid_matches_the_sorted_array_split_of_a_permutation(
    num_examples, num_clients, seed):
  clients = partition.iid_partition(num_examples, num_clients, seed)
  order = np.random.default_rng(seed).permutation(num_examples)
  _assert_rows(clients, [np.sort(part) for part in
                         np.array_split(order, num_clients)])
  assert np.ptp(clients.sizes) <= 1


# dirichlet.


def _old_dirichlet(labels, num_clients, alpha, seed, min_client_size):
  """The per-client-list algorithm this module used before, restated."""
  rng = np.random.default_rng(seed)
  while True:
    shards = [[] for _ in range(num_clients)]
    for c in np.unique(labels):
      rows = rng.permutation(np.flatnonzero(labels == c))
      proportions = rng.dirichlet(np.full(num_clients, alpha))
      cuts = (np.cumsum(proportions)[:-1] * len(rows)).astype(np.int64)
      for shard, part in zip(shards, np.split(rows, cuts), strict=True):
        shard.append(part)
    shards = [np.sort(np.concatenate(s)) for s in shards]
    if min(len(s) for s in shards) >= min_client_size:
      return shards


@pytest.mark.parametrize('num_examples,num_clients,alpha,seed,min_size',
                         [(2000, 10, 0.5, 0, 1), (3000, 37, 0.05, 3, 2),
                          (100, 7, 1.0, 1, 0)])
def test_dirichlet_matches_the_old_algorithm(num_examples, num_clients, alpha,
                                             seed, min_size):
  labels = _labels(num_examples, seed)
  _assert_rows(
      partition.dirichlet_partition(labels, num_clients, alpha, seed,
                                    min_size),
      _old_dirichlet(labels, num_clients, alpha, seed, min_size))


def test_dirichlet_redraws_like_the_old_algorithm():
  labels = _labels(500)
  first_draw = _old_dirichlet(labels, 20, 0.1, 0, 0)
  assert min(len(s) for s in first_draw) < 5  # So min size 5 redraws.
  clients = partition.dirichlet_partition(labels, 20, 0.1, 0,
                                          min_client_size=5)
  _assert_rows(clients, _old_dirichlet(labels, 20, 0.1, 0, 5))
  _assert_valid(clients, 500, 20)
  assert clients.sizes.min() >= 5


def test_dirichlet_handles_non_contiguous_labels():
  labels = np.array([7, -2, 7, 30, -2, 7, 30, 30, 7])
  _assert_rows(partition.dirichlet_partition(labels, 3, 1.0, 5),
               _old_dirichlet(labels, 3, 1.0, 5, 1))


@pytest.mark.parametrize('partition_fn', [
    partition.dirichlet_partition, partition.dirichlet_equal_partition])
def test_small_alpha_skews_labels(partition_fn):
  labels = _labels()
  for seed in range(3):
    skewed = _mean_label_entropy(labels, partition_fn(labels, 20, 0.1, seed))
    mixed = _mean_label_entropy(labels, partition_fn(labels, 20, 100.0,
                                                     seed))
    # Uniform over 10 classes is log(10) = 2.30 nats.
    assert mixed > 2.1
    assert skewed < mixed - 0.7


def test_dirichlet_gives_up_on_impossible_skew():
  with pytest.raises(ValueError, match='larger alpha or fewer clients'):
    partition.dirichlet_partition(_labels(200), 50, 0.001, seed=0,
                                  min_client_size=4)


# dirichlet_equal.


def test_dirichlet_equal_sizes_are_equal_without_sigma():
  clients = partition.dirichlet_equal_partition(_labels(), 10, 0.1, seed=0)
  np.testing.assert_array_equal(clients.sizes, np.full(10, 200))
  clients = partition.dirichlet_equal_partition(_labels(2003), 10, 0.1, 0)
  np.testing.assert_array_equal(clients.sizes, [203] + [200] * 9)


@pytest.mark.parametrize('size_sigma,seed', [(0.5, 0), (1.5, 4)])
def test_dirichlet_equal_sizes_are_feddyn_lognormal(size_sigma, seed):
  clients = partition.dirichlet_equal_partition(_labels(), 10, 0.5, seed,
                                                size_sigma)
  weights = np.random.default_rng(seed).lognormal(np.log(200), size_sigma,
                                                  10)
  expected = (weights / weights.sum() * 2000).astype(np.int64)
  expected[0] += 2000 - expected.sum()
  np.testing.assert_array_equal(clients.sizes, expected)
  assert np.ptp(clients.sizes) > 50


def test_dirichlet_equal_survives_priors_without_mass_left():
  # At alpha=1e-3 most priors are one-hot to float precision, so clients
  # outlive every class they could draw.
  labels = _labels(3000)
  clients = partition.dirichlet_equal_partition(labels, 30, 1e-3, seed=0)
  _assert_valid(clients, 3000, 30)
  np.testing.assert_array_equal(clients.sizes, np.full(30, 100))


def test_dirichlet_equal_takes_random_rows_of_a_class():
  # Unequal clients fill at different times; they must still get rows from
  # all over the class, not the rows next in dataset order.
  clients = partition.dirichlet_equal_partition(np.zeros(20_000, np.int64),
                                                10, 1.0, 0, size_sigma=1.0)
  mean_row = np.bincount(clients.client_of_row(),
                         weights=clients.rows) / clients.sizes
  assert np.abs(mean_row - 9999.5).max() < 2000


# pathological.


def test_pathological_shards_follow_class_boundaries():
  labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 100))
  clients = partition.pathological_partition(labels, 50, 2, seed=0)
  _assert_valid(clients, 1000, 50)
  np.testing.assert_array_equal(clients.sizes, np.full(50, 20))
  counts = np.zeros((50, 10), np.int64)
  np.add.at(counts, (clients.client_of_row(), labels[clients.rows]), 1)
  classes_per_client = (counts > 0).sum(axis=1)
  assert np.all(classes_per_client <= 2)
  assert np.all(np.isin(counts, [0, 10, 20]))  # Whole shards of 10.
  # Random shards share a class with chance 9/99: most clients see two.
  assert np.mean(classes_per_client == 2) > 0.7


def test_pathological_shards_take_random_rows_of_a_class():
  clients = partition.pathological_partition(np.repeat([0, 1], 50), 10, 1,
                                             seed=0)
  _assert_valid(clients, 100, 10)
  # A shard of 10 rows in dataset order would span exactly 10 rows.
  assert all(np.ptp(rows) > 10 for rows in clients)


def test_pathological_uneven_shards():
  clients = partition.pathological_partition(_labels(1003), 7, 3, seed=1)
  _assert_valid(clients, 1003, 7)
  # 21 shards of 47 or 48 examples (1003 = 21 * 47 + 16), 3 per client.
  assert np.all((clients.sizes >= 141) & (clients.sizes <= 144))


# quantity_skew.


@pytest.mark.parametrize('size_sigma,min_size', [(0.5, 1), (2.0, 5),
                                                 (3.0, 0)])
def test_quantity_skew_sizes_follow_the_lognormal_weights(size_sigma,
                                                          min_size):
  clients = partition.quantity_skew_partition(5000, 100, size_sigma, 7,
                                              min_size)
  _assert_valid(clients, 5000, 100)
  weights = np.random.default_rng(7).lognormal(0.0, size_sigma, 100)
  share = weights / weights.sum() * (5000 - 100 * min_size)
  extra = clients.sizes - min_size
  assert np.all((extra >= np.floor(share)) & (extra <= np.ceil(share)))


def test_quantity_skew_spread_grows_with_sigma():
  def spread(size_sigma):
    sizes = partition.quantity_skew_partition(100_000, 1000, size_sigma,
                                              0).sizes
    return sizes.std() / sizes.mean()
  assert np.ptp(partition.quantity_skew_partition(1003, 10, 0.0, 0).sizes
               ) <= 1
  assert spread(0.0) < 0.01 < spread(0.25) < spread(1.0) / 2
  assert spread(1.0) < spread(2.0) / 2


def test_quantity_skew_scales_to_100k_clients():
  clients = partition.quantity_skew_partition(1_000_000, 100_000, 1.0,
                                              seed=0, min_client_size=2)
  _assert_valid(clients, 1_000_000, 100_000)
  assert clients.sizes.min() >= 2
  assert clients.sizes.sum() == 1_000_000


# natural.


def test_natural_one_client_per_group_in_key_order():
  groups = np.array([30, 10, 20, 10, 30, 20, 30])
  clients = partition.natural_partition(groups, 3, seed=0)
  _assert_rows(clients, [[1, 3], [2, 5], [0, 4, 6]])


def test_natural_deals_whole_groups():
  groups = _groups()
  clients = partition.natural_partition(groups, 10, seed=0)
  _assert_valid(clients, 2000, 10)
  pairs = np.unique(np.stack([groups, _client_of(clients, 2000)]), axis=1)
  assert pairs.shape[1] == 42  # Every group in exactly one client.
  # np.array_split of 42 groups into 10: two clients get 5, the rest 4.
  np.testing.assert_array_equal(np.bincount(pairs[1], minlength=10),
                                [5, 5] + [4] * 8)


# Bad arguments.


@pytest.mark.parametrize('call,match', [
    (lambda: partition.iid_partition(10, 0, 0), 'num_clients must be >= 1'),
    (lambda: partition.iid_partition(10, 11, 0), 'at most 10 clients'),
    (lambda: partition.dirichlet_partition(_labels(10), 11, 0.5, 0),
     'at most 10 clients'),
    (lambda: partition.dirichlet_partition(_labels(), 10, 0.0, 0),
     'alpha must be > 0'),
    (lambda: partition.dirichlet_equal_partition(_labels(), 10, -1.0, 0),
     'alpha must be > 0'),
    (lambda: partition.dirichlet_partition(_labels().reshape(2, -1), 10, 0.5,
                                           0), 'labels must be 1-D'),
    (lambda: partition.pathological_partition(_labels().reshape(2, -1), 10, 2,
                                              0), 'labels must be 1-D'),
    (lambda: partition.dirichlet_partition(_labels(20), 10, 0.5, 0, 3),
     r'min_client_size=3 is impossible .* \[0, 2\]'),
    (lambda: partition.quantity_skew_partition(20, 10, 1.0, 0, 3),
     r'min_client_size=3 is impossible .* \[0, 2\]'),
    (lambda: partition.quantity_skew_partition(20, 10, -0.5, 0),
     'size_sigma must be >= 0'),
    (lambda: partition.dirichlet_equal_partition(_labels(), 10, 0.5, 0, -1),
     'size_sigma must be >= 0'),
    (lambda: partition.pathological_partition(_labels(), 10, 0, 0),
     r'classes_per_client must be in \[1, 10\]'),
    (lambda: partition.pathological_partition(_labels(), 10, 11, 0),
     r'classes_per_client must be in \[1, 10\]'),
    (lambda: partition.pathological_partition(np.arange(10) % 5, 4, 3, 0),
     '4 clients x 3 shards need at least 12 examples, got 10'),
    (lambda: partition.natural_partition(np.array([1, 2, 2]), 0, 0),
     'num_clients must be >= 1'),
    (lambda: partition.natural_partition(np.array([4, 1, 4, 9]), 5, 0),
     'num_clients=5 exceeds the 3 natural groups'),
])
def test_bad_arguments_are_rejected(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# make_partition.


@pytest.mark.parametrize('name,direct', [
    ('iid', lambda: partition.iid_partition(2000, 10, 3)),
    ('dirichlet', lambda: partition.dirichlet_partition(_labels(), 10, 0.5,
                                                        3, 1)),
    ('dirichlet_equal', lambda: partition.dirichlet_equal_partition(
        _labels(), 10, 0.5, 3, 0.0)),
    ('pathological', lambda: partition.pathological_partition(
        _labels(), 10, 2, 3)),
    ('quantity_skew', lambda: partition.quantity_skew_partition(
        2000, 10, 1.0, 3, 1)),
    ('natural', lambda: partition.natural_partition(_groups(), 10, 3)),
])
def test_make_partition_defaults(name, direct):
  made = partition.make_partition(name, labels=_labels(), num_clients=10,
                                  seed=3, groups=_groups())
  assert _same(made, direct())


def test_make_partition_passes_options():
  kwargs = dict(labels=_labels(), num_clients=10, seed=3,
                dirichlet_alpha=0.2, classes_per_client=3, size_sigma=0.7,
                min_client_size=4)
  for name, direct in [
      ('dirichlet', partition.dirichlet_partition(_labels(), 10, 0.2, 3, 4)),
      ('dirichlet_equal',
       partition.dirichlet_equal_partition(_labels(), 10, 0.2, 3, 0.7)),
      ('pathological', partition.pathological_partition(_labels(), 10, 3,
                                                        3)),
      ('quantity_skew', partition.quantity_skew_partition(2000, 10, 0.7, 3,
                                                          4))]:
    assert _same(partition.make_partition(name, **kwargs), direct), name


def test_make_partition_rejects_unknown_name():
  with pytest.raises(ValueError, match=(
      "Unknown partition 'shards'; valid partitions: iid, dirichlet, "
      'dirichlet_equal, pathological, quantity_skew, natural')):
    partition.make_partition('shards', labels=_labels(), num_clients=10,
                             seed=0)


def test_make_partition_natural_needs_groups():
  with pytest.raises(ValueError, match=(
      'no natural grouping key.*use one of: iid, dirichlet, dirichlet_equal, '
      r'pathological, quantity_skew\.')):
    partition.make_partition('natural', labels=_labels(), num_clients=10,
                             seed=0)
  with pytest.raises(ValueError, match='groups has 3 entries but there are '
                     '2000 labels'):
    partition.make_partition('natural', labels=_labels(), num_clients=2,
                             seed=0, groups=np.array([1, 2, 3]))


@pytest.mark.parametrize('name', ['dirichlet', 'dirichlet_equal',
                                  'pathological'])
def test_label_partitions_refuse_targets_that_are_not_one_class(name):
  tokens = np.zeros((8, 5), np.int32)
  with pytest.raises(ValueError, match="not one class per example .*"
                     "'tokens'.*iid, quantity_skew, natural"):
    partition.make_partition(name, labels=tokens, num_clients=2, seed=0)
  assert len(partition.make_partition('iid', labels=tokens, num_clients=2,
                                      seed=0)) == 2
