"""Hugging Face datasets on disk, one client per value of a column.

Reads a dataset a user saved with `datasets` (Lhoest et al., 2021,
"Datasets: A Community Library for Natural Language Processing", EMNLP
demos; https://huggingface.co/docs/datasets): a directory written by
`Dataset.save_to_disk` or `DatasetDict.save_to_disk` (read with
`datasets.load_from_disk`), a `.parquet` file, or a directory of `.parquet`
files (read with `datasets.load_dataset('parquet', ...)`, whose split names
follow the Hub's file-name conventions: a file or folder named with 'train'
or 'training' is training data, 'test', 'testing', 'eval' or 'evaluation'
test data, and `data/{split}-00000-of-00001.parquet` names its split;
https://huggingface.co/docs/hub/datasets-file-names-and-splits).

Clients are the values of one column, as Flower Datasets'
`NaturalIdPartitioner(partition_by=COLUMN)` makes them (Beutel et al.,
2020, "Flower: A Friendly Federated Learning Research Framework",
arXiv:2007.14390; https://flower.ai/docs/datasets/): FEMNIST's
'writer_id', Shakespeare's 'character_id', Sentiment140's 'user'. A row's
group key is the index of its value in the sorted values of both splits.

Splits: 'train' and 'test' when both are present. Otherwise the one split
(or 'train', other splits ignored) is cut per client as LEAF's
`split_data.py` cuts each user (Caldas et al., 2018, "LEAF: A Benchmark for
Federated Settings", arXiv:1812.01097, `--tf 0.9`): a client of `n >= 2`
rows keeps `max(1, floor(0.9 n))` seeded random rows for training and holds
out the rest (about 10%) as test rows under its own key; a client of one
row keeps it for training (LEAF drops such users).

Nothing is downloaded: on a machine with internet, e.g.
`python -c "import datasets; datasets.load_dataset('flwrlabs/femnist')
.save_to_disk('DIR')"`, then copy DIR here.
"""

import os
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tqdm

from fedjax_core import streams
from fedjax_core.data import client_indices
from fedjax_core.data.federated import CentralDataset
from fedjax_core.data.datasets.tfds_images import DatasetNotPreparedError
from fedjax_core.errors import SettingError

NAME = 'huggingface'
TRAIN_FRACTION = 0.9  # LEAF's `--tf 0.9` per-client split.
_CHUNK_SIZE = 4096
_MIN_EXAMPLES_FOR_PROGRESS = 10_000
_TEXT_TYPES = ('string', 'large_string')


class HFSource(NamedTuple):
  """Where a Hugging Face dataset lies and which columns to use.

  Attributes:
    path: a `save_to_disk` directory, a `.parquet` file or a directory of
      `.parquet` files.
    partition_by: the column whose values are the clients.
    features: the input column; None picks the single `Image` column, else
      the single column left besides the label and `partition_by`.
    label: the integer label column; None picks the single `ClassLabel`
      column, else the column named 'label'.
  """

  path: str
  partition_by: str
  features: str | None = None
  label: str | None = None


def _not_prepared(path: str, problem: str) -> DatasetNotPreparedError:
  return DatasetNotPreparedError(
      'hf_path',
      f'{path} {problem}. It must be a directory written by '
      "Dataset.save_to_disk or DatasetDict.save_to_disk, a '.parquet' file "
      "or a directory of '.parquet' files (https://huggingface.co/datasets)."
      ' Nothing can be downloaded here: on a machine with internet run '
      '`python -c "import datasets; datasets.load_dataset(\'flwrlabs/femnist'
      '\').save_to_disk(\'DIR\')"` (any Hub dataset), then copy DIR here.')


def _parquet_files(path: str) -> dict[str, list[str]]:
  """The `.parquet` files of `path` by split, as the Hub names splits."""
  from datasets import data_files  # pylint: disable=g-import-not-at-top
  if os.path.isfile(path):
    if not path.endswith('.parquet'):
      raise _not_prepared(path, "is a file but not a '.parquet' file")
    return {'train': [path]}
  try:
    found = data_files.DataFilesDict.from_patterns(
        data_files.get_data_patterns(path), base_path=path)
  except data_files.EmptyDatasetError:
    found = {}
  found = {split: list(files.filter(extensions=['.parquet']))
           for split, files in found.items()}
  found = {split: files for split, files in found.items() if files}
  if not found:
    raise _not_prepared(path, "holds neither a saved dataset nor '.parquet' "
                        'files')
  return found


def _open(path: str) -> dict:
  """The splits of the dataset at `path`, as `datasets.Dataset`s by name."""
  import datasets  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise _not_prepared(path, 'does not exist')
  saved = (datasets.config.DATASETDICT_JSON_FILENAME,
           datasets.config.DATASET_STATE_JSON_FILENAME)
  if os.path.isdir(path) and any(
      os.path.isfile(os.path.join(path, name)) for name in saved):
    loaded = datasets.load_from_disk(path)
  else:
    loaded = datasets.load_dataset('parquet', data_files=_parquet_files(path))
  if isinstance(loaded, datasets.Dataset):
    return {'train': loaded}
  return dict(loaded)


