"""Tests of fedjax_core.experiments.reporting against numbers worked out here with numpy
from small metrics.jsonl files written by hand."""

import csv
import glob
import json
import os
import struct

import matplotlib.image
import numpy as np
import pytest

from fedjax_core.experiments import reporting

SWEEP_LABEL = 'algorithm=fedprox,client_lr=0.1'
# Three seeds of one sweep configuration, evaluated at rounds 2, 4 and 6.
EVAL_ROUNDS = [2, 4, 6]
ACCURACY = {0: [0.5, 0.8, 0.9],    # Reaches 0.8 at round 4 exactly.
            1: [0.82, 0.88, 0.85],  # Reaches 0.8 at round 2; best != final.
            2: [0.4, 0.6, 0.75]}   # Never reaches 0.8.
TEST_LOSS = {0: [1.0, 0.6, 0.3], 1: [0.5, 0.4, 0.45], 2: [1.2, 0.9, 0.7]}
WALL_S = {0: 1.0, 1: 2.0, 2: 0.5}  # Seconds per round.
PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def _record(seed, round_num):
  record = {'round': round_num, 'train_loss': (seed + 1) / round_num,
            'wall_s': WALL_S[seed], 'bytes_up': 100 * round_num}
  if round_num in EVAL_ROUNDS:
    i = EVAL_ROUNDS.index(round_num)
    record.update(test_accuracy=ACCURACY[seed][i],
                  test_loss=TEST_LOSS[seed][i])
  return record


def _write_lines(run_dir, lines):
  os.makedirs(run_dir, exist_ok=True)
  with open(os.path.join(run_dir, 'metrics.jsonl'), 'w') as f:
    f.writelines(line + '\n' for line in lines)


def _write_run(run_dir, records, tail=()):
  _write_lines(run_dir, [json.dumps(r) for r in records] + list(tail))


def _sweep_workdir(root):
  """DIR/runs/3fa2c0d1e9ab/seed_{0,1,2} (labelled by config.json) and a
  single run DIR/fedavg/metrics.jsonl. Seed 0 was resumed after round 2
  (rounds 3 and 4 written twice, the first time wrong); seed 2 was killed
  mid-line."""
  workdir = str(root)
  run = os.path.join(workdir, 'runs', '3fa2c0d1e9ab')
  os.makedirs(run)
  with open(os.path.join(run, 'config.json'), 'w') as f:
    json.dump({'label': SWEEP_LABEL, 'flags': {'algorithm': 'fedprox'}}, f)
  stale = [dict(_record(0, k), train_loss=99.0, test_accuracy=0.01)
           for k in (3, 4)]
  _write_run(os.path.join(run, 'seed_0'),
             [_record(0, k) for k in (1, 2)] + stale
             + [_record(0, k) for k in range(3, 7)])
  _write_run(os.path.join(run, 'seed_1'), [_record(1, k) for k in range(1, 7)])
  _write_run(os.path.join(run, 'seed_2'), [_record(2, k) for k in range(1, 7)],
             tail=['{"round": 7, "train_loss": 0.1, "wall'])
  _write_run(os.path.join(workdir, 'fedavg'),
             [{'round': 1, 'train_loss': 2.0, 'wall_s': 3.0},
              {'round': 2, 'train_loss': 1.5, 'wall_s': 4.0,
               'test_accuracy': 0.7, 'test_loss': 0.9}])
  return workdir


@pytest.fixture
def groups(tmp_path):
  return reporting.load_groups(_sweep_workdir(tmp_path))


def _group(groups, label):
  (group,) = [g for g in groups if g.label == label]
  return group


# Reading and grouping.


def test_parse_skips_bad_lines_and_keeps_the_last_record_of_a_round():
  lines = ['{"round": 2, "train_loss": 0.5}', '', 'not json',
           '{"round": 1, "train_loss": 0.9}', '[1, 2]', '{"loss": 1}',
           '{"round": 2, "train_loss": 0.4}', '{"round": 3, "train_lo']
  assert reporting.parse_records(lines) == [
      {'round': 1, 'train_loss': 0.9}, {'round': 2, 'train_loss': 0.4}]


def test_groups_seeds_and_labels_by_config_json(groups, tmp_path):
  assert [g.label for g in groups] == [SWEEP_LABEL, 'fedavg']
  sweep = _group(groups, SWEEP_LABEL)
  assert sweep.path == str(tmp_path / 'runs' / '3fa2c0d1e9ab')
  assert [r.seed for r in sweep.runs] == [0, 1, 2]
  fedavg = _group(groups, 'fedavg')
  assert [(r.seed, r.path) for r in fedavg.runs] == [
      (None, str(tmp_path / 'fedavg'))]


