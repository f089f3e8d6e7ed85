"""Datasets held in host memory as compact numpy arrays.

A `CentralDataset` is what a loader reads: a training split, a held-out
test split and, where the data have one, a natural group key per training
row (a device or writer id) and possibly per test row. Partitioning it
(`fedjax_core.data.partition`) makes a `FederatedDataset`: the same arrays plus
which rows each client owns, and optionally each client's own held-out rows
for per-client metrics. Round batching (`fedjax_core.engine.batching`) turns a
cohort of client ids into static-shape index and mask arrays into these
rows.

Images stay uint8 in host and device memory (4x smaller than float32);
`as_float` maps them to [0, 1] inside the compiled round.
"""

import dataclasses
from typing import Any

import jax.numpy as jnp
import numpy as np

from fedjax_core import targets
from fedjax_core.data.client_indices import ClientIndices


def as_float(x):
  """float32 features: uint8 pixels scaled to [0, 1], floats unchanged.

  Works on numpy and JAX arrays; the branch is on the static dtype.
  """
  if x.dtype == np.uint8:
    return x.astype(jnp.float32) * (1.0 / 255.0)
  return x.astype(jnp.float32)


def _check_splits(name: str, train_x, train_y, test_x, test_y):
  """Raises ValueError unless x and y agree in length and both splits'
  examples have one shape."""
  for split, x, y in (('train', train_x, train_y), ('test', test_x, test_y)):
    if len(x) != len(y):
      raise ValueError(f'{name}: {split}_x has {len(x)} rows but {split}_y '
                       f'has {len(y)}.')
  if train_x.shape[1:] != test_x.shape[1:]:
    raise ValueError(
        f'{name}: train examples have shape {train_x.shape[1:]} but test '
        f'examples have shape {test_x.shape[1:]}.')


@dataclasses.dataclass(frozen=True)
class CentralDataset:
  """A dataset before it is split across clients.

  Attributes:
    name: dataset name, as given to `fedjax_core.data.datasets.load_dataset`.
    train_x: `[num_train, *example_shape]` inputs (uint8 images, float32
      features or int32 token ids).
    train_y: `[num_train, ...]` labels of a kind of `fedjax_core.targets`:
      int32 classes `[num_train]`, int32 per-position targets
      `[num_train, T]` or uint8 multi-hot sets `[num_train, num_classes]`.
    test_x: `[num_test, *example_shape]` held-out inputs.
    test_y: `[num_test, ...]` held-out labels, of the same kind.
    num_classes: number of label classes (a language model's vocabulary).
    train_groups: `[num_train]` int natural group key of each training row
      (for example the device that produced it), or None if the dataset has
      none; the 'natural' partition needs it.
    test_groups: `[num_test]` int group key of each test row, in the same
      key space as `train_groups` (a group may have rows in only one split),
      or None.
    input_vocab: for inputs of token ids, how many ids a model embeds
      (`[0, input_vocab)`; a loader may reserve ids outside it, such as -1
      for padding, and says so), or None.
  """

  name: str
  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  train_groups: np.ndarray | None = None
  test_groups: np.ndarray | None = None
  input_vocab: int | None = None

  def __post_init__(self):
    _check_splits(self.name, self.train_x, self.train_y, self.test_x,
                  self.test_y)
    for split, groups, y in (('train', self.train_groups, self.train_y),
                             ('test', self.test_groups, self.test_y)):
      if groups is not None and len(groups) != len(y):
        raise ValueError(
            f'{self.name}: {split}_groups has {len(groups)} entries but '
            f'there are {len(y)} {split} rows.')


@dataclasses.dataclass(frozen=True)
class NewClients:
  """Clients that never train, scored at evaluation on how well a model
  personalized from their own training split serves them (new-client
  generalization; e.g. Fallah et al. 2020, Collins et al. 2021).

  Attributes:
    client_indices: each new client's training rows of `train_x`.
    local_test_indices: each new client's held-out rows of `train_x`.
  """

  client_indices: ClientIndices
  local_test_indices: ClientIndices

  def __post_init__(self):
    if len(self.client_indices) != len(self.local_test_indices):
      raise ValueError('New clients need as many held-out splits as '
                       'training splits.')

  @property
  def num_clients(self) -> int:
    return len(self.client_indices)


@dataclasses.dataclass(frozen=True)
class FederatedDataset:
  """Training rows of every client and a global test split.

  Attributes:
    name: dataset name, as given to `fedjax_core.data.datasets.load_dataset`.
    train_x: `[num_train, *example_shape]` inputs of all clients (uint8
      images, float32 features or int32 token ids).
    train_y: `[num_train, ...]` labels, of a kind of `fedjax_core.targets`
      (as `CentralDataset.train_y`).
    client_indices: the training rows of each client.
    test_x: `[num_test, *example_shape]` global held-out inputs.
    test_y: `[num_test, ...]` held-out labels, of the same kind.
    num_classes: number of label classes.
    local_test_indices: rows of `train_x` each client holds out from
      training as its own test split (for per-client metrics), or None.
    partition_info: how the clients were made (scheme and arguments), for
      the run's records, or None.
    new_clients: clients held out of training (`client_indices` holds the
      others), or None.
    input_vocab: how many token ids token inputs take, or None.
  """

  name: str
  train_x: np.ndarray
  train_y: np.ndarray
  client_indices: ClientIndices
  test_x: np.ndarray
  test_y: np.ndarray
  num_classes: int
  local_test_indices: ClientIndices | None = None
  partition_info: dict[str, Any] | None = None
  new_clients: NewClients | None = None
  input_vocab: int | None = None

  def __post_init__(self):
    _check_splits(self.name, self.train_x, self.train_y, self.test_x,
                  self.test_y)
    if not isinstance(self.client_indices, ClientIndices):
      object.__setattr__(self, 'client_indices',
                         ClientIndices.from_lists(self.client_indices))
    empty = np.flatnonzero(self.client_indices.sizes == 0)
    if len(empty):
      raise ValueError(
          f'{self.name}: clients {empty[:10].tolist()} have no training '
          'examples; use fewer clients or a partition with a minimum client '
          'size.')
    if (self.local_test_indices is not None and
        len(self.local_test_indices) != self.num_clients):
      raise ValueError(
          f'{self.name}: local_test_indices has {len(self.local_test_indices)}'
          f' clients but client_indices has {self.num_clients}.')

  @property
  def num_clients(self) -> int:
    return len(self.client_indices)

  @property
  def example_shape(self) -> tuple[int, ...]:
    return tuple(self.train_x.shape[1:])

  @property
  def target_kind(self) -> str:
    """The kind of its labels (`fedjax_core.targets.kind`)."""
    return targets.kind(self.train_y[:0])

  @property
  def client_sizes(self) -> np.ndarray:
    """`[num_clients]` int64 training examples per client."""
    return self.client_indices.sizes