def _choose_splits(path: str, splits: dict):
  """`(train, test)` datasets; test is None when it must be held out."""
  if 'train' in splits and 'test' in splits:
    return splits['train'], splits['test']
  if 'train' in splits:
    return splits['train'], None
  if len(splits) == 1:
    (whole,) = splits.values()
    return whole, None
  raise SettingError(
      'hf_path', f"{path} has splits {', '.join(splits)} but no 'train' "
      "split; keep one split, or name them 'train' and 'test'.")


def _check_column(setting: str, column: str, features) -> str:
  if column not in features:
    raise SettingError(
        setting, f"There is no column '{column}'; the columns are "
        f"{', '.join(features)}.")
  return column


def _pick_label(source: HFSource, features) -> str:
  """The label column: the one asked for, else the single `ClassLabel`
  column, else 'label'."""
  import datasets  # pylint: disable=g-import-not-at-top
  if source.label is not None:
    return _check_column('hf_label', source.label, features)
  class_labels = [c for c, f in features.items()
                  if isinstance(f, datasets.ClassLabel)
                  and c != source.partition_by]
  if len(class_labels) == 1:
    return class_labels[0]
  if 'label' in features:
    return 'label'
  raise SettingError(
      'hf_label', f'Name the label column: there are {len(class_labels)} '
      "ClassLabel columns and none named 'label'; the columns are "
      f"{', '.join(features)}.")


def _pick_features(source: HFSource, label: str, features) -> str:
  """The input column: the one asked for, else the single `Image` column,
  else the single column besides the label and the partition column."""
  import datasets  # pylint: disable=g-import-not-at-top
  if source.features is not None:
    return _check_column('hf_features', source.features, features)
  images = [c for c, f in features.items() if isinstance(f, datasets.Image)]
  if len(images) == 1:
    return images[0]
  rest = [c for c in features if c not in (label, source.partition_by)]
  if len(rest) == 1:
    return rest[0]
  raise SettingError(
      'hf_features', f'Name the input column: besides the label '
      f"'{label}' and the partition column '{source.partition_by}' there "
      f"are the columns {', '.join(rest) or 'none'} and not one Image "
      'column.')


def _reject_text(setting: str, column: str, feature) -> None:
  """Raises SettingError for a string column: text is not supported yet."""
  if getattr(feature, 'dtype', None) in _TEXT_TYPES:
    raise SettingError(
        setting, f"Column '{column}' holds text; text columns are not "
        'supported yet (tokenize them into integer sequences first).')


def _images(dataset, column: str) -> np.ndarray:
  """uint8 `[n, H, W, C]` images of `column`, decoded in chunks."""
  n = len(dataset)
  rows = dataset.select_columns([column]).with_format('numpy')
  x = None
  with tqdm.tqdm(total=n, desc=f'{NAME} {column}', unit='ex',
                 disable=n < _MIN_EXAMPLES_FOR_PROGRESS) as bar:
    for start in range(0, n, _CHUNK_SIZE):
      chunk = rows[start:start + _CHUNK_SIZE][column]
      if chunk.dtype == object:  # Images of several shapes.
        shapes = sorted({np.shape(image) for image in chunk})
        raise SettingError(
            'hf_features', f"Images of column '{column}' differ in size "
            f'({shapes[:4]}); all images must share one size and mode.')
      if chunk.ndim == 3:  # Grayscale.
        chunk = chunk[..., None]
      if x is None:
        x = np.empty((n, *chunk.shape[1:]), np.uint8)
      if chunk.dtype != np.uint8 or chunk.shape[1:] != x.shape[1:]:
        raise SettingError(
            'hf_features', f"Images of column '{column}' differ in size or "
            f'are not 8-bit: {x.shape[1:]} and {chunk.shape[1:]} '
            f'{chunk.dtype}; all images must be 8-bit and share one size.')
      x[start:start + len(chunk)] = chunk
      bar.update(len(chunk))
  return x


def _inputs(dataset, column: str) -> np.ndarray:
  """The inputs of `column`: uint8 `[n, H, W, C]` images, or float32
  `[n, ...]` numeric arrays (a number per row gives `[n, 1]`)."""
  import datasets  # pylint: disable=g-import-not-at-top
  feature = dataset.features[column]
  _reject_text('hf_features', column, feature)
  if isinstance(feature, datasets.Image):
    return _images(dataset, column)
  x = dataset.select_columns([column]).with_format('numpy')[:][column]
  if x.dtype.kind in 'OUS' or not (np.issubdtype(x.dtype, np.number) or
                                   x.dtype == bool):
    raise SettingError(
        'hf_features', f"Column '{column}' ({feature}) is not a numeric "
        'array of one shape per row; give a fixed-length numeric column or '
        'an Image column.')
  x = x.astype(np.float32)
  return x[:, None] if x.ndim == 1 else x


