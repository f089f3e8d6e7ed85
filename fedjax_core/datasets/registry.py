"""Federated datasets by name: load the arrays, then split them into clients.

'digits': scikit-learn's UCI digits. 'synthetic': Synthetic(alpha, beta) of
FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous
Networks", arXiv:1812.06127), whose devices are a natural grouping. The
TFDS image datasets (`tfds_images.TFDS_NAMES`) are read from a prepared
TFDS data directory. Any partition of `fedjax_core.partition` applies to
any dataset ('natural' needs a group key, which only 'synthetic' has).
"""

from typing import Any

from fedjax_core import partition as partition_lib
from fedjax_core.data import CentralDataset, FederatedDataset
from fedjax_core.datasets import tfds_images
from fedjax_core.datasets.digits import load_digits
from fedjax_core.datasets.synthetic import load_synthetic

DATASET_NAMES = ('digits', 'synthetic', *tfds_images.TFDS_NAMES)
# Populations and partitions used when none is asked for.
_DEFAULT_CLIENTS = {'digits': 20, 'synthetic': 30}
_DEFAULT_PARTITION = {'synthetic': 'natural'}
_TFDS_DEFAULT_CLIENTS = 100  # FL-Simulator's default population.


def default_partition(name: str) -> str:
  """The partition `load_dataset` uses for `name` when none is given."""
  return _DEFAULT_PARTITION.get(name, 'dirichlet')


def load_central(name: str, *, num_clients: int, seed: int = 0,
                 data_dir: str | None = None, synthetic_alpha: float = 1.0,
                 synthetic_beta: float = 1.0) -> CentralDataset:
  """The arrays of dataset `name`, before any split into clients.

  Args:
    name: one of `DATASET_NAMES`.
    num_clients: synthetic only: the number of devices generated.
    seed: seed of the loader's random choices (digits' held-out split,
      synthetic's draws).
    data_dir: TFDS datasets only: the TFDS data directory.
    synthetic_alpha: synthetic only: spread of the devices' models.
    synthetic_beta: synthetic only: spread of the devices' inputs.

  Returns:
    The `CentralDataset`.

  Raises:
    ValueError: on an unknown `name`, or a TFDS dataset that is not
      prepared (the message says how to prepare it).
  """
  if name == 'digits':
    return load_digits(seed=seed)
  if name == 'synthetic':
    return load_synthetic(alpha=synthetic_alpha, beta=synthetic_beta,
                          num_devices=num_clients, seed=seed)
  if name in tfds_images.TFDS_NAMES:
    return tfds_images.load_tfds(name, data_dir=data_dir)
  raise ValueError(
      f"Unknown dataset '{name}'; valid datasets: {', '.join(DATASET_NAMES)}.")


def federate(central: CentralDataset, client_indices, *,
             local_test_fraction: float = 0.0, seed: int = 0,
             partition_info: dict[str, Any] | None = None
             ) -> FederatedDataset:
  """Gives each client its rows and, optionally, a local test split.

  Args:
    central: the loaded arrays.
    client_indices: `ClientIndices` of the training rows per client.
    local_test_fraction: share of each client's rows held out as its own
      test split (`ClientIndices.hold_out`); 0 holds out nothing.
    seed: seed of the hold-out draw.
    partition_info: how the split was made, kept for the run's records.

  Returns:
    The `FederatedDataset`.
  """
  if not 0 <= local_test_fraction < 1:
    raise ValueError(f'--local_test_fraction must be in [0, 1), got '
                     f'{local_test_fraction}.')
  local_test = None
  if local_test_fraction > 0:
    client_indices, local_test = client_indices.hold_out(local_test_fraction,
                                                         seed)
    if not len(local_test.rows):
      raise ValueError(
          f'--local_test_fraction={local_test_fraction} holds out no row: '
          'every client is too small. Raise it or use fewer clients.')
  return FederatedDataset(
      name=central.name, train_x=central.train_x, train_y=central.train_y,
      client_indices=client_indices, test_x=central.test_x,
      test_y=central.test_y, num_classes=central.num_classes,
      local_test_indices=local_test, partition_info=partition_info)


def load_dataset(name: str,
                 *,
                 num_clients: int | None = None,
                 seed: int = 0,
                 partition: str | None = None,
                 dirichlet_alpha: float = 0.5,
                 classes_per_client: int = 2,
                 size_sigma: float | None = None,
                 min_client_size: int = 2,
                 local_test_fraction: float = 0.0,
                 data_dir: str | None = None,
                 synthetic_alpha: float = 1.0,
                 synthetic_beta: float = 1.0) -> FederatedDataset:
  """Loads a dataset and splits it across clients.

  Args:
    name: one of `DATASET_NAMES`.
    num_clients: number of clients; None gives 20 for digits, 30 devices
      for synthetic and 100 for the TFDS datasets.
    seed: seed of every random choice of the loader and the partition.
    partition: one of `partition.PARTITION_NAMES`; None gives 'natural' for
      synthetic and 'dirichlet' otherwise.
    dirichlet_alpha: concentration of both Dirichlet partitions.
    classes_per_client: shards (about classes) per client of 'pathological'.
    size_sigma: lognormal spread of client sizes for 'quantity_skew'
      (default 1) and 'dirichlet_equal' (default 0: equal sizes).
    min_client_size: fewest examples per client of 'dirichlet' and
      'quantity_skew'.
    local_test_fraction: share of each client's rows held out as its own
      test split, for per-client metrics.
    data_dir: TFDS datasets only: the TFDS data directory.
    synthetic_alpha: synthetic only: spread of the devices' models.
    synthetic_beta: synthetic only: spread of the devices' inputs.

  Returns:
    The `FederatedDataset`, with `partition_info` naming the scheme and its
    arguments.

  Raises:
    ValueError: on an unknown `name` or partition, or arguments the
      partition cannot satisfy.
  """
  if num_clients is None:
    num_clients = _DEFAULT_CLIENTS.get(name, _TFDS_DEFAULT_CLIENTS)
  partition = partition or default_partition(name)
  central = load_central(name, num_clients=num_clients, seed=seed,
                         data_dir=data_dir, synthetic_alpha=synthetic_alpha,
                         synthetic_beta=synthetic_beta)
  args = dict(num_clients=num_clients, seed=seed,
              dirichlet_alpha=dirichlet_alpha,
              classes_per_client=classes_per_client, size_sigma=size_sigma,
              min_client_size=min_client_size)
  client_indices = partition_lib.make_partition(
      partition, labels=central.train_y, groups=central.train_groups, **args)
  return federate(central, client_indices,
                  local_test_fraction=local_test_fraction, seed=seed,
                  partition_info={'scheme': partition, 'args': args})
