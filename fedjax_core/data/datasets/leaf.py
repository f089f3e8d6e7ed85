"""The LEAF benchmarks, read from the JSON files LEAF's scripts write.

LEAF (Caldas et al., 2018, "LEAF: A Benchmark for Federated Settings",
arXiv:1812.01097, https://github.com/TalwalkarLab/leaf) builds each dataset
with `leaf/data/<name>/preprocess.sh`. With `-t sample` it splits every
user's samples into `leaf/data/<name>/data/train/*.json` and
`.../data/test/*.json` (`data/utils/split_data.py`), each file an object
`{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...],
"y": [...]}}}`; only the intermediate `all_data`, `sampled_data` and
`rem_user_data` files of Shakespeare also hold "hierarchies" (the play),
which split_data.py drops. With `-t user` the two splits hold different
users, which reads just as well. `data_dir` is LEAF's `data/` directory (the
one holding `femnist/`, `shakespeare/`, `sent140/`, `celeba/`).

A split is every JSON file of its folder in sorted name order, each file's
users in the order of its "user_data" object (which LEAF's
`models/utils/model_utils.read_dir` reads), each user's samples in order.
The group key of a row is the index of its user id among the sorted ids of
all users of both splits. Row counts come from the data, not from
"num_samples": for Shakespeare split_data.py records the test count before
dropping the 79 samples that overlap training. Parsing the JSON dominates
the reading time: Python's json module read FEMNIST-like files at about
17 MB/s on a busy 2-core machine.

This module reads FEMNIST and CelebA; `leaf_text` reads Shakespeare and
Sentiment140.
  * 'leaf_femnist': LEAF stores each 28 x 28 image as 784 floats
    `gray / 255` of NIST SD19's black-on-white scans
    (`data/femnist/preprocess/data_to_json.py`), so the background is 1.0.
    They are stored inverted, ink bright as in MNIST, as uint8
    `255 - round(255 * x)` `[n, 28, 28, 1]`; fedjax's EMNIST loader
    (`fedjax/datasets/emnist.py`, `flip_and_expand`) likewise inverts TFF's
    copy of LEAF's pixels. 62 classes: digits 0-9, upper case 10-35, lower
    case 36-61.
  * 'leaf_celeba': x is an image file name and y is 1.0 if the celebrity
    smiles (`data/celeba/preprocess/metadata_to_json.py`). Images are read
    as LEAF's `models/celeba/cnn.py` reads them: from
    `<data_dir>/celeba/data/raw/img_align_celeba/`, resized to 84 x 84 with
    Pillow's default filter (bicubic for RGB, since Pillow 7), then
    converted to RGB; uint8 `[n, 84, 84, 3]`, 2 classes.
"""

import concurrent.futures
import glob
import itertools
import json
import os
from typing import Callable

import numpy as np
import tqdm
from PIL import Image

from fedjax_core.data.federated import CentralDataset
from fedjax_core.data.datasets.tfds_images import DatasetNotPreparedError

LEAF_URL = 'https://github.com/TalwalkarLab/leaf'
# The full-size commands of LEAF's per-dataset READMEs. Shakespeare's README
# writes '-tf 0.8', which data/utils/preprocess.sh ignores as an unknown
# option; '--tf 0.8' gives the 80/20 split of McMahan et al. (2017) it asks
# for.
PREPARE_COMMANDS = {
    'femnist': './preprocess.sh -s niid --sf 1.0 -k 0 -t sample',
    'shakespeare': './preprocess.sh -s niid --sf 1.0 -k 0 -t sample --tf 0.8',
    'sent140': './preprocess.sh -s niid --sf 1.0 -k 0 -t sample',
    'celeba': './preprocess.sh -s niid --sf 1.0 -k 5 -t sample',
}
_CELEBA_RAW = (' (first download img_align_celeba/, list_attr_celeba.txt '
               'and identity_CelebA.txt from '
               'http://mmlab.ie.cuhk.edu.hk/projects/CelebA.html into '
               'leaf/data/celeba/data/raw/)')
SPLITS = ('train', 'test')

FEMNIST_CLASSES = 62
FEMNIST_SIDE = 28
CELEBA_SIZE = 84  # IMAGE_SIZE of LEAF's models/celeba/cnn.py.
_MIN_IMAGES_FOR_PROGRESS = 1000

# Converts the "x" and "y" lists of one JSON file into arrays.
Convert = Callable[[list, list], tuple[np.ndarray, np.ndarray]]
# x, y and group keys of one split.
Split = tuple[np.ndarray, np.ndarray, np.ndarray]


