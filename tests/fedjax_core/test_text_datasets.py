"""Tests of fedjax_core.data.datasets.text and the data parts of the registry.

Expected windows are written out by hand on small strings, or cut from the
raw text with plain string slicing. The TFDS path runs on tiny_shakespeare
records written to a temporary data dir (the real, unmocked read path) and
under `tfds.testing.mock_data`.
"""

import contextlib
import math
import os
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from pydoc_data import topics as pydoc_topics
from tensorflow_datasets.core import file_adapters

from fedjax_core.data import datasets
from fedjax_core.data.federated import CentralDataset
from fedjax_core.data.datasets import text
from fedjax_core.data.datasets.tfds_images import DatasetNotPreparedError

_OOV = '\N{REPLACEMENT CHARACTER}'


def _decoded(x, y):
  return [text.decode(row) for row in x], text.decode(y)


# Vocabulary.


def test_vocabulary_ids():
  assert text.VOCAB_SIZE == datasets.VOCAB_SIZE == 97
  np.testing.assert_array_equal(text.encode('\n !AZaz~'),
                                [1, 2, 3, 35, 60, 67, 92, 96])
  assert text.encode('').dtype == np.int32 and not len(text.encode(''))


def test_encode_decode_round_trip_and_oov():
  printable = '\n' + ''.join(map(chr, range(32, 127)))
  ids = text.encode(printable)
  np.testing.assert_array_equal(ids, np.arange(1, 97))
  assert text.decode(ids) == printable
  # Tab, DEL, a carriage return, accents and an emoji are out of vocabulary.
  np.testing.assert_array_equal(text.encode('a\tb\x7f\r\xe9\u2019\U0001f600'),
                                [67, 0, 68, 0, 0, 0, 0, 0])
  assert text.decode(text.encode('caf\xe9!')) == f'caf{_OOV}!'


def test_decode_rejects_ids_outside_the_vocabulary():
  with pytest.raises(ValueError, match=r'outside the vocabulary \[0, 97\)'):
    text.decode([3, 97])
  with pytest.raises(ValueError, match='outside the vocabulary'):
    text.decode([-1])


# Windows.


def test_next_char_examples_by_hand():
  x, y, doc = text.next_char_examples(
      [text.encode(s) for s in ('abcdefg', 'xyz', 'hijkl')], context=3,
      stride=2)
  assert x.dtype == y.dtype == np.int32 and x.shape == (3, 3)
  # 'abcdefg': starts 0 and 2 (below 7 - 3); 'xyz' is too short; 'hijkl':
  # start 0 only (below 5 - 3). No window runs from one into the next.
  assert _decoded(x, y) == (['abc', 'cde', 'hij'], 'dfk')
  np.testing.assert_array_equal(doc, [0, 0, 2])


def test_next_char_examples_stride_one_is_every_window():
  x, y, _ = text.next_char_examples([text.encode('abcde')], context=2,
                                    stride=1)
  assert _decoded(x, y) == (['ab', 'bc', 'cd'], 'cde')


def test_next_char_examples_of_nothing():
  x, y, doc = text.next_char_examples([], context=4, stride=2)
  assert x.shape == (0, 4) and y.shape == doc.shape == (0,)


@pytest.mark.parametrize('context,stride', [(0, 1), (3, 0)])
def test_next_char_examples_rejects_bad_windows(context, stride):
  with pytest.raises(ValueError, match='context and stride must be >= 1'):
    text.next_char_examples([text.encode('abcdef')], context, stride)


# pydoc_topics.


