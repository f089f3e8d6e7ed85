"""scripts/sweep.py against a fake train command: the exact launches, skipping
finished seeds on re-run, sharding, failures and --dry_run; and one real
sweep, through scripts/train.py's vmapped seeds and into scripts/plot.py."""

import functools
import json
import os
import subprocess
import sys

from absl import flags
from absl.testing import flagsaver
import pytest

from fedjax_core.experiments import grid
from scripts import sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

# Writes summary.json in train's layout: WORKDIR/seed_S/ for --num_seeds > 1,
# WORKDIR/ itself for one seed. Logs its argv and cwd; fails for fedbroken.
FAKE_TRAIN = '''
import json, os, sys
args = dict(a[2:].split('=', 1) for a in sys.argv[1:])
with open(os.environ['FAKE_TRAIN_LOG'], 'a') as f:
  f.write(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd()}) + '\\n')
print('fake train starting')
if args.get('algorithm') == 'fedbroken':
  print('error: fedbroken diverged')
  sys.exit(1)
seed, num_seeds = int(args['seed']), int(args.get('num_seeds', '1'))
dirs = [args['workdir']] if num_seeds == 1 else [
    os.path.join(args['workdir'], f'seed_{seed + k}') for k in range(num_seeds)]
for d in dirs:
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, 'summary.json'), 'w') as f:
    json.dump({'final_test_accuracy': 0.5}, f)
'''

SPEC = {'base': {'model': 'logreg', 'num_rounds': 2},
        'grid': {'algorithm': ['fedavg', 'fedprox'], 'seed': [0, 1, 2]}}


@pytest.fixture(name='fake')
def fixture_fake(tmp_path, monkeypatch):
  """The fake train command; its launches are read back by `launched`."""
  path = tmp_path / 'fake_train.py'
  path.write_text(FAKE_TRAIN)
  monkeypatch.setenv('FAKE_TRAIN_LOG', str(tmp_path / 'launches.jsonl'))
  return [sys.executable, str(path)]


def launched(tmp_path, since=0, cwd=REPO):
  """The argv of each fake launch, after the first `since`; each ran in
  `cwd`."""
  path = tmp_path / 'launches.jsonl'
  if not path.exists():
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f]
  assert all(r['cwd'] == cwd for r in records)
  return [r['argv'] for r in records[since:]]


def summary(workdir, unit, seed):
  return os.path.join(grid.seed_dir(str(workdir), unit, seed), 'summary.json')


def argv(unit_flags, workdir, seed, num_seeds=None):
  extra = [] if num_seeds is None else [f'--num_seeds={num_seeds}']
  return [*grid.flag_args(unit_flags), f'--workdir={workdir}',
          f'--seed={seed}', *extra, '--progress=false']


@pytest.mark.slow
def test_first_run_launches_each_configuration_with_all_its_seeds(
    tmp_path, fake, monkeypatch, capsys):
  monkeypatch.chdir(tmp_path)  # A relative --workdir becomes absolute,
  elsewhere = tmp_path / 'elsewhere'  # as train runs in another directory.
  elsewhere.mkdir()
  workdir = tmp_path / 'sweep'
  units = grid.expand_grid(SPEC)
  result = sweep.run_sweep(units, 'sweep', command_prefix=fake,
                           cwd=str(elsewhere))
  runs = [grid.run_dir(str(workdir), u) for u in units]
  assert launched(tmp_path, cwd=str(elsewhere)) == [
      ['--model=logreg', '--num_rounds=2', '--algorithm=fedavg',
       f'--workdir={runs[0]}', '--seed=0', '--num_seeds=3',
       '--progress=false'],
      ['--model=logreg', '--num_rounds=2', '--algorithm=fedprox',
       f'--workdir={runs[1]}', '--seed=0', '--num_seeds=3',
       '--progress=false']]
  assert (result.ran, result.skipped, result.failed) == (6, 0, 0)
  assert all(os.path.exists(summary(workdir, u, s))
             for u in units for s in (0, 1, 2))
  with open(os.path.join(runs[1], 'config.json')) as f:
    assert json.load(f) == {'flags': {'model': 'logreg', 'num_rounds': 2,
                                      'algorithm': 'fedprox'},
                            'label': 'algorithm=fedprox'}
  with open(workdir / 'sweep.json') as f:
    assert [(u['hash'], u['label'], u['seeds']) for u in json.load(f)[
        'units']] == [(u.key, u.label, [0, 1, 2]) for u in units]
  with open(os.path.join(runs[0], 'train.log')) as f:
    assert 'fake train starting' in f.read()
  out = capsys.readouterr().out
  assert f'[1/2] algorithm=fedavg seeds 0..2 -> {runs[0]}' in out
  assert out.count('  ok (') == 2


