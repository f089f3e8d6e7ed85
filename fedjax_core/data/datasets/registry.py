"""Federated datasets by name: load the arrays, then split them into clients.

'digits': scikit-learn's UCI digits. 'synthetic': Synthetic(alpha, beta) of
FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous
Networks", arXiv:1812.06127), whose devices are a natural grouping. The
TFDS image datasets (`tfds_images.TFDS_NAMES`) are read from a prepared
TFDS data directory. The next-character text datasets (`text.TEXT_NAMES`:
'pydoc_topics', built in, and 'shakespeare', from TFDS) are grouped by
document, one client per document by default. The standard federated
benchmarks are read from files a user downloaded elsewhere, with their
natural clients: TFF's SQLite files (`tff`, `tff_stackoverflow`), LEAF's
JSON directories (`leaf`, `leaf_text`) and saved Hugging Face datasets
('huggingface', one client per value of a column). Any partition of
`fedjax_core.data.partition` applies to any dataset ('natural' needs a group
key, which 'synthetic', the text datasets and the benchmarks have; the
label-based partitions need one class per example).

A dataset can be cut into two disjoint parts (`DATA_PARTS`), so that a model
pre-trained centrally on one ('pretrain') can be fine-tuned federatedly on
the other ('finetune'); see `select_part`.
"""

import dataclasses
from typing import Any

import numpy as np

from fedjax_core import streams
from fedjax_core.data import partition as partition_lib
from fedjax_core.errors import SettingError
from fedjax_core.data.client_indices import ClientIndices
from fedjax_core.data.federated import CentralDataset, FederatedDataset
from fedjax_core.data.federated import NewClients
from fedjax_core.data.source_local_test import source_local_test
from fedjax_core.data.datasets import huggingface
from fedjax_core.data.datasets import leaf
from fedjax_core.data.datasets import leaf_text
from fedjax_core.data.datasets import text
from fedjax_core.data.datasets import tff
from fedjax_core.data.datasets import tff_stackoverflow
from fedjax_core.data.datasets import tfds_images
from fedjax_core.data.datasets.digits import load_digits
from fedjax_core.data.datasets.synthetic import load_synthetic

# The federated benchmarks read from files a user downloaded (each module's
# LOADERS: name -> loader(data_dir=..., seed=...) -> CentralDataset).
_FILE_LOADERS = {**leaf.LOADERS, **leaf_text.LOADERS, **tff.LOADERS,
                 **tff_stackoverflow.LOADERS}
DATASET_NAMES = ('digits', 'synthetic', *tfds_images.TFDS_NAMES,
                 *text.TEXT_NAMES, *_FILE_LOADERS, huggingface.NAME)
DATA_PARTS = ('all', 'pretrain', 'finetune')
# Where the clients' own test splits come from (`load_dataset`).
LOCAL_TESTS = ('holdout', 'source')
# Populations and partitions used when none is asked for; the text datasets
# default to one client per group.
_DEFAULT_CLIENTS = {'digits': 20, 'synthetic': 30}
# Datasets with one client per natural group (document, speaker, writer,
# user) unless a population is asked for.
_PER_GROUP = (*text.TEXT_NAMES, *_FILE_LOADERS, huggingface.NAME)
_DEFAULT_PARTITION = {'synthetic': 'natural',
                      **dict.fromkeys(_PER_GROUP, 'natural')}
_TFDS_DEFAULT_CLIENTS = 100  # FL-Simulator's default population.


def default_num_clients(name: str) -> int | None:
  """The population `load_dataset` splits `name` into when none is given;
  None for the text datasets, whose one client per group is known once
  loaded."""
  if name in _PER_GROUP:
    return None
  return _DEFAULT_CLIENTS.get(name, _TFDS_DEFAULT_CLIENTS)


