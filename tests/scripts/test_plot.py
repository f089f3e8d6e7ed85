"""scripts/plot.py as a user runs it: every output from a comparison of
seeds, and the errors on a missing, empty or unevaluated --workdir.

Each test runs the script in its own process, as a user does: imported here,
its absl flags would clash with those of the other scripts' tests.
"""

import csv
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))

OUTPUTS = ['accuracy_vs_round.png', 'loss_vs_round.png',
           'accuracy_vs_time.png', 'loss_vs_time.png', 'results.md',
           'results.csv']


def _write_run(run_dir, accuracies, eval_every=2):
  """A run with one record a round and `accuracies` on every
  `eval_every`-th round."""
  os.makedirs(run_dir)
  with open(os.path.join(run_dir, 'metrics.jsonl'), 'w') as f:
    for k in range(1, eval_every * max(len(accuracies), 1) + 1):
      record = {'round': k, 'train_loss': 1.0 / k, 'wall_s': 0.25}
      if accuracies and k % eval_every == 0:
        record.update(test_accuracy=accuracies[k // eval_every - 1],
                      test_loss=1 - accuracies[k // eval_every - 1])
      f.write(json.dumps(record) + '\n')


def _main(*args):
  """Runs `python -m scripts.plot` with the given flags; returns its
  stdout, or raises SystemExit with its stderr if it fails."""
  result = subprocess.run(
      [sys.executable, '-m', 'scripts.plot', *args], cwd=REPO,
      env={**os.environ, 'PYTHONPATH': REPO}, capture_output=True,
      text=True, timeout=300)
  if result.returncode:
    raise SystemExit(result.stderr.strip().splitlines()[-1])
  return result.stdout


@pytest.mark.slow
def test_comparison_of_seeds_writes_every_output(tmp_path):
  workdir = tmp_path / 'cmp'
  for seed, accuracies in enumerate([[0.5, 0.7], [0.6, 0.9], [0.4, 0.8]]):
    _write_run(str(workdir / 'fedprox' / f'seed_{seed}'), accuracies)
  _write_run(str(workdir / 'fedavg' / 'seed_0'), [0.3, 0.6])
  _write_run(str(workdir / 'fedavg' / 'seed_1'), [])  # Not evaluated yet.
  out = tmp_path / 'plots'
  stdout = _main(f'--workdir={workdir}', f'--out={out}', '--tensorboard',
                 '--target_accuracy=0.75')
  for name in OUTPUTS:
    assert f'Wrote {out / name}' in stdout
    assert (out / name).stat().st_size > 0
  assert 'Note: fedavg: 1 of 2 seeds have no evaluated round yet' \
      in stdout
  assert '| fedprox | 3 | 0.8000 +- 0.1000 | 0.8000 +- 0.1000 | ' \
      '4.0 +- 0.0 (2/3 reached) |' in stdout
  with open(out / 'results.csv', newline='') as f:
    rows = {row['label']: row for row in csv.DictReader(f)}
  assert rows['fedavg']['evaluated_seeds'] == '1'
  assert float(rows['fedprox']['final_accuracy_mean']) == pytest.approx(0.8)
  assert float(rows['fedprox']['wall_s_mean']) == pytest.approx(1.0)
  for run in ('fedavg/seed_0', 'fedavg/seed_1', 'fedprox/seed_2'):
    (events,) = os.listdir(out / 'tensorboard' / run)
    assert events.startswith('events.out.tfevents.')
    assert f'Wrote TensorBoard events to {out / "tensorboard" / run}' \
        in stdout
  assert not os.path.exists(workdir / 'results.md')


@pytest.mark.slow
def test_out_defaults_to_the_workdir(tmp_path):
  _write_run(str(tmp_path / 'run'), [0.5])
  _main(f'--workdir={tmp_path / "run"}')
  assert sorted(os.listdir(tmp_path / 'run')) == sorted(
      OUTPUTS + ['metrics.jsonl'])


@pytest.mark.slow
@pytest.mark.parametrize('layout, message', [
    (None, 'does not exist'),
    ('empty', 'No metrics.jsonl under .* Expected DIR/metrics.jsonl'),
    ('unevaluated', 'has an evaluated round yet .*eval_every=N'),
])
def test_errors_name_the_problem(tmp_path, layout, message):
  workdir = tmp_path / 'runs'
  if layout == 'empty':
    os.makedirs(workdir / 'fedavg' / 'checkpoints')
  elif layout == 'unevaluated':
    _write_run(str(workdir / 'seed_0'), [])
  with pytest.raises(SystemExit, match=f'^error: .*{message}'):
    _main(f'--workdir={workdir}')


@pytest.mark.slow
def test_target_accuracy_in_percent_is_a_usage_error(tmp_path):
  _write_run(str(tmp_path / 'run'), [0.5])
  with pytest.raises(SystemExit, match='e.g. 0.8 for 80%'):
    _main(f'--workdir={tmp_path / "run"}', '--target_accuracy=80')
