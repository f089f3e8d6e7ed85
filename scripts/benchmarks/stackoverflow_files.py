"""Generated StackOverflow files in TFF's schema (not real data).

The three files `fedjax_core.data.datasets.tff_stackoverflow` reads, with the
real file's layout and population but made-up text, for tests and the
`stackoverflow_shape` benchmark where the real data (tens of GB) cannot be
fetched:
  * `stackoverflow.sqlite`: TFF's SQLite schema (`tff_sqlite`), splits
    'train' (each client `examples_per_client` examples before 2018),
    'test' (one example from 2018 of a `test_fraction` of the training
    clients) and 'heldout' (`heldout_clients` other clients, one example
    each), each example a `tf.train.Example` with TFF's six features. Client
    ids are 8-digit user numbers; held-out users are the multiples of 10, as
    TFF's held-out users have `user_id % 10 == 0`.
  * `stackoverflow.word_count`: `word<TAB>count` lines, most frequent first,
    counting the training clients whose sentences hold the word (TFF's
    definition).
  * `stackoverflow.tag_count`: JSON tag -> number of training clients with
    the tag.
Words are `w0`..`w11999` and tags `tag0`..`tag599`, drawn from Zipf-like
frequencies, so that some fall outside the 10,000-word and 500-tag
vocabularies; sentences have 1..30 words (some cut at 20), titles 3..12.

Examples:
  >>> make_files('/tmp/so', clients=100, examples_per_client=2)
  '/tmp/so'
"""

import json
import os

import numpy as np

from fedjax_core.data.datasets import tff_example
from fedjax_core.data.datasets import tff_sqlite
from fedjax_core.data.datasets import tff_stackoverflow as so

NUM_WORDS, NUM_TAGS = 12_000, 600
SENTENCE_WORDS, TITLE_WORDS, TAGS = (1, 30), (3, 12), (1, 5)
_WORDS = [f'w{i}' for i in range(NUM_WORDS)]
_TAGS = [f'tag{i}' for i in range(NUM_TAGS)]
_BYTES = ('creation_date', 'tags', 'title', 'tokens', 'type')
# First and last second of the dates of each split.
_DATES = {'train': ('2008-08-01', '2017-12-31'),
          'test': ('2018-01-01', '2019-12-31'),
          'heldout': ('2008-08-01', '2019-12-31')}

def _zipf(n: int) -> np.ndarray:
  p = 1.0 / np.arange(1, n + 1) ** 1.1
  return p / p.sum()


def _draw(rng, count: int, span: tuple[int, int], n: int
          ) -> tuple[np.ndarray, np.ndarray]:
  """`count` lists of `span[0]..span[1]` Zipf-drawn ids below `n`: the
  flat ids and each list's end offset."""
  lengths = rng.integers(span[0], span[1] + 1, count)
  ids = rng.choice(n, int(lengths.sum()), p=_zipf(n))
  return ids, np.cumsum(lengths)


def _dates(rng, split: str, count: int) -> list[str]:
  first, last = (np.datetime64(d, 's') for d in _DATES[split])
  seconds = rng.integers(0, (last - first).astype(np.int64), count)
  text = np.datetime_as_string(first + seconds, unit='s')
  return [f"{t.replace('T', ' ')}.{d} UTC"
          for t, d in zip(text.tolist(), rng.integers(0, 10, count).tolist())]


def _split_rows(rng, split: str, users: np.ndarray, per_client: int):
  """The rows of `split` (`per_client` for each user number of `users`):
  (client id, serialized example) pairs, and the flat word and tag ids
  with each row's end offsets and owner."""
  owners = np.repeat(users, per_client)
  count = len(owners)
  words, word_ends = _draw(rng, count, SENTENCE_WORDS, NUM_WORDS)
  title, title_ends = _draw(rng, count, TITLE_WORDS, NUM_WORDS)
  tags, tag_ends = _draw(rng, count, TAGS, NUM_TAGS)
  scores = rng.integers(-5, 50, count).tolist()
  kinds = np.where(rng.random(count) < 0.4, 'question', 'answer').tolist()
  dates = _dates(rng, split, count)

  def text(ids, ends, vocab, sep, row):
    return sep.join(vocab[i] for i in ids[ends[row - 1] if row else 0:
                                           ends[row]].tolist())

  def rows():
    # One message refilled per row: 10x faster than `serialize_example`.
    example = tff_example.Example()
    feature = example.features.feature
    values = {name: feature[name].bytes_list.value for name in _BYTES}
    score = feature['score'].int64_list.value
    for row, user in enumerate(owners.tolist()):
      for name, value in (
          ('creation_date', dates[row]), ('type', kinds[row]),
          ('tags', text(tags, tag_ends, _TAGS, '|', row)),
          ('title', text(title, title_ends, _WORDS, ' ', row)),
          ('tokens', text(words, word_ends, _WORDS, ' ', row))):
        values[name][:] = [value.encode()]
      score[:] = [scores[row]]
      yield f'{user:08d}', example.SerializeToString()

  return rows(), (words, word_ends, tags, tag_ends, owners)


def _client_counts(ids: np.ndarray, ends: np.ndarray, owners: np.ndarray,
                   n: int) -> np.ndarray:
  """How many distinct owners have each of the `n` ids."""
  lengths = np.diff(ends, prepend=0)
  pairs = np.unique(np.repeat(owners, lengths) * n + ids)
  return np.bincount(pairs % n, minlength=n)


def _write_counts(path: str, names: list[str], counts: np.ndarray,
                  as_json: bool) -> None:
  order = np.argsort(-counts, kind='stable')
  order = order[counts[order] > 0]
  with open(path, 'w') as f:
    if as_json:
      json.dump({names[i]: int(counts[i]) for i in order}, f)
    else:
      f.writelines(f'{names[i]}\t{counts[i]}\n' for i in order)


def make_files(out: str, clients: int, examples_per_client: int,
               test_fraction: float = 0.6, heldout_clients: int | None = None,
               seed: int = 0) -> str:
  """Writes the three files into `out` (created if needed).

  Args:
    out: folder to write into; it must not hold a `stackoverflow.sqlite`.
    clients: training clients.
    examples_per_client: training examples per client.
    test_fraction: share of training clients with one test example.
    heldout_clients: clients of 'heldout'; None gives `clients // 9`.
    seed: seed of the generated text.

  Returns:
    `out`.
  """
  os.makedirs(out, exist_ok=True)
  rng = np.random.default_rng(seed)
  index = np.arange(clients)
  users = index + index // 9 + 1  # 1..9, 11..19, ...: not multiples of 10.
  heldout = 10 * np.arange(1, 1 + (clients // 9 if heldout_clients is None
                                   else heldout_clients))
  test_users = users[rng.random(clients) < test_fraction]
  train_rows, (words, word_ends, tags, tag_ends, owners) = _split_rows(
      rng, 'train', users, examples_per_client)
  _write_counts(os.path.join(out, so.WORD_COUNT_FILE), _WORDS,
                _client_counts(words, word_ends, owners, NUM_WORDS), False)
  _write_counts(os.path.join(out, so.TAG_COUNT_FILE), _TAGS,
                _client_counts(tags, tag_ends, owners, NUM_TAGS), True)
  tff_sqlite.write_sqlite(os.path.join(out, so.SQLITE_FILE), {
      'train': train_rows,
      'test': _split_rows(rng, 'test', test_users, 1)[0],
      'heldout': _split_rows(rng, 'heldout', heldout, 1)[0]})
  return out