def check_local_test_fraction(fraction: float,
                              local_test: str = 'holdout') -> None:
  """Raises SettingError unless `fraction` of each client's rows can be
  held out as its test split (0 <= fraction < 1), and is 0 when the
  clients' test splits come from the source (`local_test` 'source')."""
  if local_test not in LOCAL_TESTS:
    raise SettingError('local_test', f"Unknown local test split "
                       f"'{local_test}'; valid: {', '.join(LOCAL_TESTS)}.")
  if not 0 <= fraction < 1:
    raise SettingError('local_test_fraction', 'local_test_fraction must be '
                       f'in [0, 1), got {fraction}.')
  if local_test == 'source' and fraction > 0:
    raise SettingError(
        'local_test_fraction', "With the source's test rows as the clients' "
        'test splits (local_test=source), hold out nothing more: leave '
        'local_test_fraction at 0.')


def has_local_tests(local_test_fraction: float,
                    local_test: str = 'holdout') -> bool:
  """Whether the clients get test splits of their own."""
  return local_test == 'source' or local_test_fraction > 0


def check_holdout_clients(fraction: float, local_tests: bool) -> None:
  """Raises SettingError unless `fraction` of the clients can be held out
  of training as new clients: 0 <= fraction < 1, and clients have test
  splits of their own (`local_tests`, see `has_local_tests`) to score them
  on."""
  if not 0 <= fraction < 1:
    raise SettingError('holdout_clients', 'holdout_clients must be in '
                       f'[0, 1), got {fraction}.')
  if fraction > 0 and not local_tests:
    raise SettingError(
        'holdout_clients', 'New clients (holdout_clients) are scored on '
        'their own held-out rows; set local_test_fraction too (e.g. 0.2).')


def _hold_out_clients(client_indices: ClientIndices,
                      local_test: ClientIndices, fraction: float,
                      seed: int) -> tuple[ClientIndices, ClientIndices,
                                          NewClients]:
  """Splits off `round(fraction * N)` seeded clients as new clients; the
  training and held-out rows of the others, and the new clients."""
  num_clients = len(client_indices)
  count = round(fraction * num_clients)
  if not 1 <= count < num_clients:
    raise SettingError(
        'holdout_clients', f'holdout_clients={fraction} holds out {count} '
        f'of {num_clients} clients; at least one must train and one be '
        'new. Change it or the number of clients.')
  rng = np.random.default_rng((seed, streams.HOLDOUT_CLIENTS))
  new = np.zeros(num_clients, bool)
  new[rng.choice(num_clients, count, replace=False)] = True
  kept = np.flatnonzero(~new)
  new_clients = NewClients(client_indices.select(np.flatnonzero(new)),
                           local_test.select(np.flatnonzero(new)))
  return client_indices.select(kept), local_test.select(kept), new_clients


def default_partition(name: str) -> str:
  """The partition `load_dataset` uses for `name` when none is given."""
  return _DEFAULT_PARTITION.get(name, 'dirichlet')


def _check_part(part: str):
  if part not in DATA_PARTS:
    raise ValueError(f"Unknown data part '{part}'; valid parts: "
                     f"{', '.join(DATA_PARTS)}.")


def _balanced_halves(sizes: np.ndarray) -> np.ndarray:
  """Whether each group goes to the first of two halves of about equal size.

  The longest-processing-time rule (Graham, 1969, "Bounds on
  Multiprocessing Timing Anomalies", SIAM J. Appl. Math.): the groups, in
  decreasing order of size (ties by index), each go to the half with the
  smaller total so far, the first one on ties. The totals differ by at most
  the largest group.
  """
  first = np.zeros(len(sizes), bool)
  totals = [0, 0]
  for group in np.argsort(-sizes, kind='stable'):
    half = int(totals[1] < totals[0])
    first[group] = half == 0
    totals[half] += sizes[group]
  return first


