"""StackOverflow from TensorFlow Federated's SQLite file: next words and tags.

TFF's federated StackOverflow (`tff.simulation.datasets.stackoverflow`,
tensorflow_federated/python/simulation/datasets/stackoverflow.py) is one
SQLite file of `tf.train.Example`s (`tff_sqlite`, `tff_example`) with bytes
features `tokens` (one sentence of a post, words separated by ' '),
`title`, `tags` ('|'-separated), `creation_date` and `type`, and int64
`score`, in splits 'train' (342,477 users, posts before 2018), 'heldout'
(38,758 users whose id is a multiple of 10) and 'test' (204,088 users,
posts from 2018 on), plus two vocabulary files: `stackoverflow.word_count`
(`word<TAB>count` lines, most frequent first, read as TFF's
`load_word_counts` does) and `stackoverflow.tag_count` (JSON tag -> count,
sorted by count as `load_tag_counts` does). A user is a client; a row's
group key is the index of its user id among the sorted ids of 'train' and
'test' together, so a user's training and test rows share it. Training
rows come from 'train' and test rows from 'test'; 'heldout' is unused.
Reddi et al. keep each client's first 1,000 examples
(`so_*_max_elements_per_user`, google-research/federated
optimization/docs/hyperparameters.md), as the loaders do by default for
'train' (in stored order); 'test' is kept whole (the paper also sets 10,000
test examples apart for validation; not done here).

The two tasks of Reddi et al., 2021, "Adaptive Federated Optimization",
ICLR:
  * 'tff_stackoverflow', next-word prediction (TFF's
    simulation/baselines/stackoverflow/word_prediction_preprocessing.py,
    `build_to_ids_fn` and `get_special_tokens`): the 10,000 most frequent
    words get ids 1..10000, pad is 0, out-of-vocabulary 10001, bos 10002
    and eos 10003 (10,004 ids). A sentence split on ' ' is cut to its first
    20 words, gets eos if it has fewer than 20, bos in front and pads to 21;
    x is its first 20 ids and y its last 20. In y, pad is `targets.PAD`,
    and out-of-vocabulary and eos are `targets.unscored` (trained on, left
    out of the accuracy), the accuracy the paper's code names
    `accuracy_no_oov_or_eos` (pad, oov and eos targets masked;
    google-research/federated optimization/stackoverflow/
    federated_stackoverflow.py; bos is never a target). fedjax
    (fedjax/datasets/stackoverflow.py) numbers the same words differently
    (pad 0, bos 1, eos 2).
  * 'tff_stackoverflow_tags', tag prediction (google-research/federated
    utils/datasets/stackoverflow_tag_prediction.py): the words of `tokens`
    and `title` (split on whitespace) over the 10,000 most frequent words,
    and the multi-hot set of the post's tags among the 500 most frequent
    (uint8 `[n, 500]`). x holds word ids, not the bag: 0..9999 in the
    vocabulary, 10000 out of it, -1 padding; the `bow_logreg` model makes
    the normalized bag of words from them (out-of-vocabulary words count in
    the denominator, as the paper's `reduce_mean(one_hot(ids, 10001))
    [:10000]`; TFF's later baseline divides by in-vocabulary words only).

Deviations: tag prediction rows are as long as the longest post, at most
`MAX_TAG_WORDS` words, the title's words first (a bag has no order), so a
longer post loses the end of its sentence; a tag listed twice is in the set
once (TFF's sum of one-hots would give 2).

Nothing is downloaded: the files must be in `data_dir` or its `datasets/`
folder (where Keras puts the counts under a TFF `cache_dir`); with no
data_dir, TFF's own caches are looked in (`~/.tff` for the SQLite file,
`~/.keras/datasets` for the counts). `scripts/make_stackoverflow_sqlite.py`
writes generated files of the same schema and population (not real data).

Examples:
  >>> central = load_stackoverflow_words(data_dir='/data/tff')
  >>> central.train_x.shape[1], central.num_classes
  (20, 10004)
"""

from collections.abc import Mapping, Sequence
import itertools
import json
import os

from absl import logging
import numpy as np

from fedjax_core import targets
from fedjax_core.data.datasets import tff_example
from fedjax_core.data.datasets import tff_sqlite
from fedjax_core.data.datasets.tfds_images import DatasetNotPreparedError
from fedjax_core.data.federated import CentralDataset