def test_resumed_and_truncated_runs_read_as_one_record_a_round(groups):
  sweep = _group(groups, SWEEP_LABEL)
  seed_0, _, seed_2 = sweep.runs
  assert [r['round'] for r in seed_0.records] == [1, 2, 3, 4, 5, 6]
  assert seed_0.records[3] == _record(0, 4)  # Not the stale round 4.
  assert [r['round'] for r in seed_2.records] == [1, 2, 3, 4, 5, 6]


def test_single_run_is_labelled_by_the_workdir(tmp_path):
  workdir = tmp_path / 'my_run'
  _write_run(str(workdir), [_record(0, 1), _record(0, 2)])
  (group,) = reporting.load_groups(str(workdir))
  assert group.label == 'my_run'
  assert [(r.seed, len(r.records)) for r in group.runs] == [(None, 2)]


def test_sibling_seed_dirs_are_one_group_and_other_dirs_are_not(tmp_path):
  workdir = str(tmp_path / 'cmp')
  for name in ('seed_0', 'seed_1', 'fedadam/seed_3', 'fedadam/seed_x',
               'fedadam/seed_3/checkpoints/7'):
    _write_run(os.path.join(workdir, name), [_record(0, 1)])
  groups = reporting.load_groups(workdir)
  assert [(g.label, [r.seed for r in g.runs]) for g in groups] == [
      ('cmp', [0, 1]), ('fedadam', [3]), ('fedadam/seed_x', [None])]


def test_same_label_twice_gets_the_paths_appended(tmp_path):
  for key in ('a1', 'b2'):
    run = tmp_path / 'runs' / key
    _write_run(str(run / 'seed_0'), [_record(0, 2)])
    (run / 'config.json').write_text(json.dumps({'label': 'lr=0.1'}))
  groups = reporting.load_groups(str(tmp_path))
  assert [g.label for g in groups] == ['lr=0.1 [runs/a1]', 'lr=0.1 [runs/b2]']


def test_missing_and_empty_workdirs_are_errors(tmp_path):
  with pytest.raises(ValueError, match='does not exist'):
    reporting.load_groups(str(tmp_path / 'nope'))
  with pytest.raises(ValueError, match=r'No metrics.jsonl under .*Expected '
                     r'DIR/metrics.jsonl'):
    reporting.load_groups(str(tmp_path))


def test_no_evaluated_round_is_an_error_that_names_eval_every(tmp_path):
  _write_run(str(tmp_path / 'seed_0'), [{'round': 1, 'train_loss': 1.0,
                                         'wall_s': 1.0}])
  groups = reporting.load_groups(str(tmp_path))
  with pytest.raises(ValueError, match=r'Train with eval_every=N \(N > 0\)'):
    reporting.check_evaluated(groups, str(tmp_path))


# Statistics.


def test_curve_is_the_mean_and_sample_std_over_seeds_per_round(groups):
  curve = reporting.group_curve(_group(groups, SWEEP_LABEL), 'test_accuracy')
  by_seed = np.array([ACCURACY[s] for s in (0, 1, 2)])  # (seeds, rounds)
  np.testing.assert_array_equal(curve.rounds, EVAL_ROUNDS)
  np.testing.assert_allclose(curve.mean, [np.mean(by_seed[:, i])
                                          for i in range(3)])
  # Sample std of each round by hand: sqrt(sum (x - mean)^2 / (n - 1)).
  want_std = [np.sqrt(np.sum((by_seed[:, i] - by_seed[:, i].mean()) ** 2)
                      / 2) for i in range(3)]
  np.testing.assert_allclose(curve.std, want_std)
  # Cumulative seconds at rounds 2, 4, 6: k * wall_s, averaged over seeds.
  np.testing.assert_allclose(
      curve.seconds, [k * np.mean(list(WALL_S.values())) for k in (2, 4, 6)])
  assert curve.num_seeds == 3


def test_test_loss_curve(groups):
  curve = reporting.group_curve(_group(groups, SWEEP_LABEL), 'test_loss')
  np.testing.assert_allclose(
      curve.mean, np.mean([TEST_LOSS[s] for s in (0, 1, 2)], axis=0))


