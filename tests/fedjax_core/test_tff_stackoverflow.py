"""Tests of the StackOverflow loaders on tiny files in TFF's exact schema.

Expected ids are worked out by hand from TFF's preprocessing (word ids
1..10000, oov 10001, bos 10002, eos 10003; tag inputs 0..9999, oov 10000).
"""

import json
import os
import sqlite3

import numpy as np
import pytest

from fedjax_core import targets
from fedjax_core.data.datasets import registry
from fedjax_core.data.datasets import tff_example
from fedjax_core.data.datasets import tff_sqlite
from fedjax_core.data.datasets import tff_stackoverflow as so
from fedjax_core.data.datasets.tfds_images import DatasetNotPreparedError
from scripts.benchmarks import stackoverflow_files

# Most frequent first: 'the' is word 1 (tag input 0), 'is' word 2 (1), ...
WORDS = [('the', 40), ('is', 30), ('a', 20), ('code', 10), ('python', 5)]
TAGS = {'java': 3, 'python': 7, 'sql': 3}  # Ordered: python, java, sql.
OOV, BOS, EOS = 10001, 10002, 10003


def _example(tokens, title='', tags=''):
  return tff_example.serialize_example({
      'creation_date': '2010-01-08 09:34:05 UTC', 'score': 3, 'tags': tags,
      'title': title, 'tokens': tokens, 'type': 'answer'})


def _write(folder, splits, words=WORDS, tags=TAGS):
  """Writes the three files into `folder`; `splits`: split -> (client id,
  tokens, title, tags) rows in stored order."""
  os.makedirs(folder, exist_ok=True)
  tff_sqlite.write_sqlite(
      os.path.join(folder, so.SQLITE_FILE),
      {split: [(client, _example(*row)) for client, *row in rows]
       for split, rows in splits.items()})
  with open(os.path.join(folder, so.WORD_COUNT_FILE), 'w') as f:
    f.writelines(f'{word}\t{count}\n' for word, count in words)
  with open(os.path.join(folder, so.TAG_COUNT_FILE), 'w') as f:
    json.dump(tags, f)
  return str(folder)


# 25 words: cut to 20 (19 'the', 'code'), no eos.
LONG = ' '.join(['the'] * 19 + ['code'] + ['is'] * 5)
SPLITS = {
    'train': [('u2', 'the cat is', 'python code', 'python|java|perl'),
              ('u1', LONG, 'a', 'sql'),
              ('u2', 'python', 'the the', ''),
              ('u2', 'is', 'a', 'java')],
    'heldout': [('u9', 'a', 'a', 'sql')],
    'test': [('u3', 'a  code', '', 'sql|java'),
             ('u1', 'is', 'is', 'python')],
}


@pytest.fixture
def data_dir(tmp_path):
  return _write(tmp_path / 'so', SPLITS)


def test_sentence_ids_truncate_and_mark_ends():
  seq = so.sentence_ids(
      [b'the cat is', b' '.join([b'a'] * 20), b' '.join([b'is'] * 19)],
      {b'the': 1, b'is': 2, b'a': 3})
  assert seq.tolist()[0] == [BOS, 1, OOV, 2, EOS] + [0] * 16
  assert seq.tolist()[1] == [BOS] + [3] * 20  # 20 words: no eos.
  assert seq.tolist()[2] == [BOS] + [2] * 19 + [EOS]


def test_next_word_examples_mark_pad_oov_and_eos():
  seq = np.array([[BOS, 1, OOV, 2, EOS] + [0] * 16], np.int32)
  x, y = so.next_word_examples(seq)
  assert x.tolist() == [[BOS, 1, OOV, 2, EOS] + [0] * 15]
  # unscored(c) = -2 - c: oov 10001 -> -10003, eos 10003 -> -10005.
  assert y.tolist() == [[1, -10003, 2, -10005] + [-1] * 16]
  assert targets.kind(y) == targets.TOKENS


def test_words_loader(data_dir):
  central = so.load_stackoverflow_words(data_dir=data_dir)
  assert central.num_classes == central.input_vocab == 10004
  assert central.train_x.dtype == central.train_y.dtype == np.int32
  # Rows by client id (u1, then u2 in stored order); u1, u2, u3 -> 0, 1, 2.
  assert central.train_groups.tolist() == [0, 1, 1, 1]
  assert central.test_groups.tolist() == [0, 2]
  assert central.train_x.tolist() == [
      [BOS] + [1] * 19,
      [BOS, 1, OOV, 2, EOS] + [0] * 15,
      [BOS, 5, EOS] + [0] * 17,
      [BOS, 2, EOS] + [0] * 17]
  assert central.train_y[0].tolist() == [1] * 19 + [4]
  assert central.train_y[2].tolist() == [5, -10005] + [-1] * 18
  # 'a  code' split on ' ' has an empty word, out of the vocabulary.
  assert central.test_x[1].tolist() == [BOS, 3, OOV, 4, EOS] + [0] * 15
  assert central.test_x[0].tolist() == [BOS, 2, EOS] + [0] * 17


