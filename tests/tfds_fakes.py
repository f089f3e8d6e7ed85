"""Small fake TFDS datasets for tests, real files or `mock_data`.

`write_dataset` writes a dataset's TFDS metadata and, optionally, ArrayRecord
records of random examples encoded by TFDS itself (PNG images), so a loader
runs on the real, unmocked read path. `mock_tfds` runs code under
`tfds.testing.mock_data` with a dataset that counts as prepared.
"""

import contextlib
import functools
import io
import os

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
from tensorflow_datasets.core import file_adapters

from fedjax_core.data.datasets import tfds_images

SIZES = {'train': 11, 'test': 6}


def _png(image):
  buf = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
      buf, format='PNG')
  buf.seek(0)
  return buf


def _example(features, split, index, image, label):
  """An example of `features`; CIFAR-100's coarse label differs from the
  fine one."""
  example = {'image': _png(image), 'label': label}
  if 'id' in features:
    example['id'] = f'{split}_{index:05d}'
  if 'coarse_label' in features:
    example['coarse_label'] = label // 5
  return example


def write_dataset(data_dir, name, file_format='array_record',
                  write_records=True, label_range=None, seed=0):
  """Writes TFDS metadata (and records) of our dataset `name`.

  Returns:
    {split: (images, labels)} as written, in TFDS's layout.
  """
  builder = tfds.builder(tfds_images.TFDS_NAMES[name], data_dir=data_dir,
                         file_format=file_format)
  features = builder.info.features
  if label_range is None:
    label_range = 0, features['label'].num_classes
  rng = np.random.default_rng(seed)
  os.makedirs(builder.data_dir)
  written, split_infos = {}, []
  for split, n in SIZES.items():
    images = rng.integers(0, 256, (n, *features['image'].shape), np.uint8)
    labels = rng.integers(*label_range, n)
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name=builder.name, split=split,
        filetype_suffix=file_format)
    if write_records:
      file_adapters.ADAPTER_FOR_FORMAT[builder.info.file_format].write_examples(
          template.sharded_filepath(shard_index=0, num_shards=1),
          [(i, features.serialize_example(_example(features, split, i, x, y)))
           for i, (x, y) in enumerate(zip(images, labels))])
    split_infos.append(tfds.core.SplitInfo(
        name=split, shard_lengths=[n], num_bytes=0,
        filename_template=template))
    written[split] = images, labels
  builder.info.set_splits(tfds.core.SplitDict(split_infos))
  builder.info.write_to_directory(builder.data_dir)
  return written


class DataSourceMock(tfds.testing.PickableDataSourceMock):
  """mock_data's ArrayRecord mock with a working `__getitems__`.

  TFDS 4.9.10's mock_data sets `__getitems__` to a function whose first
  argument is the mock but does not bind it, so batched reads fail under it.
  """

  def __setattr__(self, name, value):
    if name == '__getitems__':
      value = functools.partial(value, self)
    super().__setattr__(name, value)


@contextlib.contextmanager
def mock_tfds(data_dir, name, num_examples):
  """Runs the block under `tfds.testing.mock_data` with dataset `name`
  prepared: its metadata (no records) is written to `data_dir`, and every
  split holds `num_examples` random examples."""
  write_dataset(data_dir, name, write_records=False)
  with tfds.testing.mock_data(
      num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_FILES,
      data_dir=str(data_dir), mock_array_record_data_source=DataSourceMock()):
    yield