def select_part(central: CentralDataset, part: str) -> CentralDataset:
  """The rows of `central` in part `part`, one of `DATA_PARTS`.

  'all' is the whole dataset. 'pretrain' and 'finetune' are disjoint and
  together hold every training and every test row, cut deterministically:
    * A dataset with group keys on both splits (the text datasets) is cut by
      group: the groups (their training plus test rows) are dealt into two
      halves of about equal size by `_balanced_halves`, the first being
      'pretrain'. A group's training and test rows stay together, so the
      fine-tuning clients are documents or speakers the base model never
      saw.
    * Any other dataset is cut by label: 'pretrain' holds the labels below
      `num_classes // 2` and 'finetune' the rest.
  `num_classes` and the group keys are kept as they are: the 'natural'
  partition takes any keys, gaps included.

  Args:
    central: the whole dataset.
    part: the part to keep.

  Returns:
    The `CentralDataset` of the part's rows, in their original order.

  Raises:
    ValueError: on an unknown `part`, or a part without training rows.
  """
  _check_part(part)
  if part == 'all':
    return central
  if central.train_groups is not None and central.test_groups is not None:
    keys, group_of_row = np.unique(
        np.concatenate([central.train_groups, central.test_groups]),
        return_inverse=True)
    pretrain_keys = keys[_balanced_halves(np.bincount(group_of_row))]
    train_in = np.isin(central.train_groups, pretrain_keys)
    test_in = np.isin(central.test_groups, pretrain_keys)
  else:
    train_in = central.train_y < central.num_classes // 2
    test_in = central.test_y < central.num_classes // 2
  if part == 'finetune':
    train_in, test_in = ~train_in, ~test_in
  if not train_in.any():
    raise SettingError(
        'part', f"{central.name}: part '{part}' has no training rows (too "
        "few groups or labels to cut in two); use part 'all'.")
  train_groups, test_groups = (
      None if groups is None else groups[keep]
      for groups, keep in ((central.train_groups, train_in),
                           (central.test_groups, test_in)))
  return dataclasses.replace(
      central, train_x=central.train_x[train_in],
      train_y=central.train_y[train_in], test_x=central.test_x[test_in],
      test_y=central.test_y[test_in], train_groups=train_groups,
      test_groups=test_groups)


def load_central(name: str, *, num_clients: int, seed: int = 0,
                 data_dir: str | None = None, synthetic_alpha: float = 1.0,
                 synthetic_beta: float = 1.0, part: str = 'all',
                 hf: huggingface.HFSource | None = None) -> CentralDataset:
  """The arrays of dataset `name`, or of one part, before any split into
  clients.

  Args:
    name: one of `DATASET_NAMES`.
    num_clients: synthetic only: the number of devices generated.
    seed: seed of the loader's random choices (digits' held-out split,
      synthetic's draws).
    data_dir: TFDS datasets (images and 'shakespeare') only: the TFDS data
      directory.
    synthetic_alpha: synthetic only: spread of the devices' models.
    synthetic_beta: synthetic only: spread of the devices' inputs.
    part: one of `DATA_PARTS`: the whole dataset or one of two disjoint
      parts of it (`select_part`).
    hf: 'huggingface' only: where the dataset lies and which columns to
      use.

  Returns:
    The `CentralDataset`.

  Raises:
    ValueError: on an unknown `name` or `part`, a part without training
      rows, or a TFDS dataset that is not prepared (the message says how to
      prepare it).
  """
  _check_part(part)
  if name == 'digits':
    central = load_digits(seed=seed)
  elif name == 'synthetic':
    central = load_synthetic(alpha=synthetic_alpha, beta=synthetic_beta,
                             num_devices=num_clients, seed=seed)
  elif name in tfds_images.TFDS_NAMES:
    central = tfds_images.load_tfds(name, data_dir=data_dir)
  elif name == 'pydoc_topics':
    central = text.load_pydoc_topics()
  elif name in text.TFDS_TEXT_NAMES:
    central = text.load_tfds_text(name, data_dir=data_dir)
  elif name in _FILE_LOADERS:
    central = _FILE_LOADERS[name](data_dir=data_dir, seed=seed)
  elif name == huggingface.NAME:
    if hf is None:
      raise SettingError(
          'hf_path', f"Dataset '{name}' reads a saved Hugging Face dataset; "
          'give its path and the column whose values are the clients.')
    central = huggingface.load_hf(hf, seed=seed)
  else:
    raise ValueError(f"Unknown dataset '{name}'; valid datasets: "
                     f"{', '.join(DATASET_NAMES)}.")
  return select_part(central, part)


