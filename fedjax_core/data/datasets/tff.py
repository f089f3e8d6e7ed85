"""TensorFlow Federated's benchmarks with their natural clients, from its files.

Three datasets of `tff.simulation.datasets` (TFF, tensorflow_federated/
python/simulation/datasets/{emnist,cifar100,shakespeare}.py), read from the
SQLite files TFF downloads (`tff_sqlite`, no TensorFlow needed):
  * 'tff_emnist': Federated EMNIST (Cohen et al., 2017, "EMNIST: an
    extension of MNIST to handwritten letters", arXiv:1702.05373; grouped by
    writer by LEAF, Caldas et al., 2018, arXiv:1812.01097), TFF's
    `load_data(only_digits=False)`: 62 classes, 3,400 writers, each with
    training and test examples (splits 'all_train', 'all_test'). TFF
    stores the pixels as float32 in [0, 1] with 1 the white background; as
    FedJAX's `fedjax/datasets/emnist.py` (`1 - pixels`) and TFF's EMNIST
    autoencoder baseline do, they are inverted to ink on black, as in MNIST,
    and kept as uint8 `round(255 * (1 - pixels))`, `[n, 28, 28, 1]`. (TFF's
    character-recognition baseline feeds them uninverted.)
  * 'tff_cifar100': Federated CIFAR-100 (Krizhevsky, 2009; partitioned by
    Pachinko allocation in Reddi et al., 2021, "Adaptive Federated
    Optimization", ICLR): 500 training clients of 100 examples and 100
    test clients, the 100 fine labels. The test clients are not training
    clients: their ids '0'..'99' repeat the training ids, but they hold the
    CIFAR-100 test images, so they get their own keys 500..599. Images are
    uint8 `[n, 32, 32, 3]`; TFF's baseline crops them to 24 x 24, which is
    left to augmentation here.
  * 'tff_shakespeare': LEAF's Shakespeare (McMahan et al., 2017,
    "Communication-Efficient Learning of Deep Networks from Decentralized
    Data", AISTATS), 715 speaking roles, characters coded as in TFF's
    baseline `tff.simulation.baselines.shakespeare`
    (char_prediction_preprocessing.py), the preprocessing of Reddi et al.
    (2021): each snippet's UTF-8 bytes map to ids 1..86 of `CHAR_VOCAB`
    (`OOV` = 87 for any other byte), become `[BOS] + ids + [EOS]`, are
    padded with `PAD_ID` = 0 to a multiple of `SEQUENCE_LENGTH + 1` = 81
    and cut into chunks of 81 (a chunk never spans two snippets); a chunk's
    input is its first 80 ids and its target its last 80. Padded targets
    are `targets.PAD`. TFF's accuracy (and that of Reddi et al.'s code,
    google-research/federated optimization/shakespeare) masks only padding,
    so out-of-vocabulary and end-of-snippet targets are scored as classes
    87 and 89. TFF's loss counts padded targets too; here they count
    nowhere, as in FedJAX's `fedjax/models/shakespeare.py`.

TFF's `load_data` keeps the files, decompressed, in `~/.tff` (its
`download.get_compressed_file`); that is the default `data_dir`. Each row of
a split gets the key of its client (`tff_sqlite.read_splits`): the index of
its id among the sorted ids of both splits (CIFAR-100: train ids, then test
ids).
"""

import os

import numpy as np

from fedjax_core import targets
from fedjax_core.data.datasets import tff_example
from fedjax_core.data.datasets import tff_sqlite
from fedjax_core.data.datasets.tfds_images import DatasetNotPreparedError
from fedjax_core.data.federated import CentralDataset

URL_ROOT = 'https://storage.googleapis.com/tff-datasets-public/'
DEFAULT_DATA_DIR = os.path.join('~', '.tff')

EMNIST_CLASSES = 62
CIFAR100_CLASSES = 100