def test_pydoc_topics_cut_by_hand(monkeypatch):
  """'alpha' (10 chars): ceil(2.5) = 3 test characters, raised to
  context + 1 = 4, so the cut is at 6. 'beta' (20 chars): 5 test
  characters, cut at 15. Keys are sorted: alpha is group 0."""
  monkeypatch.setattr(pydoc_topics, 'topics', {
      'beta': 'abcdefghijklmnopqrst', 'alpha': '0123456789'})
  data = text.load_pydoc_topics(context=3, stride=2, test_fraction=0.25)
  assert data.name == 'pydoc_topics' and data.num_classes == 97
  assert _decoded(data.train_x, data.train_y) == (
      ['012', '234', 'abc', 'cde', 'efg', 'ghi', 'ijk', 'klm'], '35dfhjln')
  np.testing.assert_array_equal(data.train_groups, [0, 0, 1, 1, 1, 1, 1, 1])
  assert _decoded(data.test_x, data.test_y) == (['678', 'pqr'], '9s')
  np.testing.assert_array_equal(data.test_groups, [0, 1])


@pytest.mark.parametrize('fraction', [0.0, 1.0])
def test_pydoc_topics_rejects_bad_test_fraction(fraction):
  with pytest.raises(ValueError, match=r'test_fraction must be in \(0, 1\)'):
    text.load_pydoc_topics(test_fraction=fraction)


def test_pydoc_topics_missing_module(monkeypatch):
  monkeypatch.setitem(sys.modules, 'pydoc_data', None)
  with pytest.raises(ValueError, match='pydoc_data') as error:
    datasets.load_dataset('pydoc_topics')
  assert "Use dataset 'shakespeare' with a data_dir" in str(error.value)
  assert error.value.setting == 'dataset'


@pytest.fixture(name='pydoc', scope='module')
def _pydoc():
  return datasets.load_central('pydoc_topics', num_clients=1)


def _cut(n, context=64, test_fraction=0.1):
  return min(n - math.ceil(test_fraction * n), n - context - 1)


def test_pydoc_topics_matches_the_raw_text(pydoc):
  """Every row is the raw text at its place: training windows start every
  8 characters of a topic's training part and end before its cut, test
  windows start every 8 characters after it; every topic has both."""
  keys = sorted(pydoc_topics.topics)
  assert pydoc.train_x.shape[1:] == pydoc.test_x.shape[1:] == (64,)
  for array in (pydoc.train_x, pydoc.train_y, pydoc.test_x, pydoc.test_y):
    assert array.dtype == np.int32
    assert array.min() >= 0 and array.max() < text.VOCAB_SIZE
  for groups in (pydoc.train_groups, pydoc.test_groups):
    np.testing.assert_array_equal(np.unique(groups), np.arange(len(keys)))
  for split, x, y, groups in (
      ('train', pydoc.train_x, pydoc.train_y, pydoc.train_groups),
      ('test', pydoc.test_x, pydoc.test_y, pydoc.test_groups)):
    assert np.all(np.diff(groups) >= 0)
    for k, key in enumerate(keys):
      raw = ''.join(c if c in text.VOCAB else _OOV
                    for c in pydoc_topics.topics[key])
      cut = _cut(len(raw))
      part = raw[:cut] if split == 'train' else raw[cut:]
      rows = np.flatnonzero(groups == k)
      assert _decoded(x[rows], y[rows]) == (
          [part[s:s + 64] for s in range(0, len(part) - 64, 8)],
          ''.join(part[s + 64] for s in range(0, len(part) - 64, 8)))


@pytest.mark.skipif(sys.version_info[:2] != (3, 11),
                    reason="counts of Python 3.11's help topics")
def test_pydoc_topics_sizes(pydoc):
  assert len(pydoc_topics.topics) == 79
  assert len(pydoc.train_y) == 51664 and len(pydoc.test_y) == 5270


def test_pydoc_topics_default_clients_are_the_topics():
  data = datasets.load_dataset('pydoc_topics')
  assert data.partition_info['scheme'] == 'natural'
  assert data.num_clients == len(pydoc_topics.topics)
  assert data.partition_info['args']['part'] == 'all'


# Data parts.


def _assert_rows_of(part, whole, train_in, test_in):
  """`part` holds exactly the rows of `whole` picked by the masks."""
  assert part.num_classes == whole.num_classes and part.name == whole.name
  for split, keep in (('train', train_in), ('test', test_in)):
    for field in ('x', 'y', 'groups'):
      array = getattr(whole, f'{split}_{field}')
      if array is not None:
        np.testing.assert_array_equal(getattr(part, f'{split}_{field}'),
                                      array[keep])


