"""Tests of the TFF benchmarks read from tiny files in TFF's SQLite schema."""

import numpy as np
import pytest

from fedjax_core import targets
from fedjax_core.data import datasets
from fedjax_core.data.datasets import tff
from fedjax_core.data.datasets.tff_example import serialize_example
from fedjax_core.data.datasets.tff_sqlite import write_sqlite
from fedjax_core.data.datasets.tfds_images import DatasetNotPreparedError
from train_in_process import run_train


def _emnist_example(ink: int, label: int) -> bytes:
  """An EMNIST example of one ink level: TFF's pixels are 1 - ink / 255."""
  pixels = np.full((28, 28), 1 - ink / 255, np.float32)
  return serialize_example({'label': label, 'pixels': pixels})


def _write_emnist(folder, rows_per_writer=1):
  """Writers 'f0002_01' (train: ink 10 label 61, ink 200 label 0; test: ink
  255 label 5) and 'f0001_07' (train: ink 0 label 3; test: ink 1 label 9),
  keys 1 and 0; rows of other splits are not read."""
  folder.mkdir(parents=True, exist_ok=True)
  train_rows = [('f0002_01', _emnist_example(10, 61)),
                ('f0001_07', _emnist_example(0, 3)),
                ('f0002_01', _emnist_example(200, 0))] * rows_per_writer
  write_sqlite(folder / 'emnist_all.sqlite', {
      'all_train': train_rows,
      'all_test': [('f0002_01', _emnist_example(255, 5)),
                   ('f0001_07', _emnist_example(1, 9))],
      'digits_only_train': [('f0003_00', _emnist_example(7, 7))]})


def test_emnist_inverts_pixels_and_keys_writers(tmp_path):
  _write_emnist(tmp_path)
  central = tff.load_emnist(data_dir=str(tmp_path), seed=3)
  assert central.name == 'tff_emnist' and central.num_classes == 62
  assert central.train_x.dtype == np.uint8
  assert central.train_x.shape == (3, 28, 28, 1)
  # Ordered by writer id: f0001_07 first, then f0002_01's rows in order.
  np.testing.assert_array_equal(central.train_x[:, 0, 0, 0], [0, 10, 200])
  assert (central.train_x == central.train_x[:, :1, :1]).all()
  np.testing.assert_array_equal(central.train_y, [3, 61, 0])
  assert central.train_y.dtype == np.int32
  np.testing.assert_array_equal(central.train_groups, [0, 1, 1])
  np.testing.assert_array_equal(central.test_x[:, 5, 5, 0], [1, 255])
  np.testing.assert_array_equal(central.test_y, [9, 5])
  np.testing.assert_array_equal(central.test_groups, [0, 1])


def test_a_label_out_of_range_is_refused(tmp_path):
  write_sqlite(tmp_path / 'emnist_all.sqlite', {
      'all_train': [('w', _emnist_example(0, 62))],
      'all_test': [('w', _emnist_example(0, 1))]})
  with pytest.raises(ValueError,
                     match=r'all_train labels span \[62, 62\], outside'):
    tff.load_emnist(data_dir=str(tmp_path))


def test_cifar100_test_clients_are_not_training_clients(tmp_path):
  """Train clients '0', '1' get keys 0, 1; test client '0' gets key 2."""
  def example(value, label):
    return serialize_example({'coarse_label': label // 5, 'label': label,
                              'image': np.full((32, 32, 3), value)})
  write_sqlite(tmp_path / 'cifar100.sqlite', {
      'train': [('1', example(7, 99)), ('0', example(255, 0)),
                ('1', example(0, 42))],
      'test': [('0', example(128, 17))]})
  central = tff.load_cifar100(data_dir=str(tmp_path))
  assert central.num_classes == 100
  assert central.train_x.dtype == np.uint8
  assert central.train_x.shape == (3, 32, 32, 3)
  np.testing.assert_array_equal(central.train_x[:, 31, 31, 2], [255, 7, 0])
  np.testing.assert_array_equal(central.train_y, [0, 99, 42])
  np.testing.assert_array_equal(central.train_groups, [0, 1, 1])
  np.testing.assert_array_equal(central.test_x[:, 0, 0, 0], [128])
  np.testing.assert_array_equal(central.test_y, [17])
  np.testing.assert_array_equal(central.test_groups, [2])


