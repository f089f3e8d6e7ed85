"""LEAF's Shakespeare and Sentiment140, tokenized as LEAF's models do.

LEAF (Caldas et al., 2018, "LEAF: A Benchmark for Federated Settings",
arXiv:1812.01097, https://github.com/TalwalkarLab/leaf); the JSON layout,
`data_dir` and the group keys are as in `leaf`.

  * 'leaf_shakespeare': each speaking role of each play is a user
    (`data/shakespeare/preprocess/shake_utils.py`: the role's lines joined
    with spaces, every 80-character window x and the character y after it).
    Characters are ids in LEAF's `ALL_LETTERS`
    (`models/utils/language_utils.py`, 80 characters), as
    `word_to_indices` makes them: x int32 `[n, 80]`, y int32 `[n]`, 80
    classes, 80 input ids. LEAF maps a character outside `ALL_LETTERS` to
    `ALL_LETTERS.find(c) == -1`; its `letter_to_vec` one-hot then sets
    index -1, the last class ('}', id 79), and an embedding lookup in numpy
    or JAX reads row -1, the last row, too. Here such a character is id 79
    (`UNKNOWN_LETTER_ID`) in x and y alike.
  * 'leaf_sent140': each Twitter user is a user; x is the row of
    Sentiment140's CSV after its polarity (`data/sent140/preprocess/
    data_to_json.py`: tweet id, date, query, user, text, and 'training' or
    'test' for the file it came from) and y is 1 for a positive tweet. The
    text (field 4) is split by LEAF's `split_line` (regex
    `[\\w']+|[.,!?;]`, case kept) and mapped by `line_to_indices`: the
    first 25 words to ids, then padded to 25; an unknown word and padding
    are both the id `len(vocabulary)`. x int32 `[n, 25]`, y int32 `[n]`, 2
    classes, `len(vocabulary) + 1` input ids.
    The vocabulary is GloVe's (Pennington et al., 2014, glove.6B.300d: 400k
    words, so 400,001 input ids), in the order of LEAF's `embs.json`
    (`models/sent140/get_embs.sh`), read from `<data_dir>/sent140/embs.json`
    or, if absent, from `<data_dir>/../models/sent140/embs.json`, where
    LEAF writes it. Without either file (a deviation from LEAF) it is the
    10,000 most frequent words of the training split, ties in code-point
    order (10,001 input ids).
"""

import array
import collections
import json
import logging
import os
import re

import numpy as np
import tqdm

from fedjax_core.data.federated import CentralDataset
from fedjax_core.data.datasets import leaf

ALL_LETTERS = ('\n !"&\'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]'
               'abcdefghijklmnopqrstuvwxyz}')
NUM_LETTERS = len(ALL_LETTERS)  # 80
SEQ_LEN = 80  # seq_length of LEAF's shake_utils.py.
UNKNOWN_LETTER_ID = NUM_LETTERS - 1

MAX_WORDS = 25  # max_words of LEAF's line_to_indices.
TEXT_FIELD = 4
FALLBACK_VOCAB_SIZE = 10_000

# Every letter is ASCII; code points from 127 on are unknown.
_ID_OF_CODE = np.full(128, UNKNOWN_LETTER_ID, np.int32)
_ID_OF_CODE[[ord(c) for c in ALL_LETTERS]] = np.arange(NUM_LETTERS)
_WORD_RE = re.compile(r"[\w']+|[.,!?;]")
_VOCAB_START = re.compile(r'\{\s*"vocab"\s*:\s*')
_CHUNK_CHARS = 1 << 24
_MIN_LINES_FOR_PROGRESS = 100_000


def word_to_indices(text: str) -> np.ndarray:
  """`[len(text)]` int32 ids of the characters of `text` in `ALL_LETTERS`;
  any other character is `UNKNOWN_LETTER_ID`."""
  codes = np.frombuffer(text.encode('utf-32-le', 'surrogatepass'), np.uint32)
  return _ID_OF_CODE[np.minimum(codes, len(_ID_OF_CODE) - 1)]


def _strings_to_ids(strings: list[str], length: int, what: str) -> np.ndarray:
  """`[len(strings), length]` ids of strings that must have `length`
  characters each."""
  lengths = np.fromiter(map(len, strings), np.int64, len(strings))
  if np.any(lengths != length):
    raise ValueError(f'LEAF shakespeare {what} must be {length} characters, '
                     f'got {lengths[lengths != length][0]}.')
  return word_to_indices(''.join(strings)).reshape(-1, length)


def _shakespeare_arrays(xs: list, ys: list) -> tuple[np.ndarray, np.ndarray]:
  return (_strings_to_ids(xs, SEQ_LEN, 'x'),
          _strings_to_ids(ys, 1, 'y').reshape(-1))


def load_shakespeare(data_dir: str | None, seed: int = 0) -> CentralDataset:
  """LEAF's Shakespeare: next character, by speaking role.

  Args:
    data_dir: LEAF's data/ directory, holding shakespeare/data/{train,test}/.
    seed: unused (LEAF's preprocessing made every random choice).

  Returns:
    A `CentralDataset` named 'leaf_shakespeare': int32 `[n, 80]` character
    ids, int32 next-character ids, both in [0, 80), roles as group keys.

  Raises:
    DatasetNotPreparedError: the JSON files are missing.
    ValueError: an x is not 80 characters or a y not one.
  """
  del seed
  (train_x, train_y, train_g), (test_x, test_y, test_g) = leaf.read_leaf(
      data_dir, 'shakespeare', _shakespeare_arrays)
  return CentralDataset(
      name='leaf_shakespeare', train_x=train_x, train_y=train_y,
      test_x=test_x, test_y=test_y, num_classes=NUM_LETTERS,
      train_groups=train_g, test_groups=test_g, input_vocab=NUM_LETTERS)


