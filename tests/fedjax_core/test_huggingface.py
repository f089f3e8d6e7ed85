"""Tests of the Hugging Face dataset loader on tiny datasets written here."""

import datasets
import numpy as np
import PIL.Image
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedjax_core.data import partition
from fedjax_core.data.datasets import huggingface as hf
from fedjax_core.data.datasets.tfds_images import DatasetNotPreparedError
from fedjax_core.errors import SettingError


@pytest.fixture(autouse=True)
def _quiet_cache(tmp_path_factory, monkeypatch):
  """Keeps `load_dataset`'s Arrow cache in a folder of the test's own."""
  monkeypatch.setattr(datasets.config, 'HF_DATASETS_CACHE',
                      str(tmp_path_factory.mktemp('cache')))
  datasets.disable_progress_bars()
  yield
  datasets.enable_progress_bars()


def _images(values, mode):
  """2 x 3 images: image `i` is `values[i]` everywhere, pixel (1, 2) plus
  one; RGB images repeat it over three channels, the blue one plus two."""
  out = np.zeros((len(values), 2, 3, 3), np.uint8)
  out[:] = np.asarray(values, np.uint8)[:, None, None, None]
  out[:, 1, 2] += 1
  out[..., 2] += 2
  return out[..., :1] if mode == 'L' else out


def _image_split(values, labels, writers, mode):
  arrays = _images(values, mode)
  pictures = [PIL.Image.fromarray(a[..., 0] if mode == 'L' else a)
              for a in arrays]
  features = datasets.Features({
      'image': datasets.Image(),
      'character': datasets.ClassLabel(names=['a', 'b', 'c']),
      'writer_id': datasets.Value('string')})
  return datasets.Dataset.from_dict(
      {'image': pictures, 'character': labels, 'writer_id': writers},
      features=features), arrays


@pytest.mark.parametrize('mode', ['L', 'RGB'])
def test_saved_dataset_dict_of_images(tmp_path, mode):
  train, train_x = _image_split([10, 20, 30, 40], [1, 0, 1, 0],
                                ['w2', 'w0', 'w2', 'w1'], mode)
  test, test_x = _image_split([50, 60], [0, 1], ['w3', 'w0'], mode)
  datasets.DatasetDict(train=train, test=test).save_to_disk(tmp_path / 'd')
  central = hf.load_hf(hf.HFSource(str(tmp_path / 'd'), 'writer_id'))
  assert central.name == 'huggingface'
  assert central.train_x.dtype == np.uint8
  np.testing.assert_array_equal(central.train_x, train_x)
  np.testing.assert_array_equal(central.test_x, test_x)
  assert central.train_x.shape == (4, 2, 3, 1 if mode == 'L' else 3)
  np.testing.assert_array_equal(central.train_y, [1, 0, 1, 0])
  np.testing.assert_array_equal(central.test_y, [0, 1])
  assert central.train_y.dtype == np.int32
  assert central.num_classes == 3  # The ClassLabel's names, not max + 1.
  # Sorted writers of both splits: w0, w1, w2, w3.
  np.testing.assert_array_equal(central.train_groups, [2, 0, 2, 1])
  np.testing.assert_array_equal(central.test_groups, [3, 0])
  assert central.train_groups.dtype == np.int64
  clients = partition.make_partition(
      'natural', labels=central.train_y, groups=central.train_groups,
      num_clients=3, seed=0)
  assert [c.tolist() for c in clients] == [[1], [3], [0, 2]]


def _numeric_table(rows, clients, width=3):
  """Feature row `r` is `r, r + 0.5, ...`; label is `r % 4`."""
  rows = np.asarray(rows)
  x = rows[:, None] + 0.5 * np.arange(width)
  return pa.table({
      'client': pa.array(clients, pa.int64()),
      'x': pa.array(list(x), pa.list_(pa.float64(), width)),
      'label': pa.array(rows % 4, pa.int64())}), x


