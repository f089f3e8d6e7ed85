"""Tests of fedjax_core.engine.metrics_writer."""

import json

import numpy as np
import pytest

from fedjax_core.engine.metrics_writer import MetricsWriter, read_metrics


def _write(path, records, completed_rounds=0):
  writer = MetricsWriter(str(path), completed_rounds)
  for record in records:
    writer.write(record)
  writer.close()


def test_writes_one_json_object_per_line(tmp_path):
  """Each write appends one line holding one JSON object."""
  path = tmp_path / 'nested' / 'dir' / 'metrics.jsonl'
  _write(path, [{'round': r, 'loss': 1.0 / r} for r in (1, 2, 3)])
  lines = path.read_text().splitlines()
  assert len(lines) == 3
  parsed = [json.loads(line) for line in lines]
  assert all(isinstance(p, dict) for p in parsed)
  assert [p['round'] for p in parsed] == [1, 2, 3]
  assert parsed[1]['loss'] == 0.5


def test_numpy_scalars_become_plain_numbers(tmp_path):
  """np.float32 / np.float64 scalars are written as JSON numbers."""
  path = tmp_path / 'm.jsonl'
  _write(path, [{'round': 1, 'a': np.float32(0.25), 'b': np.float64(1.5),
                 'name': 'fedavg'}])
  record = json.loads(path.read_text())
  assert record == {'round': 1, 'a': 0.25, 'b': 1.5, 'name': 'fedavg'}


def test_non_finite_floats_become_strings(tmp_path):
  """NaN and +-inf (plain or numpy) are written as strings, so every line
  is strict JSON."""
  path = tmp_path / 'm.jsonl'
  _write(path, [{'round': 1, 'nan': float('nan'), 'inf': np.float32(np.inf),
                 'ninf': -np.inf, 'ok': 2.0}])
  text = path.read_text()
  record = json.loads(text, parse_constant=lambda c: pytest.fail(c))
  assert record['nan'] == 'nan'
  assert record['inf'] == 'inf'
  assert record['ninf'] == '-inf'
  assert record['ok'] == 2.0


def test_reopening_drops_later_rounds_and_keeps_earlier(tmp_path):
  """Resuming after 2 completed rounds drops rounds 3 and 4, keeps 1 and 2
  and appends after them."""
  path = tmp_path / 'm.jsonl'
  _write(path, [{'round': r, 'loss': float(r)} for r in (1, 2, 3, 4)])
  _write(path, [{'round': 3, 'loss': 30.0}], completed_rounds=2)
  records = read_metrics(str(path))
  assert [r['round'] for r in records] == [1, 2, 3]
  assert [r['loss'] for r in records] == [1.0, 2.0, 30.0]


def test_reopening_from_scratch_empties_the_file(tmp_path):
  """completed_rounds=0 (a fresh run) keeps no earlier line."""
  path = tmp_path / 'm.jsonl'
  _write(path, [{'round': 1, 'loss': 1.0}])
  _write(path, [])
  assert read_metrics(str(path)) == []


def test_read_metrics_round_trips(tmp_path):
  """read_metrics returns the written records in order."""
  path = tmp_path / 'm.jsonl'
  records = [{'round': 1, 'loss': 0.5, 'tag': 'x'},
             {'round': 2, 'loss': 0.25, 'tag': 'y', 'test_accuracy': 0.75}]
  _write(path, records)
  assert read_metrics(str(path)) == records


def test_integers_stay_integers(tmp_path):
  """Integer fields (the round, numpy ints) are written as JSON integers,
  not as 3.0."""
  path = tmp_path / 'm.jsonl'
  _write(path, [{'round': 3, 'num_examples': np.int64(12)}])
  assert json.loads(path.read_text()) == {'round': 3, 'num_examples': 12}
  assert '"round": 3,' in path.read_text()
  assert isinstance(read_metrics(str(path))[0]['round'], int)