WORD_VOCAB_SIZE = 10_000
TAG_VOCAB_SIZE = 500
SEQUENCE_LENGTH = 20
# Next-word ids (TFF's get_special_tokens with one out-of-vocabulary bucket).
PAD_ID = 0
OOV_ID = WORD_VOCAB_SIZE + 1
BOS_ID = WORD_VOCAB_SIZE + 2
EOS_ID = WORD_VOCAB_SIZE + 3
WORDS_VOCAB = WORD_VOCAB_SIZE + 4
# Tag prediction inputs: word ids 0..9999, this id out of the vocabulary.
TAG_INPUT_OOV_ID = WORD_VOCAB_SIZE
TAG_INPUT_PAD = -1
MAX_TAG_WORDS = 128
MAX_TRAIN_EXAMPLES_PER_CLIENT = 1000

SQLITE_FILE = 'stackoverflow.sqlite'
WORD_COUNT_FILE = 'stackoverflow.word_count'
TAG_COUNT_FILE = 'stackoverflow.tag_count'
_BUCKET = 'https://storage.googleapis.com/tff-datasets-public'
URLS = {SQLITE_FILE: f'{_BUCKET}/{SQLITE_FILE}.lzma',
        WORD_COUNT_FILE: f'{_BUCKET}/{WORD_COUNT_FILE}.tar.bz2',
        TAG_COUNT_FILE: f'{_BUCKET}/{TAG_COUNT_FILE}.tar.bz2'}
_UNPACK = {SQLITE_FILE: f'unlzma > DIR/{SQLITE_FILE}',
           WORD_COUNT_FILE: 'tar -xj -C DIR', TAG_COUNT_FILE: 'tar -xj -C DIR'}
_TFF_CACHES = ('~/.tff', '~/.keras/datasets')
_SPLITS = ('train', 'test')


def _folders(data_dir: str | None) -> list[str]:
  """Where the files are looked for, in order."""
  if data_dir is None:
    return [os.path.expanduser(folder) for folder in _TFF_CACHES]
  return [data_dir, os.path.join(data_dir, 'datasets')]


def find_file(data_dir: str | None, name: str, dataset: str) -> str:
  """The path of TFF's StackOverflow file `name` (a key of `URLS`).

  Raises:
    DatasetNotPreparedError: if it is in none of the folders looked in; the
      message names them, the file's URL and the command that fetches it.
  """
  folders = _folders(data_dir)
  for folder in folders:
    path = os.path.join(folder, name)
    if os.path.isfile(path):
      return path
  tried = ' or '.join(os.path.join(folder, name) for folder in folders)
  raise DatasetNotPreparedError(
      'data_dir',
      f"Dataset '{dataset}' needs TFF's StackOverflow file {name}, which is "
      f'not at {tried}. Nothing can be downloaded here: on a machine with '
      f'internet run `curl -L {URLS[name]} | {_UNPACK[name]}` (the source '
      'tff.simulation.datasets.stackoverflow reads), then copy DIR here and '
      'pass it as data_dir.')


def read_word_vocab(path: str, size: int = WORD_VOCAB_SIZE) -> list[bytes]:
  """The first `size` words of a `stackoverflow.word_count` file (lines
  `word<TAB>count`, most frequent first, read as TFF's
  `load_word_counts` reads them)."""
  with open(path, 'rb') as f:
    return [line.split()[0] for line in itertools.islice(f, size)]


def read_tag_vocab(path: str, size: int = TAG_VOCAB_SIZE) -> list[bytes]:
  """The `size` most frequent tags of a `stackoverflow.tag_count` file (JSON
  tag -> count; ties in file order, as TFF's `load_tag_counts` sorts)."""
  with open(path, 'rb') as f:
    counts = json.load(f)
  ordered = sorted(counts.items(), key=lambda item: item[1], reverse=True)
  return [tag.encode() for tag, _ in ordered[:size]]


def _scatter(lists: Sequence[Sequence[bytes]], index: Mapping[bytes, int],
             missing: int, out: np.ndarray, offset: int = 0) -> np.ndarray:
  """Writes `index[word]` (`missing` if absent) of each row's words into
  `out[row, offset:]`; returns each row's word count."""
  lengths = np.fromiter(map(len, lists), np.int64, len(lists))
  words = itertools.chain.from_iterable(lists)
  ids = np.fromiter(map(index.get, words, itertools.repeat(missing)),
                    out.dtype, int(lengths.sum()))
  rows = np.repeat(np.arange(len(lists)), lengths)
  starts = np.cumsum(lengths) - lengths
  out[rows, np.arange(len(ids)) - np.repeat(starts, lengths) + offset] = ids
  return lengths


