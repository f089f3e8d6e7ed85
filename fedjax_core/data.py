"""Federated datasets held in host memory as compact numpy arrays.

A `FederatedDataset` is the whole population's training data plus a global
held-out test split. Client `i` owns the training rows `client_indices[i]`.
Round batching (`fedjax_core.batching`) turns a cohort of client ids into
static-shape index and mask arrays into these rows.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class FederatedDataset:
  """Training rows of every client and a global test split.

  Attributes:
    name: dataset name, as given to `fedjax_core.datasets.load_dataset`.
    train_x: `[num_train, *example_shape]` inputs of all clients.
    train_y: `[num_train]` int32 labels.
    client_indices: client id -> int array of its rows in `train_x`.
    test_x: `[num_test, *example_shape]` global held-out inputs.
    test_y: `[num_test]` int32 held-out labels.
    num_classes: number of label classes.
  """

  name: str
  train_x: np.ndarray
  train_y: np.ndarray
  client_indices: tuple[np.ndarray, ...]
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int

  def __post_init__(self):
    if len(self.train_x) != len(self.train_y):
      raise ValueError(
          f'{self.name}: train_x has {len(self.train_x)} rows but train_y has '
          f'{len(self.train_y)}.')
    if len(self.test_x) != len(self.test_y):
      raise ValueError(
          f'{self.name}: test_x has {len(self.test_x)} rows but test_y has '
          f'{len(self.test_y)}.')
    if self.train_x.shape[1:] != self.test_x.shape[1:]:
      raise ValueError(
          f'{self.name}: train examples have shape {self.train_x.shape[1:]} '
          f'but test examples have shape {self.test_x.shape[1:]}.')
    empty = [i for i, idx in enumerate(self.client_indices) if len(idx) == 0]
    if empty:
      raise ValueError(
          f'{self.name}: clients {empty[:10]} have no training examples; use '
          'fewer clients or a partition with a minimum client size.')

  @property
  def num_clients(self) -> int:
    return len(self.client_indices)

  @property
  def example_shape(self) -> tuple[int, ...]:
    return tuple(self.train_x.shape[1:])

  @property
  def client_sizes(self) -> np.ndarray:
    """`[num_clients]` int array of training examples per client."""
    return np.array([len(idx) for idx in self.client_indices], np.int64)
