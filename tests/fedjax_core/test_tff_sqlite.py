"""Tests of the tf.train.Example codec and TFF's SQLite client data reader."""

import sqlite3

import numpy as np
import pytest

from fedjax_core.data.datasets import tff_example
from fedjax_core.data.datasets import tff_sqlite

# tf.train.Example {features {feature {key: 'label' value {int64_list {value:
# [3, 300]}}} feature {key: 'pixels' value {float_list {value: [0.5, -2]}}}
# feature {key: 'snippets' value {bytes_list {value: ['Hi']}}}}}, by hand
# from the wire format (tag = field number << 3 | wire type; 2 is
# length-delimited).
_LABEL_ENTRY = bytes([
    0x0a, 0x05, *b'label',     # FeatureEntry.key (1), 5 bytes
    0x12, 0x07,                # FeatureEntry.value (2): Feature, 7 bytes
    0x1a, 0x05,                # Feature.int64_list (3), 5 bytes
    0x0a, 0x03,                # Int64List.value (1), packed, 3 bytes
    0x03, 0xac, 0x02])         # varints 3 and 300 (0b10_0101100)
_PIXELS_ENTRY = bytes([
    0x0a, 0x06, *b'pixels',
    0x12, 0x0c,                # Feature, 12 bytes
    0x12, 0x0a,                # Feature.float_list (2), 10 bytes
    0x0a, 0x08,                # FloatList.value (1), packed, 8 bytes
    0x00, 0x00, 0x00, 0x3f,    # 0.5, little-endian float32
    0x00, 0x00, 0x00, 0xc0])   # -2.0
_SNIPPETS_ENTRY = bytes([
    0x0a, 0x08, *b'snippets',
    0x12, 0x06,                # Feature, 6 bytes
    0x0a, 0x04,                # Feature.bytes_list (1), 4 bytes
    0x0a, 0x02, *b'Hi'])       # BytesList.value (1), 2 bytes
_FEATURES = b''.join(bytes([0x0a, len(e)]) + e for e in (
    _LABEL_ENTRY, _PIXELS_ENTRY, _SNIPPETS_ENTRY))  # Features.feature (1)
_EXAMPLE = bytes([0x0a, len(_FEATURES)]) + _FEATURES  # Example.features (1)


def test_parse_example_reads_bytes_worked_out_by_hand():
  parsed = tff_example.parse_example(_EXAMPLE)
  assert sorted(parsed) == ['label', 'pixels', 'snippets']
  assert parsed['label'].dtype == np.int64
  np.testing.assert_array_equal(parsed['label'], [3, 300])
  assert parsed['pixels'].dtype == np.float32
  np.testing.assert_array_equal(parsed['pixels'], [0.5, -2.0])
  assert parsed['snippets'] == [b'Hi']


def test_serialize_example_writes_the_wire_format():
  entry = _LABEL_ENTRY
  assert tff_example.serialize_example({'label': [3, 300]}) == bytes(
      [0x0a, len(entry) + 2, 0x0a, len(entry)]) + entry
  assert tff_example.parse_example(tff_example.serialize_example(
      {'pixels': np.array([0.5, -2.0]), 'snippets': 'Hi'})) == {
          'pixels': pytest.approx([0.5, -2.0]), 'snippets': [b'Hi']}


def test_message_classes_have_tensorflows_field_numbers():
  def numbers(message):
    return {f.name: f.number for f in message.DESCRIPTOR.fields}
  assert tff_example.Example.DESCRIPTOR.full_name == 'tensorflow.Example'
  assert numbers(tff_example.Example) == {'features': 1}
  assert numbers(tff_example.Features) == {'feature': 1}
  assert numbers(tff_example.Feature) == {
      'bytes_list': 1, 'float_list': 2, 'int64_list': 3}
  for lists in (tff_example.BytesList, tff_example.FloatList,
                tff_example.Int64List):
    assert numbers(lists) == {'value': 1}


def test_parse_fixed_stacks_a_batch():
  batch = [tff_example.serialize_example(
      {'image': np.full((2, 2), k), 'label': k, 'text': b'ab' * k})
           for k in (1, 2)]
  parsed = tff_example.parse_fixed(batch, {
      'image': ((2, 2), np.uint8), 'label': ((), np.int64),
      'text': ((), bytes)})
  assert parsed['image'].dtype == np.uint8
  np.testing.assert_array_equal(parsed['image'],
                                [np.full((2, 2), 1), np.full((2, 2), 2)])
  np.testing.assert_array_equal(parsed['label'], [1, 2])
  assert parsed['text'] == [b'ab', b'abab']
  with pytest.raises(ValueError, match="feature 'label' should hold 1"):
    tff_example.parse_fixed(batch, {'label': ((), np.float32)})
  with pytest.raises(ValueError, match="feature 'other' should hold 1"):
    tff_example.parse_fixed(batch, {'other': ((), np.int64)})


def _value(k: int) -> bytes:
  return tff_example.serialize_example({'v': k})


def _decode_values(serialized):
  return tff_example.parse_fixed(serialized, {'v': ((), np.int64)})


