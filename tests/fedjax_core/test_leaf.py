"""LEAF loaders on tiny directories laid out as LEAF's preprocess.sh writes
them (data/<name>/data/{train,test}/*.json), checked against values worked
out by hand."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from fedjax_core.data import datasets
from fedjax_core.data.datasets import leaf
from fedjax_core.data.datasets import leaf_text
from fedjax_core.data.datasets.tfds_images import DatasetNotPreparedError
from train_in_process import run_train


def _write_split(root, dataset, split, files):
  """Writes `files` ({file name: {user: (x, y)}}) as LEAF's split_data.py
  does, "num_samples" included."""
  folder = root / dataset / 'data' / split
  folder.mkdir(parents=True, exist_ok=True)
  for name, users in files.items():
    (folder / name).write_text(json.dumps({
        'users': list(users),
        'num_samples': [len(y) for _, y in users.values()],
        'user_data': {u: {'x': x, 'y': y} for u, (x, y) in users.items()}}))


def _femnist_image(ink_at):
  """784 LEAF floats: background 1.0 (white), the pixel `ink_at` 0.0."""
  pixels = [1.0] * 784
  pixels[ink_at] = 0.0
  return pixels


def _write_femnist(root):
  """Writers f0003_12 (3 rows), f0001_40 (2) and f0002_07 (2) over two files
  per split; image k has its ink at pixel k."""
  img = _femnist_image
  _write_split(root, 'femnist', 'train', {
      'all_data_0_niid_1_keep_0_train_9.json': {
          'f0003_12': ([img(0), img(1)], [61, 0]),
          'f0001_40': ([img(2)], [35])},
      'all_data_1_niid_1_keep_0_train_9.json': {
          'f0002_07': ([img(3)], [10])}})
  _write_split(root, 'femnist', 'test', {
      'all_data_0_niid_1_keep_0_test_9.json': {
          'f0003_12': ([img(4)], [5]),
          'f0001_40': ([img(5)], [36])},
      'all_data_1_niid_1_keep_0_test_9.json': {
          'f0002_07': ([img(6)], [1])}})


def test_femnist_inverts_pixels_and_keys_writers_in_sorted_order(tmp_path):
  _write_femnist(tmp_path)
  central = leaf.load_femnist(data_dir=str(tmp_path))
  assert central.name == 'leaf_femnist' and central.num_classes == 62
  assert central.train_x.dtype == np.uint8
  assert central.train_x.shape == (4, 28, 28, 1)
  # Background 1.0 -> 0, ink 0.0 -> 255, image k at pixel k.
  for x, first in ((central.train_x, 0), (central.test_x, 4)):
    expected = np.zeros((len(x), 784), np.uint8)
    expected[np.arange(len(x)), first + np.arange(len(x))] = 255
    np.testing.assert_array_equal(x.reshape(len(x), 784), expected)
  np.testing.assert_array_equal(central.train_y, [61, 0, 35, 10])
  np.testing.assert_array_equal(central.test_y, [5, 36, 1])
  # Sorted writers: f0001_40 -> 0, f0002_07 -> 1, f0003_12 -> 2.
  np.testing.assert_array_equal(central.train_groups, [2, 2, 0, 1])
  np.testing.assert_array_equal(central.test_groups, [2, 0, 1])


def test_femnist_grays_round_to_the_nearest_level(tmp_path):
  pixels = [1.0] * 784
  pixels[27] = 100 / 255  # 255 - 100.
  pixels[28] = 0.2  # 255 - round(51.0).
  pixels[29] = 0.5  # 255 - round(127.5): numpy rounds half to even, 128.
  _write_split(tmp_path, 'femnist', 'train', {'a.json': {'w': ([pixels], [3])}})
  _write_split(tmp_path, 'femnist', 'test', {'a.json': {'w': ([pixels], [3])}})
  x = leaf.load_femnist(data_dir=str(tmp_path)).train_x.reshape(784)
  assert (x[27], x[28], x[29]) == (155, 204, 127)
  assert np.count_nonzero(x) == 3


def test_users_only_in_one_split_share_one_key_space(tmp_path):
  """As `-t user` writes them: train users b, c; test users a, c."""
  img = _femnist_image(0)
  _write_split(tmp_path, 'femnist', 'train',
               {'t.json': {'c': ([img], [1]), 'b': ([img, img], [2, 3])}})
  _write_split(tmp_path, 'femnist', 'test',
               {'t.json': {'a': ([img], [4]), 'c': ([img], [5])}})
  central = leaf.load_femnist(data_dir=str(tmp_path))
  np.testing.assert_array_equal(central.train_groups, [2, 1, 1])
  np.testing.assert_array_equal(central.test_groups, [0, 2])


def test_femnist_rejects_labels_out_of_range(tmp_path):
  img = _femnist_image(0)
  _write_split(tmp_path, 'femnist', 'train', {'a.json': {'w': ([img], [62])}})
  _write_split(tmp_path, 'femnist', 'test', {'a.json': {'w': ([img], [0])}})
  with pytest.raises(ValueError, match=r'\[0, 62\)'):
    leaf.load_femnist(data_dir=str(tmp_path))


def test_missing_directory_names_path_source_and_command(tmp_path):
  folder = os.path.join(str(tmp_path), 'femnist', 'data', 'train')
  with pytest.raises(DatasetNotPreparedError) as info:
    leaf.load_femnist(data_dir=str(tmp_path))
  message = str(info.value)
  assert info.value.setting == 'data_dir'
  assert f'missing directory: {folder}' in message
  assert 'https://github.com/TalwalkarLab/leaf' in message
  assert ('cd leaf/data/femnist && ./preprocess.sh -s niid --sf 1.0 -k 0 '
          '-t sample') in message


def test_a_split_without_json_files_is_not_prepared(tmp_path):
  _write_split(tmp_path, 'shakespeare', 'train', {'a.json': {}})
  (tmp_path / 'shakespeare' / 'data' / 'test').mkdir()
  folder = os.path.join(str(tmp_path), 'shakespeare', 'data', 'test')
  with pytest.raises(DatasetNotPreparedError,
                     match=f'no JSON files in: {folder}.*--tf 0.8'):
    leaf_text.load_shakespeare(data_dir=str(tmp_path))


def test_no_data_dir_is_not_prepared():
  with pytest.raises(DatasetNotPreparedError, match='no data_dir'):
    leaf_text.load_sent140(data_dir=None)


def test_shakespeare_maps_letters_to_leaf_ids(tmp_path):
  # ALL_LETTERS: '\n' 0, ' ' 1, '0' 11, '?' 24, 'A' 25, 'a' 53, 'b' 54,
  # 'c' 55, '}' 79; '*' and 'é' are not in it: id 79, as LEAF's one-hot of
  # find() == -1.
  first = 'ab' * 40
  second = ' ' * 75 + 'A}*\né'
  _write_split(tmp_path, 'shakespeare', 'train', {
      'all_data_niid_0_keep_0_train_8.json': {
          'THE_TEMPEST_PROSPERO': ([first, second], ['c', 'é']),
          'HAMLET_OPHELIA': ([second], ['?'])}})
  # Like LEAF's split_data.py, num_samples over-counts Shakespeare's test
  # rows; the rows read are those of the data.
  _write_split(tmp_path, 'shakespeare', 'test', {
      'all_data_niid_0_keep_0_test_8.json': {
          'THE_TEMPEST_PROSPERO': ([first], ['0'])}})
  test_file = (tmp_path / 'shakespeare' / 'data' / 'test' /
               'all_data_niid_0_keep_0_test_8.json')
  data = json.loads(test_file.read_text())
  data['num_samples'] = [80]
  test_file.write_text(json.dumps(data))

  central = leaf_text.load_shakespeare(data_dir=str(tmp_path))
  first_ids = [53, 54] * 40
  second_ids = [1] * 75 + [25, 79, 79, 0, 79]
  assert central.train_x.dtype == np.int32 and central.num_classes == 80
  assert central.input_vocab == 80
  np.testing.assert_array_equal(central.train_x,
                                [first_ids, second_ids, second_ids])
  np.testing.assert_array_equal(central.train_y, [55, 79, 24])
  np.testing.assert_array_equal(central.test_x, [first_ids])
  np.testing.assert_array_equal(central.test_y, [11])
  # HAMLET_OPHELIA -> 0, THE_TEMPEST_PROSPERO -> 1.
  np.testing.assert_array_equal(central.train_groups, [1, 1, 0])
  np.testing.assert_array_equal(central.test_groups, [1])


def test_shakespeare_rejects_windows_of_another_length(tmp_path):
  _write_split(tmp_path, 'shakespeare', 'train',
               {'a.json': {'u': (['x' * 79], ['y'])}})
  _write_split(tmp_path, 'shakespeare', 'test',
               {'a.json': {'u': (['x' * 80], ['y'])}})
  with pytest.raises(ValueError, match='80 characters, got 79'):
    leaf_text.load_shakespeare(data_dir=str(tmp_path))


def _tweet(text, user):
  return ['1467810369', 'Mon Apr 06 22:19:45 PDT 2009', 'NO_QUERY', user,
          text, 'training']


def _write_sent140(root):
  _write_split(root, 'sent140', 'train', {
      'all_data_niid_1_keep_0_train_9.json': {
          'bob': ([_tweet("don't stop, the cat", 'bob')], [1]),
          'alice': ([_tweet('The cat sat. the cat!', 'alice')], [0])}})
  _write_split(root, 'sent140', 'test', {
      'all_data_niid_1_keep_0_test_9.json': {
          'alice': ([_tweet('The dog sat', 'alice'),
                     _tweet('cat ' * 30, 'alice')], [1, 0])}})


def test_sent140_without_embeddings_uses_frequent_training_words(tmp_path):
  # Training words: cat 3, the 2, and once each, in code-point order,
  # '!' ',' '.' 'The' "don't" 'sat' 'stop': ids 0..8; unknown and padding 9.
  _write_sent140(tmp_path)
  central, word2id = leaf_text.read_sent140(str(tmp_path))
  assert list(word2id) == ['cat', 'the', '!', ',', '.', 'The', "don't",
                           'sat', 'stop']
  pad = lambda ids: ids + [9] * (25 - len(ids))
  np.testing.assert_array_equal(
      central.train_x, [pad([6, 8, 3, 1, 0]), pad([5, 0, 7, 4, 1, 0, 2])])
  # 'dog' is unknown; 30 words keep their first 25.
  np.testing.assert_array_equal(central.test_x, [pad([5, 9, 7]), [0] * 25])
  assert central.train_x.dtype == np.int32
  np.testing.assert_array_equal(central.train_y, [1, 0])
  np.testing.assert_array_equal(central.test_y, [1, 0])
  np.testing.assert_array_equal(central.train_groups, [1, 0])
  np.testing.assert_array_equal(central.test_groups, [0, 0])
  assert central.num_classes == 2


def test_frequent_words_keeps_the_most_frequent():
  assert leaf_text.frequent_words(['b a c a b a', 'c d'], size=3) == [
      'a', 'b', 'c']


def _write_embs(path, vocab):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(
      {'vocab': vocab, 'emba': [[0.5, -0.25]] * (len(vocab) + 1)}))


@pytest.mark.parametrize('location', ['data_dir', 'leaf_models'])
def test_sent140_uses_the_embeddings_vocabulary(tmp_path, monkeypatch,
                                                location):
  """embs.json in data_dir/sent140 or where LEAF's get_embs.sh writes it,
  read in chunks shorter than its vocabulary."""
  data_dir = tmp_path / 'leaf' / 'data'
  _write_sent140(data_dir)
  embs = (data_dir / 'sent140' / 'embs.json' if location == 'data_dir' else
          tmp_path / 'leaf' / 'models' / 'sent140' / 'embs.json')
  _write_embs(embs, ['.', 'the', 'cat', 'sat', 'dog'])
  monkeypatch.setattr(leaf_text, '_CHUNK_CHARS', 16)
  central, word2id = leaf_text.read_sent140(str(data_dir))
  assert len(word2id) == 5 and central.input_vocab == 6
  # Unknown ('The', '!', "don't", ...) and padding: 5.
  pad = lambda ids: ids + [5] * (25 - len(ids))
  np.testing.assert_array_equal(
      central.train_x, [pad([5, 5, 5, 1, 2]), pad([5, 2, 3, 0, 1, 2, 5])])
  np.testing.assert_array_equal(central.test_x, [pad([5, 4, 3]), [2] * 25])


def test_glove_vocabulary_of_a_file_in_another_key_order(tmp_path):
  path = tmp_path / 'embs.json'
  path.write_text(json.dumps({'emba': [[1.0]], 'vocab': ['a', 'b']}))
  assert leaf_text.glove_vocabulary(str(path)) == ['a', 'b']


def _write_celeba(root, images):
  folder = root / 'celeba' / 'data' / 'raw' / 'img_align_celeba'
  folder.mkdir(parents=True)
  for name, (mode, color) in images.items():
    Image.new(mode, (12, 10), color).save(folder / name)
  # metadata_to_json.py writes labels as (attribute + 1) / 2: 0.0 or 1.0.
  _write_split(root, 'celeba', 'train', {
      'all_data_niid_05_keep_5_train_9.json': {
          '7': (['a.png', 'b.png'], [1.0, 0.0]),
          '12': (['c.png'], [0.0])}})
  _write_split(root, 'celeba', 'test', {
      'all_data_niid_05_keep_5_test_9.json': {
          '7': (['c.png'], [1.0])}})


def test_celeba_reads_resized_rgb_images(tmp_path):
  _write_celeba(tmp_path, {'a.png': ('RGB', (10, 20, 30)),
                           'b.png': ('L', 200),
                           'c.png': ('RGB', (255, 0, 128))})
  central = leaf.load_celeba(data_dir=str(tmp_path))
  assert central.train_x.shape == (3, 84, 84, 3)
  assert central.train_x.dtype == np.uint8
  # A one-colour image stays that colour when resized; gray becomes RGB.
  colors = np.array([(10, 20, 30), (200, 200, 200), (255, 0, 128)], np.uint8)
  np.testing.assert_array_equal(
      central.train_x,
      np.broadcast_to(colors[:, None, None, :], (3, 84, 84, 3)))
  np.testing.assert_array_equal(central.test_x[0], np.broadcast_to(
      colors[2], (84, 84, 3)))
  np.testing.assert_array_equal(central.train_y, [1, 0, 0])
  np.testing.assert_array_equal(central.test_y, [1])
  # Sorted as strings: '12' -> 0, '7' -> 1.
  np.testing.assert_array_equal(central.train_groups, [1, 1, 0])
  np.testing.assert_array_equal(central.test_groups, [1])
  assert central.num_classes == 2


def test_celeba_missing_images_are_not_prepared(tmp_path):
  _write_celeba(tmp_path, {'a.png': ('RGB', (1, 2, 3))})
  missing = os.path.join(str(tmp_path), 'celeba', 'data', 'raw',
                         'img_align_celeba', 'b.png')
  with pytest.raises(DatasetNotPreparedError,
                     match=f'missing image: {missing}.*mmlab'):
    leaf.load_celeba(data_dir=str(tmp_path))
  folder = os.path.dirname(missing)
  for name in os.listdir(folder):
    os.remove(os.path.join(folder, name))
  os.rmdir(folder)
  with pytest.raises(DatasetNotPreparedError,
                     match=f'missing image directory: {folder}'):
    leaf.load_celeba(data_dir=str(tmp_path))


def test_load_dataset_gives_one_client_per_writer(tmp_path):
  _write_femnist(tmp_path)
  federated = datasets.load_dataset('leaf_femnist', data_dir=str(tmp_path))
  assert sorted(federated.client_indices.sizes) == [1, 1, 2]
  assert len(federated.test_y) == 3


@pytest.mark.slow
def test_train_runs_on_leaf_femnist(tmp_path, monkeypatch):
  """scripts/train.py's main in this process, two rounds of logreg."""
  _write_femnist(tmp_path / 'data')
  records, _, _ = run_train(
      tmp_path / 'run', monkeypatch, '--dataset=leaf_femnist',
      f'--data_dir={tmp_path / "data"}', '--model=logreg')
  assert [r['round'] for r in records] == [1, 2]
  assert all(0 <= r['test_accuracy'] <= 1 for r in records)