def not_prepared_error(dataset: str, path: str,
                       problem: str) -> DatasetNotPreparedError:
  """The error for LEAF dataset `dataset` (e.g. 'femnist') whose file or
  folder `path` has `problem`; it says how to prepare the data."""
  raw = _CELEBA_RAW if dataset == 'celeba' else ''
  return DatasetNotPreparedError(
      'data_dir',
      f"LEAF dataset '{dataset}': {problem}: {path}. data_dir must be LEAF's "
      'data/ directory (holding femnist/, shakespeare/, sent140/, celeba/) '
      'after preprocessing. Nothing can be downloaded here: on a machine '
      f'with internet run `git clone {LEAF_URL} && cd leaf/data/{dataset} && '
      f'{PREPARE_COMMANDS[dataset]}`{raw}, then copy leaf/data here and '
      'pass it as data_dir.')


def _json_files(data_dir: str | None, dataset: str, split: str) -> list[str]:
  """The sorted JSON files of one split.

  Raises:
    DatasetNotPreparedError: no data_dir, no split folder or no JSON file.
  """
  if data_dir is None:
    raise not_prepared_error(dataset, '(none given)', 'no data_dir')
  folder = os.path.join(data_dir, dataset, 'data', split)
  if not os.path.isdir(folder):
    raise not_prepared_error(dataset, folder, 'missing directory')
  files = sorted(glob.glob(os.path.join(glob.escape(folder), '*.json')))
  if not files:
    raise not_prepared_error(dataset, folder, 'no JSON files in')
  return files


def _read_file(path: str, convert: Convert):
  """x and y of one JSON file, its users and their row counts."""
  with open(path, encoding='utf-8') as f:
    user_data = json.load(f)['user_data']
  file_x, file_y, users, counts = [], [], [], []
  for user, data in user_data.items():
    if len(data['x']) != len(data['y']):
      raise ValueError(f'{path}: user {user!r} has {len(data["x"])} x but '
                       f'{len(data["y"])} y.')
    users.append(user)
    counts.append(len(data['y']))
    file_x.extend(data['x'])
    file_y.extend(data['y'])
  return (*convert(file_x, file_y), users, counts)


def _read_split(files: list[str], desc: str, convert: Convert):
  """x, y, the user of each block of rows and the blocks' row counts."""
  parts = [_read_file(path, convert) for path in tqdm.tqdm(
      files, desc=desc, unit='file', disable=len(files) < 2)]
  xs, ys, users, counts = zip(*parts)
  return (np.concatenate(xs), np.concatenate(ys),
          list(itertools.chain.from_iterable(users)),
          np.array(list(itertools.chain.from_iterable(counts)), np.int64))


def read_leaf(data_dir: str | None, dataset: str,
              convert: Convert) -> tuple[Split, Split]:
  """Reads both splits of a LEAF dataset prepared with `-t sample` or `-t
  user`.

  Args:
    data_dir: LEAF's data/ directory.
    dataset: LEAF's name of the dataset, e.g. 'femnist'.
    convert: turns one file's concatenated "x" and "y" lists into arrays.

  Returns:
    `(train, test)`, each `(x, y, groups)`: `groups` is the `[n]` int64
    index of each row's user id among the sorted ids of both splits' users.

  Raises:
    DatasetNotPreparedError: a split folder is missing or has no JSON file.
  """
  files = {split: _json_files(data_dir, dataset, split) for split in SPLITS}
  train_x, train_y, train_users, train_counts = _read_split(
      files['train'], f'leaf {dataset} train', convert)
  test_x, test_y, test_users, test_counts = _read_split(
      files['test'], f'leaf {dataset} test', convert)
  _, keys = np.unique(np.array(train_users + test_users, str),
                      return_inverse=True)
  keys = keys.astype(np.int64)
  num_train = len(train_users)
  return ((train_x, train_y, np.repeat(keys[:num_train], train_counts)),
          (test_x, test_y, np.repeat(keys[num_train:], test_counts)))


def int_labels(ys: list, num_classes: int, what: str) -> np.ndarray:
  """`[n]` int32 labels, which must be whole numbers in [0, num_classes)
  (CelebA writes 0.0 and 1.0)."""
  y = np.asarray(ys, np.float64).reshape(-1)
  if len(y) and (np.any(y != np.round(y)) or y.min() < 0 or
                 y.max() >= num_classes):
    raise ValueError(f'{what} labels must be whole numbers in [0, '
                     f'{num_classes}), got values in [{y.min()}, {y.max()}].')
  return y.astype(np.int32)


