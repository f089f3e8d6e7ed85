"""UCI handwritten digits (shipped with scikit-learn) split across clients.

The 1797 8x8 grey-scale digit images of Alpaydin and Kaynak, 1998, "Optical
Recognition of Handwritten Digits" (UCI Machine Learning Repository), loaded
with `sklearn.datasets.load_digits`, so nothing is downloaded. A stratified
held-out split is set aside, and the rest is partitioned across clients
either IID or with the Dirichlet label skew of Hsu et al., 2019, "Measuring
the Effects of Non-Identical Data Distribution for Federated Visual
Classification" (arXiv:1909.06335).
"""

import numpy as np
from sklearn import datasets as sk_datasets

from fedjax_core import partition as partition_lib
from fedjax_core.data import FederatedDataset

_NUM_CLASSES = 10
_MAX_PIXEL = 16.0
_PARTITIONS = ('dirichlet', 'iid')


def _stratified_test_mask(labels: np.ndarray, test_fraction: float,
                          seed: int) -> np.ndarray:
  """Marks `round(test_fraction * class_size)` random rows of each class."""
  rng = np.random.default_rng(seed)
  is_test = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    indices = rng.permutation(np.flatnonzero(labels == c))
    is_test[indices[:int(round(test_fraction * len(indices)))]] = True
  return is_test


def load_digits(num_clients: int = 20,
                partition: str = 'dirichlet',
                dirichlet_alpha: float = 0.5,
                seed: int = 0,
                test_fraction: float = 0.2) -> FederatedDataset:
  """Loads scikit-learn's digits as a federated dataset.

  Args:
    num_clients: number of clients sharing the training part.
    partition: 'dirichlet' (label skew, every client gets at least 2
      examples) or 'iid'.
    dirichlet_alpha: Dirichlet concentration for `partition='dirichlet'`.
    seed: seed of the held-out split and of the partition.
    test_fraction: share of each class held out as the global test split,
      in (0, 1).

  Returns:
    A `FederatedDataset` named 'digits' with float32 `[n, 8, 8, 1]` inputs in
    [0, 1] and int32 labels in [0, 10).

  Raises:
    ValueError: on an unknown `partition`, a `test_fraction` outside (0, 1),
      or client counts the partition cannot satisfy.
  """
  if partition not in _PARTITIONS:
    raise ValueError(
        f"Unknown partition '{partition}'; valid partitions: "
        f"{', '.join(_PARTITIONS)}.")
  if not 0 < test_fraction < 1:
    raise ValueError(f'test_fraction must be in (0, 1), got {test_fraction}.')
  digits = sk_datasets.load_digits()
  x = (digits.images / _MAX_PIXEL).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  is_test = _stratified_test_mask(y, test_fraction, seed)
  train_x, train_y = x[~is_test], y[~is_test]
  if partition == 'iid':
    client_indices = partition_lib.iid_partition(len(train_y), num_clients,
                                                 seed)
  else:
    client_indices = partition_lib.dirichlet_partition(
        train_y, num_clients, dirichlet_alpha, seed, min_client_size=2)
  return FederatedDataset(
      name='digits',
      train_x=train_x,
      train_y=train_y,
      client_indices=client_indices,
      test_x=x[is_test],
      test_y=y[is_test],
      num_classes=_NUM_CLASSES)