@pytest.mark.slow
def test_rerun_launches_only_the_unfinished_seeds(tmp_path, fake):
  workdir = tmp_path / 'sweep'
  units = grid.expand_grid(SPEC)
  fedavg, fedprox = units
  sweep.run_sweep(units, str(workdir), command_prefix=fake)
  count = len(launched(tmp_path))

  result = sweep.run_sweep(units, str(workdir), command_prefix=fake)
  assert launched(tmp_path, count) == []
  assert (result.ran, result.skipped, result.failed) == (0, 6, 0)

  os.remove(summary(workdir, fedprox, 1))
  result = sweep.run_sweep(units, str(workdir), command_prefix=fake)
  seed_1 = grid.seed_dir(str(workdir), fedprox, 1)
  assert launched(tmp_path, count) == [argv(fedprox.flags, seed_1, 1)]
  assert (result.ran, result.skipped, result.failed) == (1, 5, 0)
  assert os.path.exists(summary(workdir, fedprox, 1))
  count += 1

  os.remove(summary(workdir, fedavg, 1))
  os.remove(summary(workdir, fedavg, 2))
  sweep.run_sweep(units, str(workdir), command_prefix=fake)
  run = grid.run_dir(str(workdir), fedavg)
  assert launched(tmp_path, count) == [argv(fedavg.flags, run, 1, 2)]
  count += 1

  os.remove(summary(workdir, fedavg, 0))
  os.remove(summary(workdir, fedavg, 2))
  sweep.run_sweep(units, str(workdir), command_prefix=fake)
  assert launched(tmp_path, count) == [
      argv(fedavg.flags, grid.seed_dir(str(workdir), fedavg, 0), 0),
      argv(fedavg.flags, grid.seed_dir(str(workdir), fedavg, 2), 2)]
  assert all(os.path.exists(summary(workdir, u, s))
             for u in units for s in (0, 1, 2))


@pytest.mark.slow
def test_non_consecutive_seeds_run_as_separate_processes(tmp_path, fake):
  (unit,) = grid.expand_grid({'base': {'model': 'mlp'},
                              'grid': {'seed': [5, 0, 1]}})
  result = sweep.run_sweep([unit], str(tmp_path / 's'), command_prefix=fake)
  run = grid.run_dir(str(tmp_path / 's'), unit)
  assert launched(tmp_path) == [
      argv(unit.flags, run, 0, 2),
      argv(unit.flags, os.path.join(run, 'seed_5'), 5)]
  assert result.ran == 3


@pytest.mark.slow
def test_tasks_split_the_full_grid_whatever_is_done(tmp_path, fake):
  workdir = str(tmp_path / 'sweep')
  units = grid.expand_grid({'grid': {'algorithm': ['a', 'b', 'c', 'd', 'e'],
                                     'seed': [0, 1]}})
  for seed in (0, 1):  # The first unit finished on an earlier run.
    os.makedirs(os.path.dirname(summary(workdir, units[0], seed)))
    open(summary(workdir, units[0], seed), 'w').close()
  for task in (0, 1):
    sweep.run_sweep(units, workdir, task_index=task, num_tasks=2,
                    command_prefix=fake)
  launches = launched(tmp_path)
  assert [a[0] for a in launches] == ['--algorithm=c', '--algorithm=e',
                                      '--algorithm=b', '--algorithm=d']
  assert all(os.path.exists(summary(workdir, u, s))
             for u in units for s in (0, 1))


def _run_main(monkeypatch, fake, *args):
  """sweep.main as `python -m scripts.sweep ARGS` runs it, with `fake` as
  the train command."""
  monkeypatch.setattr(sweep, 'run_sweep', functools.partial(
      sweep.run_sweep, command_prefix=fake))
  with flagsaver.flagsaver():
    flags.FLAGS(['sweep', *args])
    sweep.main(['sweep'])


@pytest.mark.slow
def test_a_failed_run_is_reported_and_the_others_still_run(
    tmp_path, fake, monkeypatch, capsys):
  spec = {'grid': {'algorithm': ['fedavg', 'fedbroken', 'fedprox'],
                   'seed': [0, 1]}}
  grid_path = tmp_path / 'grid.json'
  grid_path.write_text(json.dumps(spec))
  workdir = tmp_path / 'sweep'
  with pytest.raises(SystemExit) as exit_info:
    _run_main(monkeypatch, fake, f'--grid={grid_path}',
              f'--workdir={workdir}')
  fedavg, broken, fedprox = grid.expand_grid(spec)
  log = os.path.join(grid.run_dir(str(workdir), broken), 'train.log')
  assert str(exit_info.value.code) == (
      f'error: 2 seeds failed; logs: {log}')
  assert [a[0] for a in launched(tmp_path)] == [
      '--algorithm=fedavg', '--algorithm=fedbroken', '--algorithm=fedprox']
  assert all(os.path.exists(summary(workdir, u, s))
             for u in (fedavg, fedprox) for s in (0, 1))
  out = capsys.readouterr().out
  assert 'FAILED (exit 1' in out and f'log: {log}' in out
  assert '    error: fedbroken diverged' in out
  assert 'sweep: 4 seeds ran, 0 skipped (done before), 2 failed.' in out