# TFF's shakespeare CHAR_VOCAB; ids 1..86 in this order.
CHAR_VOCAB = ('dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#\'/37;?bfjnrvzBFJNRVZ"&*.26'
              ':\naeimquyAEIMQUY]!%)-159\r')
PAD_ID = 0
OOV = len(CHAR_VOCAB) + 1
BOS = len(CHAR_VOCAB) + 2
EOS = len(CHAR_VOCAB) + 3
VOCAB_SIZE = len(CHAR_VOCAB) + 4  # 90: the classes and the input ids.
SEQUENCE_LENGTH = 80

_ID_OF_BYTE = np.full(256, OOV, np.int32)
_ID_OF_BYTE[list(CHAR_VOCAB.encode())] = np.arange(1, len(CHAR_VOCAB) + 1)


def database_path(name: str, file: str, data_dir: str | None) -> str:
  """The path of TFF's file `file` for dataset `name`.

  Raises:
    DatasetNotPreparedError: the file is missing; the message names the
      path, the file's URL and the command that fetches it.
  """
  folder = os.path.expanduser(data_dir or DEFAULT_DATA_DIR)
  path = os.path.join(folder, file)
  if not os.path.isfile(path):
    url = f'{URL_ROOT}{file}.lzma'
    raise DatasetNotPreparedError(
        'data_dir',
        f"Dataset '{name}' needs TensorFlow Federated's file {path}, which "
        f'is missing (data_dir: {data_dir or DEFAULT_DATA_DIR}, where TFF '
        f'caches it). It is {url}, LZMA-compressed; nothing can be '
        f'downloaded here: on a machine with internet run `mkdir -p DIR && '
        f'cd DIR && curl -LO {url} && xz -d {file}.lzma`, then copy DIR '
        'here and pass it as data_dir.')
  return path


def _central(name: str, splits: dict[str, tff_sqlite.Split],
             train: str, test: str, num_classes: int,
             input_vocab: int | None) -> CentralDataset:
  """The `CentralDataset` of decoded splits holding 'x' and 'y'.

  Raises:
    ValueError: if a class label (one per example, read from the file)
      lies outside [0, num_classes).
  """
  for split in (train, test):
    y = splits[split].features['y']
    if y.ndim == 1 and len(y) and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f'{name}: {split} labels span [{y.min()}, '
                       f'{y.max()}], outside [0, {num_classes}).')
  return CentralDataset(
      name=name, train_x=splits[train].features['x'],
      train_y=splits[train].features['y'],
      test_x=splits[test].features['x'], test_y=splits[test].features['y'],
      num_classes=num_classes, train_groups=splits[train].keys,
      test_groups=splits[test].keys, input_vocab=input_vocab)


def decode_emnist(serialized: list[bytes]) -> dict[str, np.ndarray]:
  """EMNIST examples as uint8 ink-on-black `[n, 28, 28, 1]` images 'x'
  and int32 labels 'y'."""
  parsed = tff_example.parse_fixed(
      serialized, {'pixels': ((28, 28), np.float32), 'label': ((), np.int64)})
  ink = np.rint(255 * (1 - parsed['pixels'])).clip(0, 255)
  return {'x': ink.astype(np.uint8)[..., None],
          'y': parsed['label'].astype(np.int32)}


def decode_cifar100(serialized: list[bytes]) -> dict[str, np.ndarray]:
  """CIFAR-100 examples as uint8 `[n, 32, 32, 3]` images 'x' and int32 fine
  labels 'y'."""
  parsed = tff_example.parse_fixed(
      serialized, {'image': ((32, 32, 3), np.uint8), 'label': ((), np.int64)})
  return {'x': parsed['image'], 'y': parsed['label'].astype(np.int32)}


