"""Each client's own test rows, as the source dataset splits them.

The federated benchmarks give every client its own test examples: LEAF
splits each user's samples (Caldas et al., 2018, "LEAF: A Benchmark for
Federated Settings", arXiv:1812.01097), TFF's EMNIST, Shakespeare and
StackOverflow have a test split per client. With one client per natural
group, those rows can be the clients' local test splits, so per-client and
personal metrics are measured where the benchmark measures them rather than
on rows held out of training.
"""

import dataclasses

import numpy as np

from fedjax_core.data.client_indices import ClientIndices
from fedjax_core.data.federated import CentralDataset
from fedjax_core.errors import SettingError


def source_local_test(central: CentralDataset
                      ) -> tuple[CentralDataset, ClientIndices]:
  """The test rows of each training group, as local test splits.

  Client `i` is the group of the `i`-th smallest training key, as the
  'natural' partition with one client per group numbers them. Its test rows
  are appended to the training arrays (local test splits are rows of
  `train_x`); test rows of groups without training rows stay in the global
  test split only, which keeps every test row.

  Args:
    central: a dataset with group keys on both splits.

  Returns:
    `central` with the clients' test rows appended to its training arrays
    (and their keys to `train_groups`), and each client's rows among them.

  Raises:
    SettingError: the dataset has no per-client test split, or none of its
      test rows belongs to a training group.
  """
  if central.train_groups is None or central.test_groups is None:
    raise SettingError(
        'local_test', f'{central.name} has no test split per client; hold '
        'out a share of each client\'s rows instead (local_test_fraction).')
  keys = np.unique(central.train_groups)
  client = np.minimum(np.searchsorted(keys, central.test_groups),
                      len(keys) - 1)
  own = keys[client] == central.test_groups
  if not own.any():
    raise SettingError(
        'local_test', f'None of the test rows of {central.name} belongs to a '
        'training client (its test clients are other clients); hold out a '
        "share of each client's rows instead (local_test_fraction).")
  num_train = len(central.train_y)
  local_test = ClientIndices.from_assignment(client[own], len(keys))
  local_test = ClientIndices(local_test.rows + num_train, local_test.offsets)
  appended = dataclasses.replace(
      central,
      train_x=np.concatenate([central.train_x, central.test_x[own]]),
      train_y=np.concatenate([central.train_y, central.test_y[own]]),
      train_groups=np.concatenate([central.train_groups,
                                   central.test_groups[own]]))
  return appended, local_test