def _column(dataset, column: str) -> pa.ChunkedArray:
  return dataset.with_format('arrow')[column]


def _labels(dataset, column: str) -> np.ndarray:
  """int64 `[n]` labels of `column`."""
  _reject_text('hf_label', column, dataset.features[column])
  values = _column(dataset, column)
  if not pa.types.is_integer(values.type) or values.null_count:
    raise SettingError(
        'hf_label', f"Label column '{column}' must hold integers without "
        f'missing values, got {values.type} with {values.null_count} '
        'missing.')
  return values.to_numpy().astype(np.int64)


def _group_keys(train, test, column: str) -> tuple[np.ndarray, ...]:
  """int64 index of each row's `column` value in the sorted values of both
  splits, per split."""
  values = [_column(split, column) for split in (train, test)
            if split is not None]
  if any(v.null_count for v in values):
    raise SettingError('hf_partition_by', f"Column '{column}' has missing "
                       'values; every row needs a client.')
  keys = pc.unique(pa.chunked_array(
      [c for v in values for c in v.chunks], values[0].type))
  keys = keys.take(pc.array_sort_indices(keys))
  return tuple(pc.index_in(v, value_set=keys).to_numpy().astype(np.int64)
               for v in values)


def hold_out_per_client(groups: np.ndarray, seed: int) -> np.ndarray:
  """Whether each row is held out for testing, LEAF's way per client.

  A client (group) of `n >= 2` rows keeps `max(1, floor(TRAIN_FRACTION *
  n))` random rows and holds out the rest; a client of one row keeps it.

  Args:
    groups: `[n]` int group key of each row.
    seed: seed of the draw (stream `streams.SPLIT_TEST_ROWS`).

  Returns:
    `[n]` bool, True for held-out rows.
  """
  _, group, sizes = np.unique(groups, return_inverse=True,
                              return_counts=True)
  kept = np.maximum(1, np.floor(TRAIN_FRACTION * sizes).astype(np.int64))
  rng = np.random.default_rng((seed, streams.SPLIT_TEST_ROWS))
  starts = np.concatenate([[0], np.cumsum(sizes)])
  rank = client_indices.random_ranks(group, starts, rng.random(len(groups)))
  return rank >= kept[group]


def _num_classes(feature, column: str, *labels: np.ndarray) -> int:
  """The `ClassLabel`'s number of names, else the largest label plus one.

  Raises:
    SettingError: on labels outside [0, num_classes).
  """
  import datasets  # pylint: disable=g-import-not-at-top
  low = min(y.min(initial=0) for y in labels)
  high = max(y.max(initial=-1) for y in labels)
  num_classes = (feature.num_classes
                 if isinstance(feature, datasets.ClassLabel) else high + 1)
  if low < 0 or high >= num_classes:
    raise SettingError(
        'hf_label', f"Labels of column '{column}' span [{low}, {high}], "
        f'outside [0, {num_classes}).')
  return int(num_classes)


def load_hf(source: HFSource, seed: int = 0) -> CentralDataset:
  """Reads a Hugging Face dataset with a group key per row.

  Args:
    source: where the dataset is and which columns to use.
    seed: seed of the per-client test hold-out of a single-split dataset.

  Returns:
    A `CentralDataset` named 'huggingface': uint8 `[n, H, W, C]` images
    (grayscale with C = 1) or float32 `[n, ...]` features, int32 labels,
    `num_classes` from the `ClassLabel`'s names else the largest label plus
    one, and int64 group keys on both splits (see the module docstring).

  Raises:
    DatasetNotPreparedError: if `source.path` holds no dataset.
    SettingError: a missing or unsuitable column (setting 'hf_partition_by',
      'hf_features' or 'hf_label'; the message lists the columns), text
      columns, or splits without 'train'.
  """
  train, test = _choose_splits(source.path, _open(source.path))
  for split in (train, test):
    if split is not None:
      _check_column('hf_partition_by', source.partition_by, split.features)
  label = _pick_label(source, train.features)
  feature = _pick_features(source, label, train.features)
  if test is not None:
    for setting, column in (('hf_label', label), ('hf_features', feature)):
      _check_column(setting, column, test.features)
  train_x, train_y = _inputs(train, feature), _labels(train, label)
  if test is None:
    (train_groups,) = _group_keys(train, None, source.partition_by)
    held = hold_out_per_client(train_groups, seed)
    test_x, test_y, test_groups = (a[held] for a in (train_x, train_y,
                                                     train_groups))
    train_x, train_y, train_groups = (a[~held] for a in (
        train_x, train_y, train_groups))
  else:
    test_x, test_y = _inputs(test, feature), _labels(test, label)
    train_groups, test_groups = _group_keys(train, test, source.partition_by)
  num_classes = _num_classes(train.features[label], label, train_y, test_y)
  return CentralDataset(
      name=NAME, train_x=train_x, train_y=train_y.astype(np.int32),
      test_x=test_x, test_y=test_y.astype(np.int32), num_classes=num_classes,
      train_groups=train_groups, test_groups=test_groups)
