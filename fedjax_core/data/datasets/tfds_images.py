"""Image classification datasets read from prepared TensorFlow Datasets data.

MNIST, Fashion-MNIST, three EMNIST splits and CIFAR-10/100 are read through
TFDS's random-access data sources (`builder.as_data_source`, what
`tfds.data_source(..., download=False)` returns; ArrayRecord, no TensorFlow
needed) into uint8 `[n, H, W, C]` images and int32 labels. Nothing is
downloaded: the data must already be prepared in ArrayRecord format, e.g. on
a machine with internet by
`tfds build mnist --data_dir=DIR --file_format=array_record`.

TFDS (4.9.x) keeps EMNIST images as the EMNIST files store them, transposed
relative to MNIST (its builder stores the raw idx arrays and its description
says the images are "inverted horizontally and rotated 90 anti-clockwise");
`load_tfds` transposes them back to the upright MNIST orientation. TFDS's
EMNIST letters declares 37 classes but its labels are 1..26 (a..z, upper and
lower case merged); `load_tfds` maps them to 0..25 with 26 classes. CIFAR-100
uses the 100 fine labels.

Decoding the PNG-encoded examples in Python dominates the reading time
(about 150 us per example, BUILD_NOTES.md); examples are read in batched
`__getitems__` calls of 4096.
"""

import contextlib
import logging

import numpy as np
import tensorflow_datasets as tfds
import tqdm

from fedjax_core.data.federated import CentralDataset
from fedjax_core.errors import SettingError

TFDS_NAMES = {
    'mnist': 'mnist',
    'fashion_mnist': 'fashion_mnist',
    'emnist_balanced': 'emnist/balanced',
    'emnist_byclass': 'emnist/byclass',
    'emnist_letters': 'emnist/letters',
    'cifar10': 'cifar10',
    'cifar100': 'cifar100',
}

_SPLITS = ('train', 'test')
_CHUNK_SIZE = 4096
_MIN_EXAMPLES_FOR_PROGRESS = 10_000
_LETTERS = 'emnist_letters'
_NUM_LETTERS = 26


class DatasetNotPreparedError(SettingError):
  """The dataset is not in the data dir in a format TFDS can random-access
  (`setting` is 'data_dir')."""


def _not_prepared_error(name: str, tfds_name: str, builder, problem: str,
                        alternative: str) -> DatasetNotPreparedError:
  return DatasetNotPreparedError(
      'data_dir',
      f"Dataset '{name}' (TFDS '{tfds_name}') {problem}. TFDS looked in "
      f'the data dir {builder.data_dir_root} (for {builder.data_dir}; the '
      'data dir is data_dir if given, else $TFDS_DATA_DIR, else '
      '~/tensorflow_datasets). Nothing can be downloaded here: on a machine '
      f'with internet run `tfds build {tfds_name} --data_dir=DIR '
      '--file_format=array_record`, then copy DIR here and pass it as '
      f'data_dir{alternative}.')


def prepared_builder(name: str, tfds_name: str, data_dir: str | None,
                     alternative: str = ''):
  """The TFDS builder of `tfds_name` (our dataset `name`).

  Raises:
    DatasetNotPreparedError: its data are not prepared in a random-access
      format; the message says how to prepare them, then `alternative`.
  """
  with _without_tfds_logs():
    builder = tfds.builder(tfds_name, data_dir=data_dir)
    prepared = builder.is_prepared()
  if not prepared:
    raise _not_prepared_error(name, tfds_name, builder, 'is not prepared',
                              alternative)
  formats = builder.info.available_file_formats()
  random_access = tfds.core.FileFormat.with_random_access()
  if not formats & random_access:
    found = ', '.join(sorted(f.value for f in formats))
    raise _not_prepared_error(
        name, tfds_name, builder, f'is prepared only as {found}, which '
        'tfds.data_source cannot read', alternative)
  return builder


@contextlib.contextmanager
def _without_tfds_logs():
  """Drops TFDS's log lines while it looks for prepared data: it warns about
  version folders that do not exist, which the not-prepared error already
  explains with what to do."""
  def keep(record: logging.LogRecord) -> bool:
    return 'tensorflow_datasets' not in record.pathname
  logger = logging.getLogger('absl')
  logger.addFilter(keep)
  try:
    yield
  finally:
    logger.removeFilter(keep)


def _read_split(builder, name: str, split: str, transpose: bool):
  """Reads a whole split into uint8 images and int64 labels."""
  source = builder.as_data_source(split=split)
  n = len(source)
  height, width, channels = builder.info.features['image'].shape
  if transpose:
    height, width = width, height
  x = np.empty((n, height, width, channels), np.uint8)
  y = np.empty(n, np.int64)
  with tqdm.tqdm(total=n, desc=f'{name} {split}', unit='ex',
                 disable=n < _MIN_EXAMPLES_FOR_PROGRESS) as bar:
    for start in range(0, n, _CHUNK_SIZE):
      stop = min(start + _CHUNK_SIZE, n)
      examples = source.__getitems__(list(range(start, stop)))
      images = np.stack([e['image'] for e in examples])
      x[start:stop] = images.transpose(0, 2, 1, 3) if transpose else images
      y[start:stop] = [e['label'] for e in examples]
      bar.update(stop - start)
  return x, y


def load_tfds(name: str, data_dir: str | None = None) -> CentralDataset:
  """Reads a prepared TFDS image dataset into host memory.

  Args:
    name: one of `TFDS_NAMES`.
    data_dir: TFDS data dir; None uses $TFDS_DATA_DIR, else
      ~/tensorflow_datasets.

  Returns:
    A `CentralDataset` named `name` with uint8 `[n, H, W, C]` images (28 x 28
    x 1 for MNIST, Fashion-MNIST and EMNIST, 32 x 32 x 3 for CIFAR) and int32
    labels in [0, num_classes), without group keys.

  Raises:
    ValueError: on an unknown `name`, or labels outside the expected range.
    DatasetNotPreparedError: if the data are not prepared in `data_dir` in
      ArrayRecord (or another random-access) format.
  """
  if name not in TFDS_NAMES:
    raise ValueError(f"Unknown TFDS dataset '{name}'; valid datasets: "
                     f"{', '.join(TFDS_NAMES)}.")
  builder = prepared_builder(name, TFDS_NAMES[name], data_dir)
  num_classes = builder.info.features['label'].num_classes
  first_label = 0
  if name == _LETTERS:
    num_classes, first_label = _NUM_LETTERS, 1
  arrays = {}
  for split in _SPLITS:
    x, y = _read_split(builder, name, split,
                       transpose=name.startswith('emnist'))
    if len(y) and (y.min() < first_label or
                   y.max() >= first_label + num_classes):
      raise ValueError(
          f'{name}: {split} labels span [{y.min()}, {y.max()}], outside the '
          f'expected [{first_label}, {first_label + num_classes}).')
    arrays[split] = x, (y - first_label).astype(np.int32)
  return CentralDataset(
      name=name,
      train_x=arrays['train'][0],
      train_y=arrays['train'][1],
      test_x=arrays['test'][0],
      test_y=arrays['test'][1],
      num_classes=num_classes)
