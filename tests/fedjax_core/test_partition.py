"""Tests of fedjax_core.partition."""

import numpy as np
import pytest

from fedjax_core import partition

_NUM_CLASSES = 10


def _labels(num_examples=2000, seed=0):
  return np.random.default_rng(seed).integers(0, _NUM_CLASSES, num_examples)


def _class_shares(labels, shards):
  return np.stack([
      np.bincount(labels[s], minlength=_NUM_CLASSES) / len(s) for s in shards
  ])


def _assert_valid_partition(shards, num_examples, num_clients):
  assert len(shards) == num_clients
  for shard in shards:
    assert shard.dtype == np.int64
    assert np.all(np.diff(shard) > 0)  # Sorted and without repeats.
  np.testing.assert_array_equal(
      np.sort(np.concatenate(shards)), np.arange(num_examples))


def _assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)


def _differs(a, b):
  return any(len(x) != len(y) or np.any(x != y) for x, y in zip(a, b))


@pytest.mark.parametrize('num_examples,num_clients', [(100, 7), (10, 10),
                                                      (5, 1)])
def test_iid_partition_is_valid_and_balanced(num_examples, num_clients):
  shards = partition.iid_partition(num_examples, num_clients, seed=0)
  _assert_valid_partition(shards, num_examples, num_clients)
  sizes = [len(s) for s in shards]
  assert max(sizes) - min(sizes) <= 1


def test_iid_partition_is_deterministic():
  a = partition.iid_partition(100, 5, seed=3)
  _assert_same(a, partition.iid_partition(100, 5, seed=3))
  assert _differs(a, partition.iid_partition(100, 5, seed=4))


@pytest.mark.parametrize('alpha', [0.05, 0.5, 1000.0])
def test_dirichlet_partition_is_valid(alpha):
  labels = _labels()
  shards = partition.dirichlet_partition(labels, 10, alpha, seed=0)
  _assert_valid_partition(shards, len(labels), 10)


def test_dirichlet_partition_is_deterministic():
  labels = _labels()
  a = partition.dirichlet_partition(labels, 10, 0.5, seed=3)
  _assert_same(a, partition.dirichlet_partition(labels, 10, 0.5, seed=3))
  assert _differs(a, partition.dirichlet_partition(labels, 10, 0.5, seed=4))


def test_dirichlet_partition_small_alpha_skews_labels():
  labels = _labels()
  shards = partition.dirichlet_partition(labels, 10, 0.05, seed=0)
  # Uniform clients would have a max-class share of about 0.1.
  assert _class_shares(labels, shards).max(axis=1).mean() > 0.6


def test_dirichlet_partition_large_alpha_is_near_uniform():
  labels = _labels()
  shards = partition.dirichlet_partition(labels, 10, 1000.0, seed=0)
  global_shares = np.bincount(labels, minlength=_NUM_CLASSES) / len(labels)
  assert np.abs(_class_shares(labels, shards) - global_shares).max() < 0.05


def test_dirichlet_partition_respects_min_client_size():
  labels = _labels(500)
  shards = partition.dirichlet_partition(
      labels, 20, 0.1, seed=0, min_client_size=5)
  _assert_valid_partition(shards, len(labels), 20)
  assert min(len(s) for s in shards) >= 5


def test_dirichlet_partition_gives_up_on_impossible_skew():
  labels = _labels(200)
  with pytest.raises(ValueError, match='larger alpha or fewer clients'):
    partition.dirichlet_partition(
        labels, 50, 0.001, seed=0, min_client_size=4)


@pytest.mark.parametrize('num_clients,match', [(0, 'num_clients must be >= 1'),
                                               (11, 'at most 10 clients')])
def test_partitions_reject_bad_num_clients(num_clients, match):
  with pytest.raises(ValueError, match=match):
    partition.iid_partition(10, num_clients, seed=0)
  with pytest.raises(ValueError, match=match):
    partition.dirichlet_partition(_labels(10), num_clients, 0.5, seed=0)


@pytest.mark.parametrize('alpha', [0.0, -1.0])
def test_dirichlet_partition_rejects_non_positive_alpha(alpha):
  with pytest.raises(ValueError, match='alpha must be > 0'):
    partition.dirichlet_partition(_labels(), 10, alpha, seed=0)


def test_dirichlet_partition_rejects_impossible_min_client_size():
  with pytest.raises(ValueError, match='min_client_size=3 is impossible'):
    partition.dirichlet_partition(_labels(20), 10, 0.5, seed=0,
                                  min_client_size=3)