def test_parts_of_text_split_by_group(pydoc):
  parts = {p: datasets.select_part(pydoc, p) for p in ('pretrain', 'finetune')}
  groups = {p: np.unique(d.train_groups) for p, d in parts.items()}
  assert not np.intersect1d(groups['pretrain'], groups['finetune']).size
  np.testing.assert_array_equal(
      np.union1d(groups['pretrain'], groups['finetune']),
      np.unique(pydoc.train_groups))
  for p, d in parts.items():
    # A group's test rows are in the same part as its training rows.
    np.testing.assert_array_equal(np.unique(d.test_groups), groups[p])
    _assert_rows_of(d, pydoc, np.isin(pydoc.train_groups, groups[p]),
                    np.isin(pydoc.test_groups, groups[p]))
  sizes = {p: len(d.train_y) + len(d.test_y) for p, d in parts.items()}
  assert sizes['pretrain'] + sizes['finetune'] == (len(pydoc.train_y) +
                                                   len(pydoc.test_y))
  # Dealt largest first to the smaller part: within 1% of each other here.
  assert abs(sizes['pretrain'] - sizes['finetune']) < 0.01 * sizes['pretrain']
  assert datasets.select_part(pydoc, 'all') is pydoc


def test_group_parts_by_hand():
  """Groups of 5, 9, 3, 3 and 1 rows: 9 -> pretrain, 5 -> finetune, 3 ->
  finetune (8 < 9), 3 -> finetune (8 < 9), 1 -> pretrain (11 > 9)."""
  train_groups = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 2, 3, 3, 4])
  test_groups = np.array([1, 0, 2, 2, 1, 3])
  central = CentralDataset(
      name='toy', train_x=np.arange(15.0)[:, None], train_y=np.zeros(15, int),
      test_x=np.arange(6.0)[:, None], test_y=np.zeros(6, int), num_classes=2,
      train_groups=train_groups, test_groups=test_groups)
  pretrain = datasets.select_part(central, 'pretrain')
  finetune = datasets.select_part(central, 'finetune')
  np.testing.assert_array_equal(pretrain.train_groups, [1] * 7 + [4])
  np.testing.assert_array_equal(pretrain.test_groups, [1, 1])
  np.testing.assert_array_equal(pretrain.train_x[:, 0], [4, 5, 6, 7, 8, 9, 10,
                                                          14])
  np.testing.assert_array_equal(finetune.train_groups,
                                [0, 0, 0, 0, 2, 3, 3])
  np.testing.assert_array_equal(finetune.test_x[:, 0], [1, 2, 3, 5])


@pytest.mark.parametrize('part,labels', [('pretrain', range(5)),
                                         ('finetune', range(5, 10))])
def test_parts_of_digits_split_by_label(part, labels):
  whole = datasets.load_central('digits', num_clients=1)
  data = datasets.load_central('digits', num_clients=1, part=part)
  assert data.num_classes == 10
  _assert_rows_of(data, whole, np.isin(whole.train_y, labels),
                  np.isin(whole.test_y, labels))
  np.testing.assert_array_equal(np.unique(data.train_y), list(labels))
  np.testing.assert_array_equal(np.unique(data.test_y), list(labels))
  federated = datasets.load_dataset('digits', num_clients=5, part=part)
  assert federated.partition_info['args']['part'] == part
  np.testing.assert_array_equal(federated.train_y, data.train_y)


def test_finetune_part_has_one_client_per_group(pydoc):
  data = datasets.load_dataset('pydoc_topics', part='finetune')
  keys = np.unique(datasets.select_part(pydoc, 'finetune').train_groups)
  assert data.num_clients == len(keys)
  assert data.partition_info['args']['part'] == 'finetune'
  # Client i is the i-th smallest key's topic, whole.
  for i, key in enumerate(keys):
    np.testing.assert_array_equal(
        data.train_y[data.client_indices[i]],
        pydoc.train_y[pydoc.train_groups == key])