def split_line(line: str) -> list[str]:
  """The words of `line` as LEAF's `split_line` finds them."""
  return _WORD_RE.findall(line)


def lines_to_indices(lines, word2id: dict[str, int],
                     max_words: int = MAX_WORDS) -> np.ndarray:
  """`[len(lines), max_words]` int32 word ids, as LEAF's `line_to_indices`:
  the first `max_words` words of each line, then padding; unknown words and
  padding are `len(word2id)`."""
  unknown = len(word2id)
  flat, lengths = array.array('i'), []
  for line in tqdm.tqdm(lines, desc='leaf sent140 words', unit='line',
                        disable=len(lines) < _MIN_LINES_FOR_PROGRESS):
    ids = [word2id.get(w, unknown) for w in split_line(line)[:max_words]]
    flat.extend(ids)
    lengths.append(len(ids))
  lengths = np.array(lengths, np.int64)
  starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
  out = np.full((len(lines), max_words), unknown, np.int32)
  out[np.repeat(np.arange(len(lines)), lengths),
      np.arange(len(flat)) - starts] = np.frombuffer(flat, np.intc)
  return out


def glove_vocabulary(path: str) -> list[str]:
  """The "vocab" list of LEAF's embs.json.

  LEAF's get_embs.py writes {"vocab": [...], "emba": [...]}: about 1.5 GB
  of embedding floats after the 400k words. Only the words are parsed,
  growing the text read until the list closes.
  """
  decoder = json.JSONDecoder()
  with open(path, encoding='utf-8') as f:
    text = f.read(_CHUNK_CHARS)
    start = _VOCAB_START.match(text)
    if start is None:  # Not as get_embs.py writes it: parse it all.
      f.seek(0)
      return json.load(f)['vocab']
    while True:
      try:
        return decoder.raw_decode(text, start.end())[0]
      except json.JSONDecodeError:
        more = f.read(_CHUNK_CHARS)
        if not more:
          raise
        text += more


def frequent_words(lines, size: int = FALLBACK_VOCAB_SIZE) -> list[str]:
  """The `size` most frequent words of `lines`, most frequent first, ties
  in code-point order."""
  counts = collections.Counter()
  for line in lines:
    counts.update(split_line(line))
  return sorted(counts, key=lambda w: (-counts[w], w))[:size]


def embs_paths(data_dir: str) -> tuple[str, str]:
  """Where LEAF's embs.json is looked for, in order."""
  return (os.path.join(data_dir, 'sent140', 'embs.json'),
          os.path.join(data_dir, os.pardir, 'models', 'sent140', 'embs.json'))


def sent140_vocabulary(data_dir: str, train_lines) -> dict[str, int]:
  """{word: id}: GloVe's words from embs.json (see the module docstring),
  else the most frequent words of `train_lines`."""
  for path in embs_paths(data_dir):
    if os.path.isfile(path):
      words = glove_vocabulary(path)
      break
  else:
    logging.warning(
        'No LEAF embs.json at %s: sent140 uses the %d most frequent training '
        'words as its vocabulary, not GloVe\'s (run LEAF\'s '
        'models/sent140/get_embs.sh for those).',
        ' or '.join(embs_paths(data_dir)), FALLBACK_VOCAB_SIZE)
    words = frequent_words(train_lines)
  return {w: i for i, w in enumerate(words)}


def _sent140_arrays(xs: list, ys: list) -> tuple[np.ndarray, np.ndarray]:
  return (np.array([x[TEXT_FIELD] for x in xs], object),
          leaf.int_labels(ys, 2, 'LEAF sent140'))


def read_sent140(data_dir: str | None
                 ) -> tuple[CentralDataset, dict[str, int]]:
  """LEAF's Sentiment140 and its vocabulary.

  Args:
    data_dir: LEAF's data/ directory, holding sent140/data/{train,test}/
      and, optionally, sent140/embs.json.

  Returns:
    `(dataset, word2id)`: a `CentralDataset` named 'leaf_sent140' with
    int32 `[n, 25]` word ids, int32 labels (1: positive) and Twitter users
    as group keys; and the vocabulary, whose input ids number
    `len(word2id) + 1`.

  Raises:
    DatasetNotPreparedError: the JSON files are missing.
  """
  (train_t, train_y, train_g), (test_t, test_y, test_g) = leaf.read_leaf(
      data_dir, 'sent140', _sent140_arrays)
  word2id = sent140_vocabulary(data_dir, train_t)
  dataset = CentralDataset(
      name='leaf_sent140', train_x=lines_to_indices(train_t, word2id),
      train_y=train_y, test_x=lines_to_indices(test_t, word2id),
      test_y=test_y, num_classes=2, train_groups=train_g, test_groups=test_g,
      input_vocab=len(word2id) + 1)
  return dataset, word2id


def load_sent140(data_dir: str | None, seed: int = 0) -> CentralDataset:
  """LEAF's Sentiment140 (`read_sent140`'s dataset); `seed` is unused."""
  del seed
  return read_sent140(data_dir)[0]


LOADERS = {'leaf_shakespeare': load_shakespeare, 'leaf_sent140': load_sent140}