def test_words_loader_keeps_first_examples_per_client(data_dir):
  central = so.load_stackoverflow_words(data_dir=data_dir,
                                        max_train_examples_per_client=2)
  assert central.train_groups.tolist() == [0, 1, 1]
  assert central.train_x[:, 1].tolist() == [1, 1, 5]  # u2's last row is cut.
  assert len(central.test_x) == 2


def test_tags_loader(data_dir):
  central = so.load_stackoverflow_tags(data_dir=data_dir)
  assert central.num_classes == 500 and central.input_vocab == 10000
  assert central.train_y.dtype == np.uint8
  assert central.train_y.shape == (4, 500)
  # Longest post: 1 title word + 25 sentence words.
  assert central.train_x.shape == (4, 26)
  # Title words, then sentence words: the=0 is=1 a=2 code=3 python=4.
  assert central.train_x[0].tolist() == [2] + [0] * 19 + [3] + [1] * 5
  assert central.train_x[1].tolist() == [4, 3, 0, 10000, 1] + [-1] * 21
  assert central.train_x[2].tolist() == [0, 0, 4] + [-1] * 23
  assert central.test_x[0].tolist() == [1, 1] + [-1] * 24
  assert central.test_x[1].tolist() == [2, 3] + [-1] * 24  # Empty title.
  # python=0, java=1, sql=2; 'perl' is not a kept tag.
  assert np.flatnonzero(central.train_y[1]).tolist() == [0, 1]
  assert not central.train_y[2].any()
  assert np.flatnonzero(central.test_y[0]).tolist() == [0]
  assert np.flatnonzero(central.test_y[1]).tolist() == [1, 2]
  assert central.test_groups.tolist() == [0, 2]


def test_tag_vocab_sorts_by_count_then_file_order(tmp_path):
  path = tmp_path / 'tags'
  path.write_text(json.dumps({'b': 1, 'c': 5, 'a': 1, 'd': 9}))
  assert so.read_tag_vocab(str(path)) == [b'd', b'c', b'b', b'a']
  assert so.read_tag_vocab(str(path), size=2) == [b'd', b'c']


def test_post_words_cut_at_width():
  ids, counts = so.post_word_ids([b'the'], [b'is a x'], {b'the': 0, b'is': 1},
                                 width=3)
  assert ids.tolist() == [[0, 1, 10000]] and counts.tolist() == [4]


@pytest.mark.parametrize('missing', [so.SQLITE_FILE, so.WORD_COUNT_FILE,
                                     so.TAG_COUNT_FILE])
def test_missing_file_says_where_and_how(data_dir, missing):
  os.remove(os.path.join(data_dir, missing))
  with pytest.raises(DatasetNotPreparedError) as info:
    so.load_stackoverflow_tags(data_dir=data_dir)
  message = str(info.value)
  assert os.path.join(data_dir, missing) in message
  assert so.URLS[missing] in message and 'curl -L' in message
  assert info.value.setting == 'data_dir'


def test_no_data_dir_reads_tff_caches(tmp_path, monkeypatch):
  monkeypatch.setenv('HOME', str(tmp_path))
  _write(tmp_path / '.tff', {'train': [('u', 'is', '', '')], 'test': []})
  os.rename(tmp_path / '.tff' / so.WORD_COUNT_FILE, tmp_path / 'wc')
  os.makedirs(tmp_path / '.keras' / 'datasets')
  os.rename(tmp_path / 'wc',
            tmp_path / '.keras' / 'datasets' / so.WORD_COUNT_FILE)
  central = so.load_stackoverflow_words()
  assert central.train_x.tolist() == [[BOS, 2, EOS] + [0] * 17]
  assert central.test_x.shape == (0, 20)


def test_not_tff_file(data_dir):
  os.remove(os.path.join(data_dir, so.SQLITE_FILE))
  sqlite3.connect(os.path.join(data_dir, so.SQLITE_FILE)).execute(
      'CREATE TABLE examples (x TEXT)').connection.close()
  with pytest.raises(DatasetNotPreparedError, match='not TFF'):
    so.load_stackoverflow_words(data_dir=data_dir)


def test_generated_files_load(tmp_path):
  folder = stackoverflow_files.make_files(
      str(tmp_path), clients=5, examples_per_client=2, test_fraction=1.0,
      heldout_clients=1)
  central = so.load_stackoverflow_words(data_dir=folder)
  assert central.train_groups.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
  assert central.test_groups.tolist() == [0, 1, 2, 3, 4]
  assert (central.train_x[:, 0] == BOS).all()
  with open(os.path.join(folder, so.WORD_COUNT_FILE)) as f:
    counts = [int(line.split('\t')[1]) for line in f]
  assert counts == sorted(counts, reverse=True) and max(counts) <= 5
  tags = so.load_stackoverflow_tags(data_dir=folder)
  assert tags.train_y.sum(axis=1).min() >= 1


def test_registered(data_dir):
  assert {'tff_stackoverflow', 'tff_stackoverflow_tags'} <= set(
      registry.DATASET_NAMES)
  central = registry.load_central('tff_stackoverflow', num_clients=0,
                                  data_dir=data_dir)
  assert central.train_x.shape == (4, 20)
