"""Clients' own test rows from the source's per-client test split, and a
seeded subsample of the global test split."""

import numpy as np
import pytest

from fedjax_core.data import partition
from fedjax_core.data.datasets import registry
from fedjax_core.data.federated import CentralDataset
from fedjax_core.data.source_local_test import source_local_test
from fedjax_core.errors import SettingError


def _central(test_groups=(7, 5, 3, 9, 9)):
  return CentralDataset(
      name='tiny', train_x=np.arange(4, dtype=np.float32)[:, None],
      train_y=np.array([0, 1, 0, 1], np.int32),
      test_x=np.arange(10, 15, dtype=np.float32)[:, None],
      test_y=np.array([1, 1, 0, 0, 1], np.int32), num_classes=2,
      train_groups=np.array([5, 5, 7, 9]),
      test_groups=np.array(test_groups))


def test_each_training_group_gets_its_own_test_rows():
  appended, local_test = source_local_test(_central())
  # Keys 5, 7, 9 are clients 0, 1, 2; test rows 0 (7), 1 (5), 3 and 4 (9)
  # become training rows 4, 5, 6, 7; test row 2 (key 3) trains no client.
  np.testing.assert_array_equal(appended.train_x[:, 0],
                                [0, 1, 2, 3, 10, 11, 13, 14])
  np.testing.assert_array_equal(appended.train_y, [0, 1, 0, 1, 1, 1, 0, 1])
  assert [local_test[i].tolist() for i in range(3)] == [[5], [4], [6, 7]]
  np.testing.assert_array_equal(appended.test_x, _central().test_x)


def test_federate_scores_clients_on_their_source_rows():
  central, local_test = source_local_test(_central())
  clients = partition.natural_partition(_central().train_groups, 3, seed=0)
  dataset = registry.federate(central, clients, local_test=local_test,
                              holdout_clients=0.34, seed=0)
  assert dataset.num_clients == 2 and dataset.new_clients.num_clients == 1
  rows = {tuple(dataset.train_x[r, 0]) for r in dataset.local_test_indices}
  rows.add(tuple(dataset.train_x[dataset.new_clients.local_test_indices[0],
                                 0]))
  assert rows == {(11.,), (10.,), (13., 14.)}


def test_without_per_client_test_rows_is_a_clear_error():
  no_keys = CentralDataset(**{**_central().__dict__, 'test_groups': None})
  with pytest.raises(SettingError, match='no test split per client'):
    source_local_test(no_keys)
  with pytest.raises(SettingError, match='belongs to a training client'):
    source_local_test(_central(test_groups=(1, 2, 3, 4, 6)))


def test_source_rows_exclude_a_held_out_fraction():
  central, local_test = source_local_test(_central())
  clients = partition.natural_partition(_central().train_groups, 3, seed=0)
  with pytest.raises(SettingError, match='leave local_test_fraction at 0'):
    registry.federate(central, clients, local_test=local_test,
                      local_test_fraction=0.5)


def test_a_subsample_of_the_global_test_split_is_seeded():
  whole = registry.load_dataset('digits', seed=3)
  sample = registry.load_dataset('digits', seed=3, test_examples=40)
  again = registry.load_dataset('digits', seed=3, test_examples=40)
  other = registry.load_dataset('digits', seed=4, test_examples=40)
  assert len(sample.test_y) == 40
  np.testing.assert_array_equal(sample.test_x, again.test_x)
  assert not np.array_equal(sample.test_x, other.test_x)
  # Every kept row is a row of the whole split, in the split's order.
  flat = whole.test_x.reshape(len(whole.test_x), -1)
  rows = [np.flatnonzero((flat == r.ravel()).all(axis=1))[0]
          for r in sample.test_x]
  assert rows == sorted(rows)
  np.testing.assert_array_equal(whole.test_y[rows], sample.test_y)
  assert sample.partition_info['args']['test_examples'] == 40
  assert len(registry.load_dataset('digits', test_examples=10**6).test_y) \
      == len(whole.test_y)


def test_source_test_rows_come_from_the_whole_split():
  central, local_test = source_local_test(_central())
  sampled = registry.subsample_test(central, 2, seed=0)
  assert len(sampled.test_y) == 2 and len(local_test.rows) == 4
  with pytest.raises(SettingError, match='test_examples must be >= 1'):
    registry.subsample_test(central, 0, seed=0)


def test_source_test_rows_need_a_per_client_test_split():
  with pytest.raises(SettingError, match='no test split per client'):
    registry.load_dataset('digits', local_test='source')