def subsample_test(central: CentralDataset, count: int | None,
                   seed: int) -> CentralDataset:
  """`central` with `count` seeded rows of its test split (in their
  order), or unchanged if `count` is None or covers the split, so that a
  huge test split (StackOverflow's 16.6 million sentences) is evaluated on
  a sample.

  Raises:
    SettingError: if `count` is below 1.
  """
  if count is None or count >= len(central.test_y):
    return central
  if count < 1:
    raise SettingError('test_examples', 'test_examples must be >= 1, got '
                       f'{count}.')
  rng = np.random.default_rng((seed, streams.TEST_SUBSAMPLE))
  rows = np.sort(rng.choice(len(central.test_y), count, replace=False))
  return dataclasses.replace(
      central, test_x=central.test_x[rows], test_y=central.test_y[rows],
      test_groups=(None if central.test_groups is None
                   else central.test_groups[rows]))


def federate(central: CentralDataset, client_indices, *,
             local_test_fraction: float = 0.0,
             local_test: ClientIndices | None = None,
             holdout_clients: float = 0.0, seed: int = 0,
             partition_info: dict[str, Any] | None = None
             ) -> FederatedDataset:
  """Gives each client its rows and, optionally, a local test split.

  Args:
    central: the loaded arrays.
    client_indices: `ClientIndices` of the training rows per client.
    local_test_fraction: share of each client's rows held out as its own
      test split (`ClientIndices.hold_out`); 0 holds out nothing.
    local_test: each client's test rows (of `central.train_x`) when they
      are given rather than held out (`source_local_test`), or None.
    holdout_clients: share of the clients that never train, kept as
      `new_clients` (needs test rows per client).
    seed: seed of the hold-out draws.
    partition_info: how the split was made, kept for the run's records.

  Returns:
    The `FederatedDataset`.
  """
  check_local_test_fraction(
      local_test_fraction, 'holdout' if local_test is None else 'source')
  check_holdout_clients(holdout_clients,
                        local_test is not None or local_test_fraction > 0)
  new_clients = None
  if local_test_fraction > 0:
    client_indices, local_test = client_indices.hold_out(local_test_fraction,
                                                         seed)
    if not len(local_test.rows):
      raise SettingError(
          'local_test_fraction',
          f'local_test_fraction={local_test_fraction} holds out no row: '
          'every client is too small. Raise it or use fewer clients.')
  if holdout_clients > 0:
    client_indices, local_test, new_clients = _hold_out_clients(
        client_indices, local_test, holdout_clients, seed)
    partition_info = {**(partition_info or {}),
                      'new_clients': new_clients.num_clients}
  return FederatedDataset(
      name=central.name, train_x=central.train_x, train_y=central.train_y,
      client_indices=client_indices, test_x=central.test_x,
      test_y=central.test_y, num_classes=central.num_classes,
      local_test_indices=local_test, partition_info=partition_info,
      new_clients=new_clients, input_vocab=central.input_vocab)


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
                 holdout_clients: float = 0.0,
                 data_dir: str | None = None,
                 synthetic_alpha: float = 1.0,
                 synthetic_beta: float = 1.0,
                 part: str = 'all',
                 hf: huggingface.HFSource | None = None,
                 local_test: str = 'holdout',
                 test_examples: int | None = None) -> FederatedDataset:
  """Loads a dataset, or one part of it, and splits it across clients.

  Args:
    name: one of `DATASET_NAMES`.
    num_clients: number of clients; None gives 20 for digits, 30 devices
      for synthetic, 100 for the TFDS image datasets and, for the text
      datasets, one per group (document or speaker) of the part loaded.
    seed: seed of every random choice of the loader and the partition.
    partition: one of `partition.PARTITION_NAMES`; None gives 'natural' for
      synthetic and the text datasets and 'dirichlet' otherwise.
    dirichlet_alpha: concentration of both Dirichlet partitions.
    classes_per_client: shards (about classes) per client of 'pathological'.
    size_sigma: lognormal spread of client sizes for 'quantity_skew'
      (default 1) and 'dirichlet_equal' (default 0: equal sizes).
    min_client_size: fewest examples per client of 'dirichlet' and
      'quantity_skew'.
    local_test_fraction: share of each client's rows held out as its own
      test split, for per-client metrics.
    holdout_clients: share of the clients held out of training as new
      clients (`FederatedDataset.new_clients`).
    data_dir: TFDS datasets (images and 'shakespeare') only: the TFDS data
      directory.
    synthetic_alpha: synthetic only: spread of the devices' models.
    synthetic_beta: synthetic only: spread of the devices' inputs.
    part: one of `DATA_PARTS`: the whole dataset or one of two disjoint
      parts of it (`select_part`).
    hf: 'huggingface' only: where the dataset lies and which columns to
      use.
    local_test: one of `LOCAL_TESTS`: 'holdout' holds out
      `local_test_fraction` of each client's rows as its test split;
      'source' takes each client's own rows of the source's test split
      (`source_local_test`; one client per natural group).
    test_examples: evaluate on this many seeded rows of the global test
      split (`subsample_test`); None keeps it whole. Clients' own test
      rows are taken before, from the whole split.

  Returns:
    The `FederatedDataset`, with `partition_info` naming the scheme and its
    arguments, `part` among them.

  Raises:
    ValueError: on an unknown `name`, partition or `part`, or arguments the
      partition cannot satisfy.
  """
  # The text datasets' default population, one client per group of the
  # part, is known once loaded; their loaders ignore num_clients.
  per_group = num_clients is None and name in _PER_GROUP
  if num_clients is None:
    num_clients = default_num_clients(name) or _TFDS_DEFAULT_CLIENTS
  partition = partition or default_partition(name)
  central = load_central(name, num_clients=num_clients, seed=seed,
                         data_dir=data_dir, synthetic_alpha=synthetic_alpha,
                         synthetic_beta=synthetic_beta, part=part, hf=hf)
  if per_group:
    num_clients = len(np.unique(central.train_groups))
  args = dict(num_clients=num_clients, seed=seed,
              dirichlet_alpha=dirichlet_alpha,
              classes_per_client=classes_per_client, size_sigma=size_sigma,
              min_client_size=min_client_size)
  check_local_test_fraction(local_test_fraction, local_test)
  client_indices = partition_lib.make_partition(
      partition, labels=central.train_y, groups=central.train_groups, **args)
  source_test = None
  if local_test == 'source':
    appended, source_test = source_local_test(central)
    if partition != 'natural' or not per_group:
      raise SettingError(
          'local_test', "The source's test rows are split by natural "
          "client; use partition 'natural' with one client per group (no "
          'num_clients).')
    central = appended
  central = subsample_test(central, test_examples, seed)
  recorded = {**args, 'part': part}
  if source_test is not None:
    recorded['local_test'] = 'source'
  if test_examples is not None:
    recorded['test_examples'] = test_examples
  return federate(central, client_indices,
                  local_test_fraction=local_test_fraction,
                  local_test=source_test,
                  holdout_clients=holdout_clients, seed=seed,
                  partition_info={'scheme': partition, 'args': recorded})
