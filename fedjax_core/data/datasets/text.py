"""Character-level next-character datasets for small language models.

Examples follow the Shakespeare task of LEAF (Caldas et al., 2018, "LEAF: A
Benchmark for Federated Settings", arXiv:1812.01097): the input is the
previous `context` characters of a document and the label is the character
that follows. Windows start every `stride` characters of a document and
never run across two documents. Characters are ids of a fixed vocabulary that
does not depend on the data (`VOCAB`), so models trained on different
datasets or parts of one share their embeddings.

Two corpora, each split into documents that are the natural clients:
  * 'pydoc_topics': the help topics of Python's standard library
    (`pydoc_data.topics.topics`, the text behind `help('if')`), one document
    per topic. It ships with CPython, so it needs no download.
  * 'shakespeare': TFDS's `tiny_shakespeare` (Karpathy's char-rnn
    `tinyshakespeare/input.txt`), one document per speaker, like LEAF's
    Shakespeare, whose clients are speaking roles. It must be prepared in a
    TFDS data dir in ArrayRecord format, as for `tfds_images`.
"""

import math

import numpy as np

from fedjax_core.data.federated import CentralDataset
from fedjax_core.data.datasets import tfds_images
from fedjax_core.errors import SettingError

# Ids 1.. of the vocabulary; id 0 is any other character.
VOCAB = '\n' + ''.join(map(chr, range(32, 127)))
VOCAB_SIZE = len(VOCAB) + 1
OOV_ID = 0
TEXT_NAMES = ('pydoc_topics', 'shakespeare')
TFDS_TEXT_NAMES = {'shakespeare': 'tiny_shakespeare'}

DEFAULT_CONTEXT = 64
# Each character is in 8 windows: 51,664 training windows of pydoc_topics
# under Python 3.11 (a stride of 7 gives 59,042).
DEFAULT_STRIDE = 8

# Code points above 126 are clipped to 127 (DEL), out of the vocabulary.
_ID_OF_CODE = np.zeros(128, np.int32)
_ID_OF_CODE[[ord(c) for c in VOCAB]] = np.arange(1, VOCAB_SIZE)
_CHAR_OF_ID = np.array(['\N{REPLACEMENT CHARACTER}', *VOCAB])
_TFDS_SPLITS = ('train', 'test')


def encode(text: str) -> np.ndarray:
  """`[len(text)]` int32 ids of the characters of `text`; characters outside
  `VOCAB` map to `OOV_ID`."""
  codes = np.frombuffer(text.encode('utf-32-le'), np.uint32)
  return _ID_OF_CODE[np.minimum(codes, len(_ID_OF_CODE) - 1)]


def decode(ids) -> str:
  """The text of `ids`; `OOV_ID` decodes to U+FFFD, the replacement
  character.

  Raises:
    ValueError: if an id lies outside [0, VOCAB_SIZE).
  """
  ids = np.asarray(ids).reshape(-1)
  if len(ids) and (ids.min() < 0 or ids.max() >= VOCAB_SIZE):
    raise ValueError(f'ids span [{ids.min()}, {ids.max()}], outside the '
                     f'vocabulary [0, {VOCAB_SIZE}).')
  return ''.join(_CHAR_OF_ID[ids])


def next_char_examples(documents, context: int = DEFAULT_CONTEXT,
                       stride: int = DEFAULT_STRIDE):
  """Next-character examples of each document, as in LEAF's Shakespeare.

  A document of `n` ids gives the windows starting at `0, stride,
  2 * stride, ...` below `n - context`: window `s` has input
  `ids[s:s + context]` and label `ids[s + context]`. A document of at most
  `context` ids gives none.

  Args:
    documents: sequence of 1-D int id arrays (see `encode`).
    context: characters per input.
    stride: characters between the starts of consecutive windows.

  Returns:
    `(x, y, document)`: `[n, context]` int32 inputs, `[n]` int32 labels and
    the `[n]` int64 index into `documents` of each example, ordered by
    document, then by start.

  Raises:
    ValueError: if `context` or `stride` is below 1.
  """
  if context < 1 or stride < 1:
    raise ValueError(f'context and stride must be >= 1, got context='
                     f'{context}, stride={stride}.')
  xs, ys = [np.empty((0, context), np.int32)], [np.empty(0, np.int32)]
  counts = []
  for ids in documents:
    ids = np.asarray(ids, np.int32)
    starts = np.arange(0, len(ids) - context, stride)
    if len(starts):
      xs.append(np.lib.stride_tricks.sliding_window_view(ids, context)[starts])
    ys.append(ids[starts + context])
    counts.append(len(starts))
  return (np.concatenate(xs), np.concatenate(ys),
          np.repeat(np.arange(len(counts)), counts))