def test_write_sqlite_uses_tffs_schema(tmp_path):
  path = tmp_path / 'data.sqlite'
  tff_sqlite.write_sqlite(path, {'train': [('b', _value(1)), ('a', _value(2)),
                                           ('b', _value(3))],
                                 'test': [('a', _value(4))]})
  with sqlite3.connect(path) as connection:
    def columns(table):
      return [(name, kind, notnull) for _, name, kind, notnull, _, _ in
              connection.execute(f'PRAGMA table_info({table})')]
    assert columns('examples') == [
        ('split_name', 'TEXT', 1), ('client_id', 'TEXT', 1),
        ('serialized_example_proto', 'BLOB', 1)]
    assert columns('client_metadata') == [
        ('client_id', 'TEXT', 1), ('split_name', 'TEXT', 1),
        ('num_examples', 'INTEGER', 1)]
    indexes = {row[0] for row in connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert indexes == {'idx_examples_client_id',
                       'idx_examples_client_id_split',
                       'idx_metadata_client_id'}
    assert sorted(connection.execute('SELECT * FROM client_metadata')) == [
        ('a', 'test', 1), ('a', 'train', 1), ('b', 'train', 2)]
  with pytest.raises(FileExistsError):
    tff_sqlite.write_sqlite(path, {})


def test_read_splits_orders_by_client_with_one_key_space(tmp_path):
  """Keys are indices into the sorted ids of both splits: a 0, b 1, c 2,
  d 3; 'd' has only test rows, 'c' only training rows."""
  path = tmp_path / 'data.sqlite'
  tff_sqlite.write_sqlite(path, {
      'train': [('c', _value(10)), ('a', _value(11)), ('c', _value(12)),
                ('b', _value(13)), ('a', _value(14))],
      'test': [('d', _value(20)), ('a', _value(21))],
      'other': [('e', _value(30))]})
  splits = tff_sqlite.read_splits(path, ['train', 'test'], _decode_values)
  assert sorted(splits) == ['test', 'train']
  np.testing.assert_array_equal(splits['train'].features['v'],
                                [11, 14, 13, 10, 12])
  assert splits['train'].keys.dtype == np.int64
  np.testing.assert_array_equal(splits['train'].keys, [0, 0, 1, 2, 2])
  np.testing.assert_array_equal(splits['test'].features['v'], [21, 20])
  np.testing.assert_array_equal(splits['test'].keys, [0, 3])


def test_read_splits_gives_each_splits_clients_their_own_keys(tmp_path):
  """Train ids '0', '1', '10' (string order) get 0, 1, 2; test ids '0',
  '1' get 3, 4."""
  path = tmp_path / 'data.sqlite'
  tff_sqlite.write_sqlite(path, {
      'train': [('10', _value(1)), ('0', _value(2)), ('1', _value(3))],
      'test': [('1', _value(4)), ('0', _value(5))]})
  splits = tff_sqlite.read_splits(path, ['train', 'test'], _decode_values,
                                  shared_clients=False, batch_size=2)
  np.testing.assert_array_equal(splits['train'].features['v'], [2, 3, 1])
  np.testing.assert_array_equal(splits['train'].keys, [0, 1, 2])
  np.testing.assert_array_equal(splits['test'].features['v'], [5, 4])
  np.testing.assert_array_equal(splits['test'].keys, [3, 4])


def test_a_decoder_may_make_several_rows_of_an_example(tmp_path):
  """Example k becomes k rows (none for 0); keys follow their example."""
  path = tmp_path / 'data.sqlite'
  tff_sqlite.write_sqlite(path, {'train': [
      ('a', _value(2)), ('b', _value(0)), ('b', _value(1)), ('c', _value(3))]})

  def decode(serialized):
    v = _decode_values(serialized)['v']
    return {'v': np.repeat(v, v), tff_sqlite.SOURCE: np.repeat(
        np.arange(len(v)), v)}

  split = tff_sqlite.read_splits(path, ['train'], decode,
                                 batch_size=3)['train']
  np.testing.assert_array_equal(split.features['v'], [2, 2, 1, 3, 3, 3])
  np.testing.assert_array_equal(split.keys, [0, 0, 1, 2, 2, 2])
  assert sorted(split.features) == ['v']


def test_an_empty_split_gives_empty_arrays(tmp_path):
  path = tmp_path / 'data.sqlite'
  tff_sqlite.write_sqlite(path, {'train': [('a', _value(1))]})
  split = tff_sqlite.read_splits(path, ['test'], _decode_values)['test']
  assert split.features['v'].shape == (0,) and split.keys.shape == (0,)


def test_a_missing_or_foreign_file_is_refused(tmp_path):
  with pytest.raises(FileNotFoundError, match='nothing.sqlite'):
    tff_sqlite.read_splits(tmp_path / 'nothing.sqlite', ['train'],
                           _decode_values)
  path = tmp_path / 'other.sqlite'
  with sqlite3.connect(path) as connection:
    connection.execute('CREATE TABLE examples (client_id TEXT)')
  with pytest.raises(ValueError, match='examples lacks column'):
    tff_sqlite.read_splits(path, ['train'], _decode_values)
