"""Tests of fedjax_core.data.partition_report."""

import json

import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

from fedjax_core.data import partition_report
from fedjax_core.data.client_indices import ClientIndices

_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'

# Client 0: labels [0, 0, 0, 1]; client 1: [2]; client 2: none;
# client 3: [0, 1, 2, 3].
_LABELS = np.array([0, 2, 0, 1, 0, 0, 1, 2, 3])
_CLIENTS = ClientIndices.from_lists(
    [np.array([0, 2, 3, 4]), np.array([1]), np.array([], np.int64),
     np.array([5, 6, 7, 8])])


def _random_case(num_examples=3000, num_clients=40, num_classes=7, seed=0):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, num_examples)
  # Sizes falling with the client id, client 5 empty, some rows unused.
  owner = (rng.random(num_examples) ** 2 * num_clients).astype(np.int64)
  owner[owner == 5] = 4
  used = rng.random(num_examples) < 0.9
  per_client = [np.flatnonzero(used & (owner == c))
                for c in range(num_clients)]
  return labels, ClientIndices.from_lists(per_client), num_classes


def test_label_counts_matches_per_client_loop():
  labels, clients, num_classes = _random_case()
  expected = np.stack([np.bincount(labels[rows], minlength=num_classes)
                       for rows in clients])
  got = partition_report.label_counts(labels, clients, num_classes)
  assert got.dtype == np.int64
  np.testing.assert_array_equal(got, expected)


def test_label_counts_hand_case():
  np.testing.assert_array_equal(
      partition_report.label_counts(_LABELS, _CLIENTS, 4),
      [[3, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]])


@pytest.mark.parametrize('bad_label', [-1, 4])
def test_label_counts_rejects_labels_out_of_range(bad_label):
  labels = _LABELS.copy()
  labels[3] = bad_label
  with pytest.raises(ValueError, match=r'\[0, 4\)'):
    partition_report.label_counts(labels, _CLIENTS, 4)


def test_label_entropy_hand_values():
  got = partition_report.label_entropy(
      np.array([[5, 5, 5, 5], [0, 7, 0, 0], [3, 1, 0, 0], [0, 0, 0, 0]]))
  expected = [2.0, 0.0, -(0.75 * np.log2(0.75) + 0.25 * np.log2(0.25)), 0.0]
  np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
  assert np.isclose(expected[2], 0.8112781244591328)
  assert not np.any(np.signbit(got))  # No -0.0 in the JSON.


def test_summarize_hand_case():
  h_31 = 0.8112781244591328
  summary = partition_report.summarize(_LABELS, _CLIENTS, 5)
  entropy = summary.pop('label_entropy_bits')
  assert summary == {
      'num_clients': 4, 'num_examples': 9, 'num_classes': 5,
      'client_size': {'min': 0, 'median': 2.5, 'mean': 2.25, 'max': 4}}
  # Over the three non-empty clients: [3, 1], one class, uniform.
  assert entropy == pytest.approx({'mean': (h_31 + 0 + 2) / 3, 'min': 0.0,
                                   'max': 2.0,
                                   'max_possible': np.log2(5)})
  json.dumps(summary | {'label_entropy_bits': entropy})  # JSON-ready.


def test_partition_json_round_trip(tmp_path):
  labels, clients, num_classes = _random_case()
  path = tmp_path / 'partition.json'
  written = partition_report.write_partition_json(
      path, clients,
      partition_report.label_counts(labels, clients, num_classes),
      scheme='dirichlet', args={'alpha': 0.3, 'seed': np.int64(4)})
  back = partition_report.read_partition(path)
  np.testing.assert_array_equal(back.rows, clients.rows)
  np.testing.assert_array_equal(back.offsets, clients.offsets)
  record = json.loads(path.read_text())
  assert set(record) == {'scheme', 'args', 'summary', 'client_sizes',
                         'label_counts', 'offsets', 'rows'}
  assert record['scheme'] == 'dirichlet'
  assert record['args'] == {'alpha': 0.3, 'seed': 4}
  assert record['summary'] == partition_report.summarize(labels, clients,
                                                         num_classes)
  assert written == record['summary']
  assert record['client_sizes'] == clients.sizes.tolist()
  np.testing.assert_array_equal(
      record['label_counts'],
      partition_report.label_counts(labels, clients, num_classes))


def test_partition_json_records_local_test_rows(tmp_path):
  labels, clients, num_classes = _random_case()
  kept, held = clients.hold_out(0.3, seed=0)
  path = tmp_path / 'partition.json'
  partition_report.write_partition_json(
      path, kept, partition_report.label_counts(labels, kept, num_classes),
      scheme='iid', args={}, local_test_indices=held)
  record = json.loads(path.read_text())
  assert record['local_test_rows'] == held.rows.tolist()
  assert record['local_test_offsets'] == held.offsets.tolist()
  np.testing.assert_array_equal(
      partition_report.read_partition(path).rows, kept.rows)


def _check_png(path):
  assert path.read_bytes()[:8] == _PNG_MAGIC
  height, width, channels = matplotlib.image.imread(path).shape
  assert 300 <= height <= 2000 and 300 <= width <= 2000 and channels in (3, 4)


def test_plot_heatmap_writes_png(tmp_path):
  labels, clients, num_classes = _random_case()
  counts = partition_report.label_counts(labels, clients, num_classes)
  path = tmp_path / 'heatmap.png'
  fig = partition_report.plot_heatmap(path, counts, title='random')
  _check_png(path)
  heat_ax = fig.axes[0]
  assert heat_ax.get_xlabel() == 'class'
  assert heat_ax.get_ylabel() == 'client'
  assert fig.get_suptitle() == 'random'
  shares = heat_ax.get_images()[0].get_array()
  np.testing.assert_allclose(
      shares, counts / np.maximum(counts.sum(axis=1, keepdims=True), 1))
  assert len(fig.axes) == 3  # Heatmap, client sizes and colorbar.
  assert not plt.get_fignums()  # pyplot's state is untouched.


def test_plot_heatmap_subsets_many_clients(tmp_path):
  num_clients, num_classes = 1001, 5
  counts = np.zeros((num_clients, num_classes), np.int64)
  counts[np.arange(num_clients), np.arange(num_clients) % num_classes] = 1
  path = tmp_path / 'heatmap.png'
  fig = partition_report.plot_heatmap(path, counts, title='many',
                                      max_clients=11)
  _check_png(path)
  assert fig.get_suptitle() == 'many\n11 of 1001 clients, evenly spaced'
  # Clients 0, 100, ..., 1000 hold classes 0, 0, 0, ...
  shares = np.asarray(fig.axes[0].get_images()[0].get_array())
  np.testing.assert_array_equal(shares, np.eye(num_classes)[[0] * 11])
  ticks = [int(t.get_text()) for t in fig.axes[0].get_yticklabels()]
  assert ticks[0] == 0 and ticks[-1] == 1000
  assert set(ticks) <= set(range(0, 1001, 100))