def load_pydoc_topics(context: int = DEFAULT_CONTEXT,
                      stride: int = DEFAULT_STRIDE,
                      test_fraction: float = 0.1) -> CentralDataset:
  """Python's help topics as next-character data, one group per topic.

  The documents are the values of `pydoc_data.topics.topics` (79 topics and
  about 465k characters under Python 3.11) in sorted key order; a row's
  group key is its topic's index in that order. Each document is cut in
  two: its last `ceil(test_fraction * n)` characters, but at least
  `context + 1` so that every topic has a test example, are its test part
  and the rest its training part. Windows (`next_char_examples`) are taken
  within each part, so none straddles the cut and no test character is in
  any training example.

  Args:
    context: characters per input.
    stride: characters between the starts of consecutive windows.
    test_fraction: share of each document held out for testing, in (0, 1).

  Returns:
    A `CentralDataset` named 'pydoc_topics' with int32 `[n, context]`
    inputs, int32 labels in [0, VOCAB_SIZE), and the topic of each row as
    `train_groups` and `test_groups`.

  Raises:
    ValueError: if this Python lacks `pydoc_data` (some distributions strip
      it), or on invalid arguments.
  """
  try:
    from pydoc_data import topics
  except ImportError as e:
    raise SettingError(
        'dataset',
        "Dataset 'pydoc_topics' needs the module pydoc_data.topics of "
        "Python's standard library, which this Python lacks (some "
        "distributions strip it). Use dataset 'shakespeare' with a data_dir "
        'holding tiny_shakespeare instead.') from e
  if not 0 < test_fraction < 1:
    raise ValueError(f'test_fraction must be in (0, 1), got {test_fraction}.')
  train_parts, test_parts = [], []
  for key in sorted(topics.topics):
    ids = encode(topics.topics[key])
    n = len(ids)
    cut = max(0, min(n - math.ceil(test_fraction * n), n - context - 1))
    train_parts.append(ids[:cut])
    test_parts.append(ids[cut:])
  train_x, train_y, train_groups = next_char_examples(train_parts, context,
                                                      stride)
  test_x, test_y, test_groups = next_char_examples(test_parts, context, stride)
  return CentralDataset(
      name='pydoc_topics', train_x=train_x, train_y=train_y, test_x=test_x,
      test_y=test_y, num_classes=VOCAB_SIZE, train_groups=train_groups,
      test_groups=test_groups)


def speaker_documents(text: str) -> dict[str, str]:
  """Each speaker's lines in a play text laid out as tiny_shakespeare's.

  The text is a run of speeches separated by blank lines, each a line
  `NAME:` followed by the lines spoken. A speaker's document is their
  speeches in order, each ending with a newline, so it holds every line they
  speak and nothing else. A block whose first line does not end with ':' or
  that has no other line is skipped: TFDS cuts tiny_shakespeare into splits
  at character offsets, so a split can open mid-speech.

  Args:
    text: the play text.

  Returns:
    {speaker name: document}, in order of first speech.
  """
  documents = {}
  for block in text.split('\n\n'):
    header, _, speech = block.strip('\n').partition('\n')
    if header.endswith(':') and speech:
      documents.setdefault(header[:-1], []).append(speech + '\n')
  return {name: ''.join(speeches) for name, speeches in documents.items()}


def _read_text(builder, split: str) -> str:
  """The text of a split that holds one example with a 'text' feature
  (which data sources give as UTF-8 bytes)."""
  return builder.as_data_source(split=split)[0]['text'].decode('utf-8')


def load_tfds_text(name: str, data_dir: str | None = None,
                   context: int = DEFAULT_CONTEXT,
                   stride: int = DEFAULT_STRIDE) -> CentralDataset:
  """Reads a prepared TFDS text dataset as next-character data by speaker.

  'shakespeare' reads TFDS `tiny_shakespeare` (whose train, validation and
  test splits are the first 90%, next 5% and last 5% of the characters of
  the play text, each one example with a 'text' feature). Training rows come
  from its train split and test rows from its test split; validation is
  unused. Each split is divided into speaker documents (`speaker_documents`)
  and windowed (`next_char_examples`) per speaker: windows run across the
  speeches of one speaker, as LEAF concatenates a role's lines, but never
  across speakers. tiny_shakespeare does not mark plays, so a speaker is a
  name over all plays (LEAF's roles are per play). Group keys are speaker
  ids: the training split's speakers in sorted name order, then the test
  split's other speakers in sorted name order.

  Args:
    name: one of `TFDS_TEXT_NAMES`.
    data_dir: TFDS data dir; None uses $TFDS_DATA_DIR, else
      ~/tensorflow_datasets.
    context: characters per input.
    stride: characters between the starts of consecutive windows.

  Returns:
    A `CentralDataset` named `name` with int32 `[n, context]` inputs, int32
    labels in [0, VOCAB_SIZE), and speaker ids as `train_groups` and
    `test_groups`.

  Raises:
    ValueError: on an unknown `name` or invalid `context` or `stride`.
    DatasetNotPreparedError: if the data are not prepared in `data_dir` in
      ArrayRecord (or another random-access) format.
  """
  if name not in TFDS_TEXT_NAMES:
    raise ValueError(f"Unknown TFDS text dataset '{name}'; valid datasets: "
                     f"{', '.join(TFDS_TEXT_NAMES)}.")
  builder = tfds_images.prepared_builder(
      name, TFDS_TEXT_NAMES[name], data_dir,
      alternative=", or use dataset 'pydoc_topics', which needs no data")
  train_docs, test_docs = (speaker_documents(_read_text(builder, split))
                           for split in _TFDS_SPLITS)
  speakers = sorted(train_docs) + sorted(set(test_docs) - set(train_docs))
  speaker_id = {speaker: i for i, speaker in enumerate(speakers)}
  arrays = {}
  for split, docs in zip(_TFDS_SPLITS, (train_docs, test_docs)):
    present = [s for s in speakers if s in docs]
    x, y, doc = next_char_examples([encode(docs[s]) for s in present],
                                   context, stride)
    ids = np.array([speaker_id[s] for s in present], np.int64)
    arrays[split] = x, y, ids[doc]
  return CentralDataset(
      name=name, train_x=arrays['train'][0], train_y=arrays['train'][1],
      test_x=arrays['test'][0], test_y=arrays['test'][1],
      num_classes=VOCAB_SIZE, train_groups=arrays['train'][2],
      test_groups=arrays['test'][2])