def test_curve_keeps_the_rounds_all_seeds_have(tmp_path):
  _write_run(str(tmp_path / 'seed_0'), [_record(0, k) for k in range(1, 7)])
  _write_run(str(tmp_path / 'seed_1'), [_record(1, k) for k in range(1, 5)])
  (group,) = reporting.load_groups(str(tmp_path))
  curve = reporting.group_curve(group, 'test_accuracy')
  np.testing.assert_array_equal(curve.rounds, [2, 4])
  np.testing.assert_allclose(curve.mean, [(0.5 + 0.82) / 2, (0.8 + 0.88) / 2])
  assert any('different rounds (4 to 6)' in n
             for n in reporting.notes([group]))


def test_one_seed_has_no_band(groups):
  curve = reporting.group_curve(_group(groups, 'fedavg'), 'test_accuracy')
  assert (curve.rounds.tolist(), curve.mean.tolist(), curve.std.tolist(),
          curve.num_seeds) == ([2], [0.7], [0.0], 1)


def test_rounds_to_target_is_the_first_round_at_or_above_it(groups):
  runs = _group(groups, SWEEP_LABEL).runs
  assert [reporting.rounds_to_target(r, 0.8) for r in runs] == [4, 2, None]
  assert [reporting.rounds_to_target(r, 0.5) for r in runs] == [2, 2, 4]


def test_table_row_of_three_seeds(groups):
  row = _group_row(groups, SWEEP_LABEL, target=0.8)
  final = [0.9, 0.85, 0.75]
  best = [0.9, 0.88, 0.75]
  reached = [4, 2]
  losses = [1 / 6, 2 / 6, 3 / 6]
  want = {
      'label': SWEEP_LABEL, 'seeds': 3, 'evaluated_seeds': 3,
      'final_accuracy_mean': np.mean(final),
      'final_accuracy_std': np.std(final, ddof=1),
      'best_accuracy_mean': np.mean(best),
      'best_accuracy_std': np.std(best, ddof=1),
      'rounds_to_target_mean': 3.0, 'rounds_to_target_std': np.sqrt(2),
      'target_reached': len(reached),
      'final_train_loss_mean': np.mean(losses),
      'final_train_loss_std': np.std(losses, ddof=1),
      'wall_s_mean': 6 * np.mean([1.0, 2.0, 0.5])}
  assert row == pytest.approx(want)


def test_table_row_of_one_seed_has_no_std(groups):
  row = _group_row(groups, 'fedavg', target=0.8)
  assert row == pytest.approx({
      'label': 'fedavg', 'seeds': 1, 'evaluated_seeds': 1,
      'final_accuracy_mean': 0.7, 'final_accuracy_std': None,
      'best_accuracy_mean': 0.7, 'best_accuracy_std': None,
      'rounds_to_target_mean': None, 'rounds_to_target_std': None,
      'target_reached': 0, 'final_train_loss_mean': 1.5,
      'final_train_loss_std': None, 'wall_s_mean': 7.0})


def _group_row(groups, label, target):
  (row,) = [r for r in reporting.table_rows(groups, target)
            if r['label'] == label]
  return row


def test_seed_without_evaluation_is_left_out_and_noted(tmp_path):
  _write_run(str(tmp_path / 'g' / 'seed_0'), [_record(0, k) for k in (1, 2)])
  _write_run(str(tmp_path / 'g' / 'seed_1'), [_record(1, k) for k in (1, 2)])
  _write_run(str(tmp_path / 'g' / 'seed_2'), [_record(2, 1)])
  groups = reporting.load_groups(str(tmp_path))
  (group,) = groups
  curve = reporting.group_curve(group, 'test_accuracy')
  assert curve.num_seeds == 2
  np.testing.assert_allclose(curve.mean, [(0.5 + 0.82) / 2])
  assert reporting.curve_label(group, curve) == 'g (2 of 3 seeds)'
  (row,) = reporting.table_rows(groups, 0.8)
  assert (row['seeds'], row['evaluated_seeds'], row['target_reached']) == (
      3, 2, 1)
  assert row['final_accuracy_mean'] == pytest.approx((0.5 + 0.82) / 2)
  assert any('1 of 3 seeds have no evaluated round yet (seed_2)' in n
             for n in reporting.notes(groups))


# Writers.