def test_unknown_part():
  for load in (lambda: datasets.load_dataset('digits', part='half'),
               lambda: datasets.select_part(
                   datasets.load_central('digits', num_clients=1), 'half')):
    with pytest.raises(ValueError, match="Unknown data part 'half'; valid "
                       'parts: all, pretrain, finetune'):
      load()


def test_part_without_training_rows():
  central = CentralDataset(
      name='toy', train_x=np.zeros((3, 1)), train_y=np.zeros(3, int),
      test_x=np.zeros((1, 1)), test_y=np.zeros(1, int), num_classes=2)
  with pytest.raises(ValueError, match="part 'finetune' has no training"):
    datasets.select_part(central, 'finetune')


def test_test_groups_are_checked():
  with pytest.raises(ValueError, match='test_groups has 2 entries but there '
                     'are 1 test rows'):
    CentralDataset(name='toy', train_x=np.zeros((3, 1)),
                   train_y=np.zeros(3, int), test_x=np.zeros((1, 1)),
                   test_y=np.zeros(1, int), num_classes=2,
                   test_groups=np.zeros(2, int))


# Shakespeare from TFDS.

# TFDS cuts the splits at character offsets: a split can end on a speaker's
# name and start with the tail of a speech.
_PLAY = {
    'train': ('First Citizen:\nBefore we proceed, hear me speak.\n\n'
              'All:\nSpeak, speak.\n\n'
              'First Citizen:\nYou are resolved?\n\n'
              'All:\nResolved.\nresolved.\n\nMENENIUS:\n'),
    'test': ('ish?\n\nANGELO:\nWhat work is here?\n\n'
             "All:\nWe know't.\n"),
    'validation': 'BRUTUS:\nUnused.\n',
}
_SPEAKER_DOCUMENTS = {
    'train': {'First Citizen': 'Before we proceed, hear me speak.\n'
                               'You are resolved?\n',
              'All': 'Speak, speak.\nResolved.\nresolved.\n'},
    'test': {'ANGELO': 'What work is here?\n', 'All': "We know't.\n"},
}


def test_speaker_documents():
  for split, documents in _SPEAKER_DOCUMENTS.items():
    assert text.speaker_documents(_PLAY[split]) == documents


def _write_shakespeare(data_dir, play=None, file_format='array_record'):
  """Writes tiny_shakespeare's metadata and, if `play` is given, records of
  its splits encoded by TFDS."""
  builder = tfds.builder('tiny_shakespeare', data_dir=data_dir,
                         file_format=file_format)
  os.makedirs(builder.data_dir)
  split_infos = []
  for split in ('train', 'validation', 'test'):
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name=builder.name, split=split,
        filetype_suffix=file_format)
    if play is not None:
      file_adapters.ADAPTER_FOR_FORMAT[builder.info.file_format].write_examples(
          template.sharded_filepath(shard_index=0, num_shards=1),
          [(0, builder.info.features.serialize_example(
              {'text': play[split]}))])
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[1], num_bytes=0,
        filename_template=template))
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  builder.info.write_to_directory(builder.data_dir)


@contextlib.contextmanager
def _mock_shakespeare(data_dir, play):
  """Runs the block under `tfds.testing.mock_data` with tiny_shakespeare
  prepared (metadata only) and its data sources reading `play`."""
  _write_shakespeare(data_dir)

  def as_data_source(builder, split, **kwargs):
    del builder, kwargs
    return [{'text': play[split].encode()}]

  with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES,
                              data_dir=str(data_dir),
                              as_data_source_fn=as_data_source):
    yield