def sentence_ids(sentences: Sequence[bytes],
                 word_ids: Mapping[bytes, int]) -> np.ndarray:
  """`[n, 21]` int32 id sequences of sentences, as TFF's `build_to_ids_fn`
  then `padded_batch` make them.

  Args:
    sentences: the `tokens` of each example (words separated by ' ').
    word_ids: word -> id in 1..10000.

  Returns:
    bos, the ids of the first 20 words (`OOV_ID` for other words), eos if
    there were fewer than 20, then `PAD_ID`s.
  """
  words = [s.split(b' ')[:SEQUENCE_LENGTH] for s in sentences]
  seq = np.full((len(words), SEQUENCE_LENGTH + 1), PAD_ID, np.int32)
  seq[:, 0] = BOS_ID
  lengths = _scatter(words, word_ids, OOV_ID, seq, offset=1)
  short = np.flatnonzero(lengths < SEQUENCE_LENGTH)
  seq[short, lengths[short] + 1] = EOS_ID
  return seq


def next_word_examples(seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Inputs `seq[:, :-1]` and targets `seq[:, 1:]` of `[n, 21]` id
  sequences; pad targets become `targets.PAD` and out-of-vocabulary and
  eos targets `targets.unscored` (module docstring)."""
  y = seq[:, 1:].copy()
  unscored = (y == OOV_ID) | (y == EOS_ID)
  y[unscored] = targets.unscored(y[unscored])
  y[y == PAD_ID] = targets.PAD
  return seq[:, :-1], y


def post_word_ids(titles: Sequence[bytes], sentences: Sequence[bytes],
                  word_ids: Mapping[bytes, int],
                  width: int = MAX_TAG_WORDS) -> tuple[np.ndarray,
                                                       np.ndarray]:
  """Word ids of each post for tag prediction.

  Args:
    titles: each example's `title`.
    sentences: each example's `tokens`.
    word_ids: word -> id in 0..9999.
    width: most words kept per post.

  Returns:
    `[n, width]` int32 ids of the title's then the sentence's words (split
    on whitespace), `TAG_INPUT_OOV_ID` out of the vocabulary, padded with
    `TAG_INPUT_PAD`; and the `[n]` number of words before truncation.
  """
  words = [(t + b' ' + s).split() for t, s in zip(titles, sentences)]
  counts = np.fromiter(map(len, words), np.int64, len(words))
  ids = np.full((len(words), width), TAG_INPUT_PAD, np.int32)
  _scatter([w[:width] for w in words], word_ids, TAG_INPUT_OOV_ID, ids)
  return ids, counts


def multi_hot_tags(tags: Sequence[bytes],
                   tag_ids: Mapping[bytes, int]) -> np.ndarray:
  """`[n, 500]` uint8 multi-hot sets of each example's '|'-separated tags
  among the 500 of `tag_ids` (tag -> 0..499); other tags are dropped."""
  lists = [[tag_ids[t] for t in s.split(b'|') if t in tag_ids] for s in tags]
  lengths = np.fromiter(map(len, lists), np.int64, len(lists))
  columns = np.fromiter(itertools.chain.from_iterable(lists), np.int64,
                        int(lengths.sum()))
  y = np.zeros((len(lists), TAG_VOCAB_SIZE), np.uint8)
  y[np.repeat(np.arange(len(lists)), lengths), columns] = 1
  return y


def _first_per_client(keys: np.ndarray, limit: int | None) -> np.ndarray:
  """Whether each row is among the first `limit` of its client (rows come
  grouped by client, keys non-decreasing)."""
  if limit is None:
    return np.ones(len(keys), bool)
  starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
  sizes = np.diff(np.r_[starts, len(keys)])
  return np.arange(len(keys)) - np.repeat(starts, sizes) < limit


def _read(data_dir: str | None, dataset: str, features: Sequence[str],
          decode, max_train: int | None) -> list[tff_sqlite.Split]:
  """The train and test splits of the SQLite file, each example's bytes
  `features` turned into arrays by `decode(*columns)`; training clients
  kept to their first `max_train` examples."""
  spec = {name: ((), bytes) for name in features}

  def decode_batch(serialized: list[bytes]) -> dict[str, np.ndarray]:
    columns = tff_example.parse_fixed(serialized, spec)
    return decode(*(columns[name] for name in features))

  path = find_file(data_dir, SQLITE_FILE, dataset)
  try:
    splits = tff_sqlite.read_splits(path, _SPLITS, decode_batch, desc=dataset)
  except ValueError as e:
    raise DatasetNotPreparedError(
        'data_dir', f"Dataset '{dataset}': {path} is not TFF's StackOverflow "
        f'file ({e}). Fetch it again from {URLS[SQLITE_FILE]}.') from e
  train, test = splits['train'], splits['test']
  keep = _first_per_client(train.keys, max_train)
  if not keep.all():
    train = tff_sqlite.Split(
        {name: array[keep] for name, array in train.features.items()},
        train.keys[keep])
  return [train, test]


def load_stackoverflow_words(
    data_dir: str | None = None, seed: int = 0,
    max_train_examples_per_client: int | None = MAX_TRAIN_EXAMPLES_PER_CLIENT
) -> CentralDataset:
  """StackOverflow next-word prediction (module docstring).

  Args:
    data_dir: folder of `SQLITE_FILE` and `WORD_COUNT_FILE`; None looks in
      TFF's caches.
    seed: unused (the data are fixed).
    max_train_examples_per_client: most training examples kept per client
      (its first); None keeps all.

  Returns:
    A `CentralDataset` named 'tff_stackoverflow': int32 `[n, 20]` inputs
    and targets (`targets.TOKENS`), `WORDS_VOCAB` classes and input ids,
    user keys as groups.

  Raises:
    DatasetNotPreparedError: a file is missing or not in TFF's format.
  """
  del seed
  name = 'tff_stackoverflow'
  vocab = read_word_vocab(find_file(data_dir, WORD_COUNT_FILE, name))
  word_ids = {word: i + 1 for i, word in enumerate(vocab)}

  def decode(sentences):
    x, y = next_word_examples(sentence_ids(sentences, word_ids))
    return {'x': x, 'y': y}

  train, test = _read(data_dir, name, ('tokens',), decode,
                      max_train_examples_per_client)
  return CentralDataset(
      name=name, train_x=train.features['x'], train_y=train.features['y'],
      test_x=test.features['x'], test_y=test.features['y'],
      num_classes=WORDS_VOCAB, train_groups=train.keys,
      test_groups=test.keys, input_vocab=WORDS_VOCAB)


def load_stackoverflow_tags(
    data_dir: str | None = None, seed: int = 0,
    max_train_examples_per_client: int | None = MAX_TRAIN_EXAMPLES_PER_CLIENT
) -> CentralDataset:
  """StackOverflow tag prediction (module docstring).

  Args:
    data_dir: folder of `SQLITE_FILE`, `WORD_COUNT_FILE` and
      `TAG_COUNT_FILE`; None looks in TFF's caches.
    seed: unused (the data are fixed).
    max_train_examples_per_client: most training examples kept per client
      (its first); None keeps all.

  Returns:
    A `CentralDataset` named 'tff_stackoverflow_tags': int32 `[n, L]` word
    ids (L the longest post, at most `MAX_TAG_WORDS`), uint8 `[n, 500]`
    multi-hot tags, 500 classes, `WORD_VOCAB_SIZE` input ids, user keys as
    groups.

  Raises:
    DatasetNotPreparedError: a file is missing or not in TFF's format.
  """
  del seed
  name = 'tff_stackoverflow_tags'
  words = read_word_vocab(find_file(data_dir, WORD_COUNT_FILE, name))
  tags = read_tag_vocab(find_file(data_dir, TAG_COUNT_FILE, name))
  word_ids = {word: i for i, word in enumerate(words)}
  tag_ids = {tag: i for i, tag in enumerate(tags)}

  def decode(titles, sentences, tag_lists):
    x, counts = post_word_ids(titles, sentences, word_ids)
    return {'x': x, 'counts': counts, 'y': multi_hot_tags(tag_lists, tag_ids)}

  splits = _read(data_dir, name, ('title', 'tokens', 'tags'), decode,
                 max_train_examples_per_client)
  counts = np.concatenate([s.features['counts'] for s in splits])
  width = int(np.clip(counts.max(initial=1), 1, MAX_TAG_WORDS))
  truncated = int((counts > MAX_TAG_WORDS).sum())
  if truncated:
    logging.info('%s: %d of %d posts are cut to %d words.', name, truncated,
                 len(counts), MAX_TAG_WORDS)
  train, test = ({'x': np.ascontiguousarray(s.features['x'][:, :width]),
                  'y': s.features['y'], 'keys': s.keys} for s in splits)
  return CentralDataset(
      name=name, train_x=train['x'], train_y=train['y'], test_x=test['x'],
      test_y=test['y'], num_classes=TAG_VOCAB_SIZE,
      train_groups=train['keys'], test_groups=test['keys'],
      input_vocab=WORD_VOCAB_SIZE)


LOADERS = {'tff_stackoverflow': load_stackoverflow_words,
           'tff_stackoverflow_tags': load_stackoverflow_tags}