def test_parquet_directory_splits_by_file_name(tmp_path):
  train, train_x = _numeric_table([0, 1, 2, 3, 4], [7, 3, 7, 9, 3])
  test, test_x = _numeric_table([5, 6], [3, 11])
  (tmp_path / 'data').mkdir()
  pq.write_table(train, tmp_path / 'data' / 'train-00000-of-00001.parquet')
  pq.write_table(test, tmp_path / 'data' / 'test-00000-of-00001.parquet')
  (tmp_path / 'README.md').write_text('not data')
  central = hf.load_hf(hf.HFSource(str(tmp_path), 'client'))
  assert central.train_x.dtype == np.float32
  np.testing.assert_array_equal(central.train_x, train_x.astype(np.float32))
  np.testing.assert_array_equal(central.test_x, test_x.astype(np.float32))
  np.testing.assert_array_equal(central.train_y, [0, 1, 2, 3, 0])
  np.testing.assert_array_equal(central.test_y, [1, 2])
  assert central.num_classes == 4  # Largest label plus one.
  # Sorted clients of both splits: 3, 7, 9, 11.
  np.testing.assert_array_equal(central.train_groups, [1, 0, 1, 2, 0])
  np.testing.assert_array_equal(central.test_groups, [0, 3])


def test_single_split_holds_out_a_tenth_of_each_client(tmp_path):
  sizes = {'u0': 20, 'u1': 10, 'u2': 5, 'u3': 1, 'u4': 2}
  clients = np.repeat(list(sizes), list(sizes.values()))
  order = np.random.default_rng(1).permutation(len(clients))
  clients = clients[order]  # Rows of a client spread over the file.
  table, x = _numeric_table(np.arange(len(clients)), [0] * len(clients))
  table = table.set_column(0, 'client', pa.array(clients))
  pq.write_table(table, tmp_path / 'all.parquet')
  source = hf.HFSource(str(tmp_path / 'all.parquet'), 'client', 'x')
  central = hf.load_hf(source, seed=3)
  # LEAF's cut: n - max(1, floor(0.9 n)) test rows.
  expected_test = {0: 2, 1: 1, 2: 1, 3: 0, 4: 1}
  assert (np.bincount(central.test_groups, minlength=5).tolist()
          == list(expected_test.values()))
  assert (np.bincount(central.train_groups, minlength=5).tolist()
          == [18, 9, 4, 1, 1])
  # Every row is in exactly one split, under its own client's key.
  row = np.concatenate([central.train_x[:, 0], central.test_x[:, 0]])
  assert sorted(row.astype(int).tolist()) == list(range(len(clients)))
  key_of_row = np.array([int(c[1:]) for c in clients])
  np.testing.assert_array_equal(
      np.concatenate([central.train_groups, central.test_groups]),
      key_of_row[row.astype(int)])
  np.testing.assert_array_equal(
      np.concatenate([central.train_y, central.test_y]), row.astype(int) % 4)
  again = hf.load_hf(source, seed=3)
  np.testing.assert_array_equal(again.test_x, central.test_x)
  other = hf.load_hf(source, seed=4)
  assert not np.array_equal(other.test_x, central.test_x)


def test_saved_single_dataset_with_scalar_feature(tmp_path):
  datasets.Dataset.from_dict(
      {'v': [0.5, 1.5, 2.5], 'label': [2, 0, 1], 'site': [1, 1, 2]}
  ).save_to_disk(tmp_path / 'd')
  central = hf.load_hf(hf.HFSource(str(tmp_path / 'd'), 'site'))
  assert central.train_x.shape[1:] == (1,)
  # Site 1 holds out one of its two rows; site 2 keeps its one row.
  assert central.test_groups.tolist() == [0]
  assert sorted(central.train_x[:, 0].tolist() +
                central.test_x[:, 0].tolist()) == [0.5, 1.5, 2.5]