def test_markdown_table(groups):
  rows = reporting.table_rows(groups, 0.8)
  text = reporting.format_markdown(rows, 0.8, ['a caveat'])
  lines = text.splitlines()
  assert 'sample standard deviation (ddof=1)' in lines[0]
  assert lines[2].startswith('| label | seeds | final test accuracy |')
  final, best = [0.9, 0.85, 0.75], [0.9, 0.88, 0.75]
  losses = [1 / 6, 2 / 6, 3 / 6]
  assert lines[5] == '| fedavg | 1 | 0.7000 | 0.7000 | - (0/1 reached) | ' \
      '1.5000 | 7.0 |'
  assert lines[4] == (
      f'| {SWEEP_LABEL} | 3 | '
      f'{np.mean(final):.4f} +- {np.std(final, ddof=1):.4f} | '
      f'{np.mean(best):.4f} +- {np.std(best, ddof=1):.4f} | '
      '3.0 +- 1.4 (2/3 reached) | '
      f'{np.mean(losses):.4f} +- {np.std(losses, ddof=1):.4f} | 7.0 |')
  assert lines[-1] == 'Note: a caveat'


def test_csv_reads_back_as_the_rows(groups, tmp_path):
  rows = reporting.table_rows(groups, 0.8)
  path = str(tmp_path / 'results.csv')
  reporting.write_csv(rows, path)
  with open(path, newline='') as f:
    read = list(csv.DictReader(f))
  assert [r['label'] for r in read] == [SWEEP_LABEL, 'fedavg']
  for got, want in zip(read, rows):
    assert list(got) == list(reporting.CSV_COLUMNS)
    for column in reporting.CSV_COLUMNS[1:]:
      value = float(got[column]) if got[column] else None
      assert value == pytest.approx(want[column]), column
  assert read[0]['rounds_to_target_mean'] == '3.0'
  assert read[1]['final_accuracy_std'] == ''


def test_plots_are_png_files_matplotlib_reads(groups, tmp_path):
  paths = reporting.write_plots(groups, str(tmp_path))
  assert [os.path.basename(p) for p in paths] == [
      'accuracy_vs_round.png', 'loss_vs_round.png', 'accuracy_vs_time.png',
      'loss_vs_time.png']
  for path in paths:
    with open(path, 'rb') as f:
      assert f.read(8) == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= 300 and image.shape[1] >= 500
    assert image[..., :3].std() > 0.05  # Not a blank canvas.


def test_safe_name():
  assert reporting.safe_name(SWEEP_LABEL) == SWEEP_LABEL
  assert reporting.safe_name('runs/a b|c') == 'runs_a_b_c'
  assert reporting.safe_name('..') == '_'


def _read_scalars(run_dir):
  """{(tag, step): value} of the event files in `run_dir`, read with
  tensorboardX's protos (tensorboard's EventAccumulator is not installed),
  checking each record's framing and CRCs."""
  from tensorboardX.proto import event_pb2
  from tensorboardX.record_writer import masked_crc32c
  scalars = {}
  for path in glob.glob(os.path.join(run_dir, 'events.out.tfevents.*')):
    with open(path, 'rb') as f:
      data = f.read()
    offset = 0
    while offset < len(data):
      header = data[offset:offset + 8]
      (length,) = struct.unpack('<Q', header)
      assert struct.unpack('<I', data[offset + 8:offset + 12])[0] == \
          masked_crc32c(header)
      body = data[offset + 12:offset + 12 + length]
      assert struct.unpack(
          '<I', data[offset + 12 + length:offset + 16 + length])[0] == \
          masked_crc32c(body)
      offset += 16 + length
      event = event_pb2.Event.FromString(body)
      for value in event.summary.value:
        scalars[value.tag, event.step] = value.simple_value
  return scalars


def test_tensorboard_export_reads_back(groups, tmp_path):
  pytest.importorskip('tensorboardX')
  out = str(tmp_path / 'out')
  run_dirs = reporting.write_tensorboard(groups, out)
  base = os.path.join(out, 'tensorboard')
  assert run_dirs == [os.path.join(base, SWEEP_LABEL, f'seed_{s}')
                      for s in (0, 1, 2)] + [os.path.join(base, 'fedavg')]
  for group in groups:
    for run in group.runs:
      want = {(k, r['round']): float(v) for r in run.records
              for k, v in r.items() if k != 'round'}
      run_dir = reporting.tensorboard_dir(out, group, run)
      assert _read_scalars(run_dir) == pytest.approx(want, rel=1e-6)
  # A second export replaces the first instead of adding to it.
  reporting.write_tensorboard(groups, out)
  assert len(glob.glob(os.path.join(run_dirs[0], 'events.*'))) == 1