_P = targets.PAD


def test_shakespeare_ids_follow_tffs_char_vocab(tmp_path):
  """Ids worked out from TFF's CHAR_VOCAB: 'H' is its 9th character (id
  9), 'i' 66, '!' 79, 'a' 64; '+' and the two bytes of 'é' are out of it
  (87); BOS 88, EOS 89, padding 0 (targets.PAD as a target)."""
  write_sqlite(tmp_path / 'shakespeare.sqlite', {
      'train': [('ROLE_B', serialize_example({'snippets': b'a' * 85})),
                ('ROLE_A', serialize_example({'snippets': b'Hi!+'}))],
      'test': [('ROLE_A', serialize_example(
          {'snippets': 'é'.encode()}))]})
  central = tff.load_shakespeare(data_dir=str(tmp_path))
  assert central.num_classes == 90 and central.input_vocab == 90
  assert central.train_x.dtype == central.train_y.dtype == np.int32
  assert central.train_x.shape == central.train_y.shape == (3, 80)
  # ROLE_A (key 0): one chunk [88, 9, 66, 79, 87, 89, 0 * 75].
  np.testing.assert_array_equal(central.train_x[0, :7],
                                [88, 9, 66, 79, 87, 89, 0])
  np.testing.assert_array_equal(central.train_y[0, :6],
                                [9, 66, 79, 87, 89, _P])
  assert (central.train_x[0, 6:] == 0).all()
  assert (central.train_y[0, 5:] == _P).all()
  # ROLE_B (key 1): 87 ids [88, 64 * 85, 89] in two chunks of 81.
  np.testing.assert_array_equal(central.train_x[1], [88] + [64] * 79)
  np.testing.assert_array_equal(central.train_y[1], [64] * 80)
  np.testing.assert_array_equal(central.train_x[2],
                                [64] * 5 + [89] + [0] * 74)
  np.testing.assert_array_equal(central.train_y[2],
                                [64] * 4 + [89] + [_P] * 75)
  np.testing.assert_array_equal(central.train_groups, [0, 1, 1])
  np.testing.assert_array_equal(central.test_x[0, :5], [88, 87, 87, 89, 0])
  np.testing.assert_array_equal(central.test_y[0, :4], [87, 87, 89, _P])
  np.testing.assert_array_equal(central.test_groups, [0])


def test_a_missing_file_says_where_and_how_to_get_it(tmp_path):
  with pytest.raises(DatasetNotPreparedError) as info:
    tff.load_shakespeare(data_dir=str(tmp_path))
  message = str(info.value)
  assert info.value.setting == 'data_dir'
  assert str(tmp_path / 'shakespeare.sqlite') in message
  url = ('https://storage.googleapis.com/tff-datasets-public/'
         'shakespeare.sqlite.lzma')
  assert f'curl -LO {url} && xz -d shakespeare.sqlite.lzma' in message


def test_the_default_data_dir_is_tffs_cache(tmp_path, monkeypatch):
  monkeypatch.setenv('HOME', str(tmp_path))
  _write_emnist(tmp_path / '.tff')
  assert len(tff.load_emnist().train_y) == 3


def test_load_dataset_gives_one_client_per_writer(tmp_path):
  _write_emnist(tmp_path)
  federated = datasets.load_dataset('tff_emnist', data_dir=str(tmp_path))
  assert federated.partition_info['scheme'] == 'natural'
  assert sorted(federated.client_indices.sizes) == [1, 2]
  assert len(federated.test_y) == 2


@pytest.mark.slow
def test_train_runs_on_tff_emnist(tmp_path, monkeypatch):
  """scripts/train.py's main in this process, two rounds of logreg."""
  _write_emnist(tmp_path / 'data', rows_per_writer=2)
  records, _, _ = run_train(
      tmp_path / 'run', monkeypatch, '--dataset=tff_emnist',
      f'--data_dir={tmp_path / "data"}', '--model=logreg')
  assert [r['round'] for r in records] == [1, 2]
  assert all(0 <= r['test_accuracy'] <= 1 for r in records)