def test_train_without_test_is_held_out_and_other_splits_ignored(tmp_path):
  split = {'x': [0.0, 1.0], 'label': [0, 1], 'user': [5, 5]}
  datasets.DatasetDict(
      validation=datasets.Dataset.from_dict({**split, 'x': [7.0, 8.0]}),
      train=datasets.Dataset.from_dict(split)).save_to_disk(tmp_path / 'd')
  central = hf.load_hf(hf.HFSource(str(tmp_path / 'd'), 'user'))
  assert sorted([*central.train_x[:, 0], *central.test_x[:, 0]]) == [0, 1]
  assert central.test_groups.tolist() == [0]


def test_several_splits_without_train_are_refused(tmp_path):
  split = datasets.Dataset.from_dict({'x': [0.0], 'label': [0], 'user': [5]})
  datasets.DatasetDict(validation=split, test=split).save_to_disk(
      tmp_path / 'd')
  with pytest.raises(SettingError, match="no 'train'"):
    hf.load_hf(hf.HFSource(str(tmp_path / 'd'), 'user'))


def _one_split(tmp_path, columns, features=None):
  path = tmp_path / 'd'
  datasets.Dataset.from_dict(columns, features=features).save_to_disk(path)
  return str(path)


def test_missing_partition_column_lists_columns(tmp_path):
  path = _one_split(tmp_path, {'x': [1.0], 'label': [0], 'user': [1]})
  with pytest.raises(SettingError, match='x, label, user') as error:
    hf.load_hf(hf.HFSource(path, 'writer_id'))
  assert error.value.setting == 'hf_partition_by'


def test_missing_label_column(tmp_path):
  path = _one_split(tmp_path, {'x': [1.0], 'y': [0], 'user': [1]})
  with pytest.raises(SettingError, match='x, y, user') as error:
    hf.load_hf(hf.HFSource(path, 'user'))
  assert error.value.setting == 'hf_label'
  with pytest.raises(SettingError, match="no column 'z'") as error:
    hf.load_hf(hf.HFSource(path, 'user', label='z'))
  assert error.value.setting == 'hf_label'


def test_ambiguous_features_lists_columns(tmp_path):
  path = _one_split(tmp_path, {'a': [1.0], 'b': [2.0], 'label': [0],
                               'user': [1]})
  with pytest.raises(SettingError, match='a, b') as error:
    hf.load_hf(hf.HFSource(path, 'user'))
  assert error.value.setting == 'hf_features'


def test_text_features_are_refused(tmp_path):
  path = _one_split(tmp_path, {'text': ['hi'], 'label': [0], 'user': [1]})
  with pytest.raises(SettingError, match='text columns are not supported'):
    hf.load_hf(hf.HFSource(path, 'user'))


def test_images_of_several_sizes_are_refused(tmp_path):
  pictures = [PIL.Image.fromarray(np.zeros(shape, np.uint8))
              for shape in ((2, 3), (3, 3))]
  path = _one_split(tmp_path, {'image': pictures, 'label': [0, 1],
                               'user': [1, 1]},
                    datasets.Features({'image': datasets.Image(),
                                       'label': datasets.Value('int64'),
                                       'user': datasets.Value('int64')}))
  with pytest.raises(SettingError, match='share one size'):
    hf.load_hf(hf.HFSource(path, 'user'))


def test_missing_path_says_how_to_make_one(tmp_path):
  path = str(tmp_path / 'femnist')
  with pytest.raises(DatasetNotPreparedError) as error:
    hf.load_hf(hf.HFSource(path, 'writer_id'))
  assert path in str(error.value)
  assert 'save_to_disk' in str(error.value)
  assert error.value.setting == 'hf_path'


def test_folder_without_data(tmp_path):
  (tmp_path / 'notes.txt').write_text('nothing')
  with pytest.raises(DatasetNotPreparedError, match='neither a saved'):
    hf.load_hf(hf.HFSource(str(tmp_path), 'writer_id'))