def _check_shakespeare(data):
  """Ids: 'All' 0, 'First Citizen' 1 (the training speakers, sorted), then
  'ANGELO' 2 (test only). Windows of 8 characters every 5, per speaker."""
  assert data.name == 'shakespeare' and data.num_classes == 97
  assert _decoded(data.train_x, data.train_y) == ([
      # All: 34 characters, starts 0, 5, ..., 25.
      'Speak, s', ', speak.', 'ak.\nReso', 'esolved.', 'ed.\nreso',
      'esolved.',
      # First Citizen: 52 characters, starts 0, 5, ..., 40.
      'Before w', 'e we pro', 'proceed,', 'ed, hear', 'ear me s',
      'e speak.', 'ak.\nYou ', 'ou are r', 'e resolv',
  ], 'p\nl\nl\n' 'ec  p\naee')
  np.testing.assert_array_equal(data.train_groups, [0] * 6 + [1] * 9)
  assert _decoded(data.test_x, data.test_y) == (
      ["We know'", 'What wor', 'work is ', 'is here?'], 'tkh\n')
  np.testing.assert_array_equal(data.test_groups, [0, 2, 2, 2])


def test_shakespeare_reads_written_records(tmp_path):
  _write_shakespeare(tmp_path, _PLAY)
  _check_shakespeare(text.load_tfds_text('shakespeare', str(tmp_path),
                                         context=8, stride=5))


def test_shakespeare_under_mock_data(tmp_path):
  with _mock_shakespeare(tmp_path, _PLAY):
    _check_shakespeare(text.load_tfds_text('shakespeare', context=8,
                                           stride=5))


def _speech(name, lines):
  return f'{name}:\n' + ''.join(f'Line {i} spoken by {name}.\n'
                                 for i in range(lines)) + '\n'


def test_shakespeare_through_the_registry(tmp_path):
  """Speakers of 3 to 6 lines of 21 characters; DD's 63 characters make no
  window of 64, so by default there is one client per other speaker."""
  play = {'train': ''.join(_speech(n, k) for n, k in
                           (('DD', 3), ('AA', 6), ('CC', 4), ('BB', 5))),
          'validation': '', 'test': _speech('EE', 4) + _speech('AA', 4)}
  with _mock_shakespeare(tmp_path, play):
    whole = datasets.load_dataset('shakespeare')
    parts = [datasets.load_dataset('shakespeare', part=p, num_clients=1)
             for p in ('pretrain', 'finetune')]
  assert whole.partition_info['scheme'] == 'natural'
  assert whole.num_clients == 3 and whole.example_shape == (64,)
  # Speaker ids: AA 0, BB 1, CC 2, DD 3, then EE 4; client i is speaker i.
  for i, lines in enumerate((6, 5, 4)):
    doc = _speech('ABC'[i] * 2, lines).split('\n', 1)[1][:-1]
    assert whole.client_sizes[i] == len(range(0, len(doc) - 64, 8))
    assert text.decode(whole.train_x[whole.client_indices[i][0]]) == doc[:64]
  # 84 characters each: windows at 0, 8 and 16.
  assert len(whole.test_y) == 6
  assert len(whole.test_y) == len(parts[0].test_y) + len(parts[1].test_y)
  assert len(whole.train_y) == len(parts[0].train_y) + len(parts[1].train_y)
  assert [p.partition_info['args']['part'] for p in parts] == ['pretrain',
                                                              'finetune']


def test_shakespeare_not_prepared(tmp_path):
  with pytest.raises(DatasetNotPreparedError) as error:
    datasets.load_dataset('shakespeare', data_dir=str(tmp_path))
  message = str(error.value)
  assert "'shakespeare'" in message and 'is not prepared' in message
  assert str(tmp_path) in message
  assert ('tfds build tiny_shakespeare --data_dir=DIR '
          '--file_format=array_record') in message
  assert "or use dataset 'pydoc_topics'" in message
  assert error.value.setting == 'data_dir'


def test_shakespeare_tfrecord_error(tmp_path):
  _write_shakespeare(tmp_path, file_format='tfrecord')
  with pytest.raises(DatasetNotPreparedError, match='tfrecord') as error:
    text.load_tfds_text('shakespeare', data_dir=str(tmp_path))
  assert 'tfds build tiny_shakespeare --data_dir=' in str(error.value)


def test_unknown_tfds_text_name():
  with pytest.raises(ValueError, match="Unknown TFDS text dataset 'poems'; "
                     'valid datasets: shakespeare'):
    text.load_tfds_text('poems')