def char_ids(snippets: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
  """TFF's Shakespeare chunks of `snippets` (module docstring).

  Returns:
    `[m, SEQUENCE_LENGTH + 1]` int32 chunks of ids, and `[m]` the index in
    `snippets` of each chunk's snippet.
  """
  lengths = np.array([len(s) for s in snippets], np.int64) + 2
  chunk = SEQUENCE_LENGTH + 1
  chunks = -(-lengths // chunk)
  starts = np.cumsum(chunks * chunk) - chunks * chunk
  ids = np.full(int(chunks.sum()) * chunk, PAD_ID, np.int32)
  ids[starts] = BOS
  ids[starts + lengths - 1] = EOS
  text = np.frombuffer(b''.join(snippets), np.uint8)
  # Byte j of the joined text, of snippet i, goes to starts[i] + 1 + its
  # offset within snippet i.
  first_byte = np.cumsum(lengths - 2) - (lengths - 2)
  ids[np.repeat(starts + 1 - first_byte, lengths - 2)
      + np.arange(len(text))] = _ID_OF_BYTE[text]
  source = np.repeat(np.arange(len(snippets)), chunks)
  return ids.reshape(-1, chunk), source


def decode_shakespeare(serialized: list[bytes]) -> dict[str, np.ndarray]:
  """Shakespeare snippets as int32 `[m, 80]` inputs 'x' and per-position
  targets 'y' (padding `targets.PAD`), with `tff_sqlite.SOURCE`."""
  snippets = tff_example.parse_fixed(serialized,
                                     {'snippets': ((), bytes)})['snippets']
  chunks, source = char_ids(snippets)
  y = chunks[:, 1:].copy()
  y[y == PAD_ID] = targets.PAD
  return {'x': chunks[:, :-1], 'y': y, tff_sqlite.SOURCE: source}


def _load(name: str, file: str, decode, num_classes: int,
          data_dir: str | None, splits=('train', 'test'),
          shared_clients: bool = True,
          input_vocab: int | None = None) -> CentralDataset:
  """Reads `splits` (training, test) of TFF's `file` into a
  `CentralDataset`."""
  path = database_path(name, file, data_dir)
  decoded = tff_sqlite.read_splits(path, splits, decode,
                                   shared_clients=shared_clients, desc=name)
  return _central(name, decoded, *splits, num_classes, input_vocab)


def load_emnist(data_dir: str | None = None, seed: int = 0
                ) -> CentralDataset:
  """Federated EMNIST, 62 classes, one key per writer (module docstring).

  Args:
    data_dir: the folder holding emnist_all.sqlite; None is `~/.tff`.
    seed: unused (nothing is drawn).

  Raises:
    DatasetNotPreparedError: if the file is missing.
  """
  del seed
  return _load('tff_emnist', 'emnist_all.sqlite', decode_emnist,
               EMNIST_CLASSES, data_dir, splits=('all_train', 'all_test'))


def load_cifar100(data_dir: str | None = None, seed: int = 0
                  ) -> CentralDataset:
  """Federated CIFAR-100, 100 fine classes; keys 0..499 for the training
  clients and 500..599 for the test clients (module docstring).

  Args:
    data_dir: the folder holding cifar100.sqlite; None is `~/.tff`.
    seed: unused (nothing is drawn).

  Raises:
    DatasetNotPreparedError: if the file is missing.
  """
  del seed
  return _load('tff_cifar100', 'cifar100.sqlite', decode_cifar100,
               CIFAR100_CLASSES, data_dir, shared_clients=False)


def load_shakespeare(data_dir: str | None = None, seed: int = 0
                     ) -> CentralDataset:
  """Federated Shakespeare, next-character chunks of 80, one key per role
  (module docstring).

  Args:
    data_dir: the folder holding shakespeare.sqlite; None is `~/.tff`.
    seed: unused (nothing is drawn).

  Raises:
    DatasetNotPreparedError: if the file is missing.
  """
  del seed
  return _load('tff_shakespeare', 'shakespeare.sqlite', decode_shakespeare,
               VOCAB_SIZE, data_dir, input_vocab=VOCAB_SIZE)


LOADERS = {
    'tff_emnist': load_emnist,
    'tff_cifar100': load_cifar100,
    'tff_shakespeare': load_shakespeare,
}
