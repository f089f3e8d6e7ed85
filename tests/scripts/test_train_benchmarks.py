"""scripts/train.py on the federated benchmarks' file formats, end to end:
per-position language modelling, a sentiment LSTM, and a saved Hugging Face
dataset whose clients are scored on their own source test rows."""

import json

import numpy as np
import pytest

from fedjax_core.data.datasets import tff_example
from fedjax_core.data.datasets import tff_sqlite
from scripts.benchmarks import stackoverflow_files
from train_in_process import run_train

@pytest.mark.slow
def test_tff_shakespeare_trains_an_lstm_per_position(tmp_path, monkeypatch):
  """Three roles' snippets in TFF's SQLite schema; the LSTM of Reddi et al.
  predicts every next character."""
  snippets = {'ROMEO': [b'But soft, what light', b'It is the east'],
              'JULIET': [b'O Romeo, Romeo!'], 'NURSE': [b'Madam!', b'Anon']}
  rows = lambda split: [(role, tff_example.serialize_example(
      {'snippets': text})) for role, texts in snippets.items()
                        for text in texts[:1 if split == 'test' else None]]
  (tmp_path / 'data').mkdir()
  tff_sqlite.write_sqlite(tmp_path / 'data' / 'shakespeare.sqlite',
                          {'train': rows('train'), 'test': rows('test')})
  records, summary, _ = run_train(
      tmp_path / 'run', monkeypatch, '--dataset=tff_shakespeare',
      f'--data_dir={tmp_path / "data"}', '--model=lstm_shakespeare',
      '--local_test=source')
  assert [r['round'] for r in records] == [1, 2]
  # Each snippet is one chunk of 80 positions, mostly padding: the accuracy
  # pools the scored positions, never the padding.
  assert all(0 <= r['test_accuracy'] <= 1 for r in records)
  assert all(np.isfinite(r['test_loss']) for r in records)
  assert 0 <= summary['final_local_test_accuracy_mean'] <= 1


def _write_leaf_sent140(root):
  folder = lambda split: root / 'sent140' / 'data' / split
  tweets = {'train': {'ann': (['good day', 'so good'], [1, 1]),
                      'bo': (['bad day', 'so bad'], [0, 0]),
                      'cy': (['good good', 'bad'], [1, 0])},
            'test': {'ann': (['good'], [1]), 'bo': (['bad'], [0])}}
  for split, users in tweets.items():
    folder(split).mkdir(parents=True)
    (folder(split) / f'all_data_niid_1_keep_0_{split}_9.json').write_text(
        json.dumps({
            'users': list(users), 'num_samples': [2] * len(users),
            'user_data': {
                u: {'x': [['1', 'Mon', 'NO_QUERY', u, t, 'training']
                          for t in texts], 'y': ys}
                for u, (texts, ys) in users.items()}}))


@pytest.mark.slow
def test_leaf_sent140_trains_leafs_lstm(tmp_path, monkeypatch):
  _write_leaf_sent140(tmp_path / 'leaf')
  records, _, partition = run_train(
      tmp_path / 'run', monkeypatch, '--dataset=leaf_sent140',
      f'--data_dir={tmp_path / "leaf"}', '--model=lstm_sent140')
  assert [r['round'] for r in records] == [1, 2]
  assert partition['summary']['num_clients'] == 3
  assert all(r['test_accuracy'] in (0, 0.5, 1) for r in records)


@pytest.mark.slow
def test_huggingface_clients_are_scored_on_their_test_rows(tmp_path,
                                                           monkeypatch):
  datasets = pytest.importorskip('datasets')
  monkeypatch.setenv('HF_DATASETS_CACHE', str(tmp_path / 'cache'))
  rng = np.random.default_rng(0)
  split = lambda n, writers: datasets.Dataset.from_dict(
      {'pixels': rng.random((n, 6)).astype(np.float32).tolist(),
       'label': rng.integers(0, 3, n).tolist(), 'writer_id': writers})
  datasets.DatasetDict({
      'train': split(6, ['w1', 'w1', 'w2', 'w2', 'w3', 'w3']),
      'test': split(3, ['w3', 'w1', 'w9'])}).save_to_disk(tmp_path / 'hf')
  records, _, partition = run_train(
      tmp_path / 'run', monkeypatch, '--dataset=huggingface',
      f'--hf_path={tmp_path / "hf"}', '--hf_partition_by=writer_id',
      '--model=logreg', '--local_test=source')
  assert partition['summary']['num_clients'] == 3
  # w1 and w3 hold one source test row each (appended after the 6 training
  # rows, in test order: w3's then w1's); w2 has none, w9 trains nowhere.
  assert partition['local_test_rows'] == [7, 6]
  assert partition['local_test_offsets'] == [0, 1, 1, 2]
  assert records[-1]['local_test_accuracy_mean'] in (0, 0.5, 1)


@pytest.mark.slow
def test_tff_stackoverflow_tags_train_a_bag_of_words_regression(
    tmp_path, monkeypatch):
  """Generated posts in TFF's StackOverflow schema: 500 tags as multi-hot
  sets, scored by recall at 5."""
  stackoverflow_files.make_files(str(tmp_path / 'data'), clients=6,
                                 examples_per_client=2, test_fraction=1)
  records, _, partition = run_train(
      tmp_path / 'run', monkeypatch, '--dataset=tff_stackoverflow_tags',
      f'--data_dir={tmp_path / "data"}', '--model=bow_logreg',
      '--local_test=source')
  assert partition['summary']['num_clients'] == 6
  assert partition['summary']['num_classes'] == 500
  assert all(0 <= r['test_accuracy'] <= 1 and np.isfinite(r['test_loss'])
             for r in records)
