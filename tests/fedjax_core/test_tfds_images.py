"""Tests of fedjax_core.data.datasets.tfds_images.

Most tests write small fake datasets in ArrayRecord format with TFDS's own
feature encoding (PNG images), so the loader runs on the real, unmocked read
path; one also runs it under `tfds.testing.mock_data`.
"""

import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from fedjax_core.data.federated import CentralDataset
from fedjax_core.data.datasets import tfds_images
from fedjax_core.data.datasets.tfds_images import DatasetNotPreparedError
from fedjax_core.data.datasets.tfds_images import load_tfds
from tfds_fakes import SIZES, mock_tfds, write_dataset

_NUM_CLASSES = {
    'mnist': 10,
    'fashion_mnist': 10,
    'emnist_balanced': 47,
    'emnist_byclass': 62,
    'emnist_letters': 26,
    'cifar10': 10,
    'cifar100': 100,
}
def _check_layout(data, name):
  assert isinstance(data, CentralDataset)
  assert data.name == name and data.train_groups is None
  assert data.num_classes == _NUM_CLASSES[name]
  shape = (32, 32, 3) if name.startswith('cifar') else (28, 28, 1)
  for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
    assert x.shape[1:] == shape and x.dtype == np.uint8
    assert y.dtype == np.int32
    assert 0 <= y.min() and y.max() < data.num_classes


def _to_mnist_orientation(name, images):
  return images.swapaxes(1, 2) if name.startswith('emnist') else images


@pytest.fixture(name='small_chunks')
def _small_chunks(monkeypatch):
  """Several chunks per split, the last one partial."""
  monkeypatch.setattr(tfds_images, '_CHUNK_SIZE', 4)


@pytest.mark.parametrize('name', list(tfds_images.TFDS_NAMES))
def test_loads_written_examples(name, tmp_path, small_chunks):
  letters = name == 'emnist_letters'
  written = write_dataset(tmp_path, name,
                           label_range=(1, 27) if letters else None)
  data = load_tfds(name, data_dir=str(tmp_path))
  _check_layout(data, name)
  for split in ('train', 'test'):
    images, labels = written[split]
    np.testing.assert_array_equal(getattr(data, f'{split}_x'),
                                  _to_mnist_orientation(name, images))
    np.testing.assert_array_equal(getattr(data, f'{split}_y'),
                                  labels - 1 if letters else labels)


# Not emnist_letters: mock labels span TFDS's 37 classes, not the real 1..26.
@pytest.mark.parametrize(
    'name', [n for n in tfds_images.TFDS_NAMES if n != 'emnist_letters'])
def test_matches_data_source_under_mock_data(name, tmp_path, small_chunks):
  with mock_tfds(tmp_path, name, num_examples=10):
    data = load_tfds(name)
    source = tfds.data_source(tfds_images.TFDS_NAMES[name], split='train',
                              download=False)
    examples = {i: source[i] for i in (0, 3, 4, 9)}
  _check_layout(data, name)
  assert len(data.train_y) == len(data.test_y) == 10
  for i, example in examples.items():
    np.testing.assert_array_equal(
        data.train_x[i], _to_mnist_orientation(name, example['image'][None])[0])
    assert data.train_y[i] == example['label']


@pytest.mark.parametrize('name', ['mnist', 'emnist_letters'])
def test_missing_dataset_error(name, tmp_path, caplog):
  with pytest.raises(DatasetNotPreparedError) as error:
    load_tfds(name, data_dir=str(tmp_path))
  # TFDS's warning about the version folder that does not exist is dropped.
  assert not [r for r in caplog.records
              if 'tensorflow_datasets' in r.pathname], caplog.text
  message = str(error.value)
  assert 'is not prepared' in message
  assert f"'{name}'" in message and str(tmp_path) in message
  assert f'tfds build {tfds_images.TFDS_NAMES[name]} --data_dir=' in message
  assert '--file_format=array_record' in message


def test_missing_dataset_error_names_default_data_dir(tmp_path, monkeypatch):
  default_dir = str(tmp_path / 'default_tfds')
  monkeypatch.setattr(tfds.core.constants, 'DATA_DIR', default_dir)
  with pytest.raises(DatasetNotPreparedError, match=re.escape(default_dir)):
    load_tfds('cifar10')


def test_tfrecord_dataset_error(tmp_path):
  write_dataset(tmp_path, 'cifar10', file_format='tfrecord',
                 write_records=False)
  with pytest.raises(DatasetNotPreparedError, match='tfrecord') as error:
    load_tfds('cifar10', data_dir=str(tmp_path))
  assert 'tfds build cifar10 --data_dir=' in str(error.value)


def test_unknown_name():
  with pytest.raises(ValueError) as error:
    load_tfds('emnist')
  assert not isinstance(error.value, DatasetNotPreparedError)
  for name in tfds_images.TFDS_NAMES:
    assert name in str(error.value)


def test_letters_label_zero_is_an_error(tmp_path):
  write_dataset(tmp_path, 'emnist_letters', label_range=(0, 1))
  with pytest.raises(ValueError, match=r'\[1, 27\)'):
    load_tfds('emnist_letters', data_dir=str(tmp_path))


def test_progress_bar_only_for_large_splits(tmp_path, monkeypatch, capsys):
  write_dataset(tmp_path, 'mnist')
  load_tfds('mnist', data_dir=str(tmp_path))
  assert 'mnist train' not in capsys.readouterr().err
  monkeypatch.setattr(tfds_images, '_MIN_EXAMPLES_FOR_PROGRESS',
                      SIZES['train'])
  load_tfds('mnist', data_dir=str(tmp_path))
  err = capsys.readouterr().err
  assert 'mnist train' in err and 'mnist test' not in err
