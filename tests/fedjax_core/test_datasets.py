"""Tests of the built-in datasets in fedjax_core.data.datasets."""

import numpy as np
import pytest

from fedjax_core.data import datasets
from fedjax_core.data import partition as partition_lib
from fedjax_core.data.federated import FederatedDataset
from tfds_fakes import mock_tfds

_DIGITS_CLASS_COUNTS = np.array(
    [178, 182, 177, 183, 181, 182, 181, 179, 174, 180])


def _assert_same_dataset(a, b):
  assert a.name == b.name and a.num_classes == b.num_classes
  for field in ('train_x', 'train_y', 'test_x', 'test_y'):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  assert a.num_clients == b.num_clients
  np.testing.assert_array_equal(a.client_indices.rows, b.client_indices.rows)
  np.testing.assert_array_equal(a.client_indices.offsets,
                                b.client_indices.offsets)


def _assert_partitions_train(data):
  np.testing.assert_array_equal(np.sort(data.client_indices.rows),
                                np.arange(len(data.train_y)))


def _digits(**kwargs):
  return datasets.load_dataset('digits', **kwargs)


# Digits.


@pytest.mark.parametrize('partition', ['dirichlet', 'iid'])
def test_digits_shapes_and_values(partition):
  data = _digits(num_clients=15, partition=partition)
  assert isinstance(data, FederatedDataset)
  assert data.name == 'digits' and data.num_classes == 10
  assert data.num_clients == 15
  assert len(data.train_y) + len(data.test_y) == 1797
  assert data.example_shape == (8, 8, 1)
  assert data.train_x.dtype == data.test_x.dtype == np.float32
  assert data.train_y.dtype == data.test_y.dtype == np.int32
  for x in (data.train_x, data.test_x):
    assert x.min() >= 0 and x.max() <= 1
  assert data.train_x.max() == 1  # Pixel value 16 maps to 1.
  _assert_partitions_train(data)


@pytest.mark.parametrize('test_fraction', [0.2, 0.33])
def test_digits_test_split_is_stratified(test_fraction):
  data = datasets.load_digits(test_fraction=test_fraction)
  test_counts = np.bincount(data.test_y, minlength=10)
  expected = test_fraction * _DIGITS_CLASS_COUNTS
  assert np.all(np.abs(test_counts - expected) <= 1)
  np.testing.assert_array_equal(
      test_counts + np.bincount(data.train_y, minlength=10),
      _DIGITS_CLASS_COUNTS)


def test_digits_dirichlet_clients_have_two_examples():
  data = _digits(num_clients=100, dirichlet_alpha=1.0)
  assert data.client_sizes.min() >= 2


def test_digits_iid_clients_are_balanced():
  sizes = _digits(num_clients=13, partition='iid').client_sizes
  assert sizes.max() - sizes.min() <= 1


def test_digits_is_deterministic():
  a = _digits(seed=5)
  _assert_same_dataset(a, _digits(seed=5))
  b = _digits(seed=6)
  assert not np.array_equal(a.test_x, b.test_x)
  assert not np.array_equal(a.client_sizes, b.client_sizes)


@pytest.mark.parametrize('test_fraction', [0.0, 1.0])
def test_digits_rejects_bad_test_fraction(test_fraction):
  with pytest.raises(ValueError, match='test_fraction must be in'):
    datasets.load_digits(test_fraction=test_fraction)


# Synthetic.


def _fedprox_synthetic(alpha, beta, num_clients, seed):
  """Plain re-statement of FedProx's generate_synthetic with a seeded rng."""
  rng = np.random.default_rng(seed)
  samples_per_user = rng.lognormal(4, 2, num_clients).astype(int) + 50
  mean_w = rng.normal(0, alpha, num_clients)
  mean_b = mean_w
  b_prior = rng.normal(0, beta, num_clients)
  diagonal = np.zeros(60)
  for j in range(60):
    diagonal[j] = np.power(j + 1, -1.2)
  cov_x = np.diag(diagonal)
  mean_x = np.zeros((num_clients, 60))
  for i in range(num_clients):
    mean_x[i] = rng.normal(b_prior[i], 1, 60)
  xs, ys = [], []
  for i in range(num_clients):
    w = rng.normal(mean_w[i], 1, (60, 10))
    b = rng.normal(mean_b[i], 1, 10)
    xx = rng.multivariate_normal(mean_x[i], cov_x, samples_per_user[i])
    yy = np.zeros(samples_per_user[i])
    for j in range(samples_per_user[i]):
      logits = np.dot(xx[j], w) + b
      yy[j] = np.argmax(np.exp(logits) / np.sum(np.exp(logits)))
    xs.append(xx)
    ys.append(yy)
  return samples_per_user, xs, ys