def _femnist_arrays(xs: list, ys: list) -> tuple[np.ndarray, np.ndarray]:
  pixels = np.array(xs, np.float32)
  if len(xs) and pixels.shape[1:] != (FEMNIST_SIDE**2,):
    raise ValueError(f'LEAF femnist x must be {FEMNIST_SIDE**2} floats, '
                     f'got shape {pixels.shape[1:]}.')
  ink = 255 - np.rint(np.clip(pixels, 0, 1) * 255)
  return (ink.astype(np.uint8).reshape(-1, FEMNIST_SIDE, FEMNIST_SIDE, 1),
          int_labels(ys, FEMNIST_CLASSES, 'LEAF femnist'))


def load_femnist(data_dir: str | None, seed: int = 0) -> CentralDataset:
  """LEAF's FEMNIST: handwritten characters by writer.

  Args:
    data_dir: LEAF's data/ directory, holding femnist/data/{train,test}/.
    seed: unused (LEAF's preprocessing made every random choice).

  Returns:
    A `CentralDataset` named 'leaf_femnist': uint8 `[n, 28, 28, 1]` images,
    ink bright, int32 labels in [0, 62), writers as group keys.

  Raises:
    DatasetNotPreparedError: the JSON files are missing.
    ValueError: an image is not 784 values or a label is out of range.
  """
  del seed
  (train_x, train_y, train_g), (test_x, test_y, test_g) = read_leaf(
      data_dir, 'femnist', _femnist_arrays)
  return CentralDataset(
      name='leaf_femnist', train_x=train_x, train_y=train_y, test_x=test_x,
      test_y=test_y, num_classes=FEMNIST_CLASSES, train_groups=train_g,
      test_groups=test_g)


def _celeba_arrays(xs: list, ys: list) -> tuple[np.ndarray, np.ndarray]:
  return np.array(xs, object), int_labels(ys, 2, 'LEAF celeba')


def _celeba_image(path: str) -> np.ndarray:
  """One image as LEAF's models/celeba/cnn.py `_load_image` makes it."""
  with Image.open(path) as image:
    return np.asarray(
        image.resize((CELEBA_SIZE, CELEBA_SIZE)).convert('RGB'))


def _celeba_images(folder: str, names: np.ndarray, desc: str) -> np.ndarray:
  """uint8 `[n, 84, 84, 3]` images of the files `names` in `folder`, decoded
  by a thread pool (Pillow releases the GIL while decoding and resizing)."""
  images = np.empty((len(names), CELEBA_SIZE, CELEBA_SIZE, 3), np.uint8)
  paths = [os.path.join(folder, name) for name in names]
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
    loaded = pool.map(_celeba_image, paths)
    try:
      for row, image in enumerate(tqdm.tqdm(
          loaded, desc=desc, unit='img', total=len(paths),
          disable=len(paths) < _MIN_IMAGES_FOR_PROGRESS)):
        images[row] = image
    except FileNotFoundError as e:
      raise not_prepared_error('celeba', e.filename, 'missing image') from e
  return images


def load_celeba(data_dir: str | None, seed: int = 0) -> CentralDataset:
  """LEAF's CelebA: smiling or not, by celebrity.

  Args:
    data_dir: LEAF's data/ directory, holding celeba/data/{train,test}/ and
      the images in celeba/data/raw/img_align_celeba/.
    seed: unused (LEAF's preprocessing made every random choice).

  Returns:
    A `CentralDataset` named 'leaf_celeba': uint8 `[n, 84, 84, 3]` images,
    int32 labels (1: smiling), celebrities as group keys.

  Raises:
    DatasetNotPreparedError: the JSON files, the image folder or an image
      is missing.
  """
  del seed
  (train_x, train_y, train_g), (test_x, test_y, test_g) = read_leaf(
      data_dir, 'celeba', _celeba_arrays)
  folder = os.path.join(data_dir, 'celeba', 'data', 'raw', 'img_align_celeba')
  if not os.path.isdir(folder):
    raise not_prepared_error('celeba', folder, 'missing image directory')
  return CentralDataset(
      name='leaf_celeba',
      train_x=_celeba_images(folder, train_x, 'leaf celeba train images'),
      train_y=train_y,
      test_x=_celeba_images(folder, test_x, 'leaf celeba test images'),
      test_y=test_y, num_classes=2, train_groups=train_g, test_groups=test_g)


LOADERS = {'leaf_femnist': load_femnist, 'leaf_celeba': load_celeba}