@pytest.mark.slow
def test_main_succeeds_with_a_python_grid(tmp_path, fake, monkeypatch,
                                          capsys):
  grid_path = tmp_path / 'grid.py'
  grid_path.write_text(f'GRID = {SPEC!r}\n')
  _run_main(monkeypatch, fake, f'--grid={grid_path}',
            f'--workdir={tmp_path / "sweep"}', '--task_index=1',
            '--num_tasks=2')
  assert [a[2] for a in launched(tmp_path)] == ['--algorithm=fedprox']
  assert 'sweep: 3 seeds ran, 0 skipped (done before), 0 failed.' in \
      capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize('spec, message', [
    ({'base': {'workdir': '/x'}}, 'error: base sets "workdir", which the '
     'sweep owns'),
    ({'grid': {'lr': 0.1}}, 'error: grid["lr"] is 0.1, not a list'),
])
def test_main_reports_bad_grids(tmp_path, fake, monkeypatch, spec, message):
  grid_path = tmp_path / 'grid.json'
  grid_path.write_text(json.dumps(spec))
  with pytest.raises(SystemExit) as exit_info:
    _run_main(monkeypatch, fake, f'--grid={grid_path}',
              f'--workdir={tmp_path / "sweep"}')
  assert str(exit_info.value.code).startswith(message)
  assert launched(tmp_path) == []


@pytest.mark.slow
def test_main_reports_a_bad_task_index(tmp_path, fake, monkeypatch):
  grid_path = tmp_path / 'grid.json'
  grid_path.write_text(json.dumps(SPEC))
  with pytest.raises(SystemExit) as exit_info:
    _run_main(monkeypatch, fake, f'--grid={grid_path}',
              f'--workdir={tmp_path / "sweep"}', '--task_index=2',
              '--num_tasks=2')
  message = str(exit_info.value.code)
  assert message.startswith('error: --task_index') and 'in [0, 2)' in message


@pytest.mark.slow
def test_dry_run_prints_the_commands_and_launches_nothing(tmp_path, fake,
                                                          capsys):
  workdir = tmp_path / 'sweep'
  units = grid.expand_grid(SPEC)
  result = sweep.run_sweep(units, str(workdir), dry_run=True,
                           command_prefix=fake)
  assert launched(tmp_path) == []
  assert not workdir.exists()
  assert (result.ran, result.skipped, result.failed) == (0, 0, 0)
  out = capsys.readouterr().out
  run = grid.run_dir(str(workdir), units[1])
  assert (f'{sys.executable} {fake[1]} --model=logreg --num_rounds=2 '
          f'--algorithm=fedprox --workdir={run} --seed=0 --num_seeds=3 '
          f'--progress=false') in out


@pytest.mark.slow
def test_sweep_of_seeds_then_plot_end_to_end(tmp_path):
  """A real sweep: one train process runs both seeds of each configuration
  in one program, a re-run skips them, and plot.py tables the seeds."""
  spec = {'base': {'dataset': 'digits', 'model': 'logreg', 'num_clients': 6,
                   'clients_per_round': 3, 'num_rounds': 2,
                   'eval_every': 1},
          'grid': {'algorithm': ['fedavg', 'fedprox'], 'seed': [0, 1]}}
  grid_path = tmp_path / 'grid.json'
  grid_path.write_text(json.dumps(spec))
  workdir = tmp_path / 'sweep'
  env = {**os.environ, 'PYTHONPATH': REPO}

  def script(name, *args):
    result = subprocess.run([sys.executable, '-m', f'scripts.{name}', *args],
                            cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout

  first = script('sweep', f'--grid={grid_path}', f'--workdir={workdir}')
  assert 'sweep: 4 seeds ran, 0 skipped' in first
  for unit in grid.expand_grid(spec):
    log = (workdir / 'runs' / unit.key / 'train.log').read_text()
    assert '2 runs (seed_0, seed_1) in one program' in log
  again = script('sweep', f'--grid={grid_path}', f'--workdir={workdir}')
  assert 'sweep: 0 seeds ran, 4 skipped' in again
  table = script('plot', f'--workdir={workdir}')
  for label in ('algorithm=fedavg', 'algorithm=fedprox'):
    assert f'| {label} | 2 |' in table
  assert (workdir / 'accuracy_vs_round.png').read_bytes()[:8] \
      == b'\x89PNG\r\n\x1a\n'