def test_synthetic_matches_fedprox_generator():
  """With the default natural partition, client k is device k."""
  sizes, xs, ys = _fedprox_synthetic(0.5, 0.5, num_clients=3, seed=1)
  data = datasets.load_dataset('synthetic', synthetic_alpha=0.5,
                               synthetic_beta=0.5, num_clients=3, seed=1)
  assert sizes.min() >= 50
  test_start = 0
  for k, indices in enumerate(data.client_indices):
    num_train = int(0.9 * sizes[k])
    assert len(indices) == num_train
    np.testing.assert_array_equal(data.train_x[indices],
                                  xs[k][:num_train].astype(np.float32))
    np.testing.assert_array_equal(data.train_y[indices], ys[k][:num_train])
    test_rows = slice(test_start, test_start + sizes[k] - num_train)
    np.testing.assert_array_equal(data.test_x[test_rows],
                                  xs[k][num_train:].astype(np.float32))
    np.testing.assert_array_equal(data.test_y[test_rows], ys[k][num_train:])
    test_start = test_rows.stop
  assert test_start == len(data.test_y)


def test_synthetic_shapes_sizes_and_labels():
  data = datasets.load_dataset('synthetic', num_clients=10, seed=0)
  assert data.name == 'synthetic' and data.num_classes == 10
  assert data.num_clients == 10
  assert data.example_shape == (60,)
  assert data.train_x.dtype == data.test_x.dtype == np.float32
  assert data.train_y.dtype == data.test_y.dtype == np.int32
  for y in (data.train_y, data.test_y):
    assert y.min() >= 0 and y.max() < 10
  _assert_partitions_train(data)
  # Every device has n_k >= 50 rows: int(0.9 * n_k) >= 45 train, >= 5 test.
  assert data.client_sizes.min() >= 45
  assert len(data.test_y) >= 5 * data.num_clients


def test_synthetic_is_deterministic():
  a = datasets.load_dataset('synthetic', num_clients=5, seed=2)
  _assert_same_dataset(
      a, datasets.load_dataset('synthetic', num_clients=5, seed=2))
  b = datasets.load_dataset('synthetic', num_clients=5, seed=3)
  assert not np.array_equal(a.client_sizes, b.client_sizes)


@pytest.mark.parametrize('kwargs,match', [
    ({'alpha': -1.0}, 'alpha and beta must be >= 0'),
    ({'beta': -0.5}, 'alpha and beta must be >= 0'),
    ({'num_devices': 0}, 'num_devices must be >= 1'),
])
def test_synthetic_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    datasets.load_synthetic(**kwargs)


# Registry.


def test_default_partitions_and_populations():
  assert datasets.default_partition('synthetic') == 'natural'
  for name in ('digits', 'mnist', 'cifar10'):
    assert datasets.default_partition(name) == 'dirichlet'
  digits = _digits()
  assert digits.num_clients == 20
  assert digits.partition_info['scheme'] == 'dirichlet'
  assert digits.partition_info['args']['dirichlet_alpha'] == 0.5
  assert datasets.load_dataset('synthetic').num_clients == 30


@pytest.mark.parametrize(
    'partition', [p for p in partition_lib.PARTITION_NAMES if p != 'natural'])
def test_every_partition_applies_to_digits(partition):
  data = _digits(num_clients=10, partition=partition)
  assert data.num_clients == 10
  assert data.partition_info['scheme'] == partition
  _assert_partitions_train(data)


def test_synthetic_can_be_repartitioned():
  """Any partition re-splits synthetic's pooled rows."""
  data = datasets.load_dataset('synthetic', num_clients=6, partition='iid')
  sizes = data.client_sizes
  assert sizes.max() - sizes.min() <= 1
  _assert_partitions_train(data)


def test_natural_partition_needs_a_group_key():
  with pytest.raises(ValueError, match='no natural grouping'):
    _digits(partition='natural')


def test_local_test_split_is_held_out_of_training():
  """Each client holds out floor(0.25 n_i) of its own rows; training and
  local test rows together are the original partition."""
  whole = _digits(num_clients=8, seed=3)
  data = _digits(num_clients=8, seed=3, local_test_fraction=0.25)
  held = data.local_test_indices
  np.testing.assert_array_equal(held.sizes, whole.client_sizes // 4)
  for i in range(8):
    assert not np.intersect1d(held[i], data.client_indices[i]).size
    np.testing.assert_array_equal(
        np.sort(np.concatenate([held[i], data.client_indices[i]])),
        whole.client_indices[i])
  assert whole.local_test_indices is None


@pytest.mark.parametrize('fraction', [-0.5, 1.0])
def test_local_test_fraction_is_checked(fraction):
  with pytest.raises(ValueError, match='local_test_fraction must be in') as e:
    _digits(local_test_fraction=fraction)
  assert e.value.setting == 'local_test_fraction'


def test_tfds_dataset_through_the_registry(tmp_path):
  """cifar10 under TFDS mock data: uint8 images split by Dirichlet."""
  with mock_tfds(tmp_path, 'cifar10', num_examples=60):
    data = datasets.load_dataset('cifar10', num_clients=4,
                                 dirichlet_alpha=1.0)
  assert data.train_x.dtype == np.uint8
  assert data.example_shape == (32, 32, 3) and data.num_classes == 10
  assert data.num_clients == 4 and data.client_sizes.min() >= 2
  _assert_partitions_train(data)


def test_load_dataset_rejects_unknown_name():
  with pytest.raises(ValueError,
                     match=r"Unknown dataset 'imagenet'; valid datasets: "
                     r'digits, synthetic, mnist'):
    datasets.load_dataset('imagenet')
