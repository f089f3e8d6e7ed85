r"""Runs a grid of training configurations, resuming where it stopped.

The grid file (.json, or .py defining GRID) holds "base", the flags every
run shares, and "grid", a dict from flag name to a list of values (or a
list of such dicts, the union of their products); see
`fedjax_core.experiments.grid`. The seeds of one configuration run as one
`scripts.train` program (--num_seeds), each maximal run of consecutive
unfinished seeds one process. Seed S of a configuration writes `WORKDIR/runs/HASH/seed_S/`; a
seed with a summary.json there is skipped, so re-running the same command
finishes what failed or was interrupted. `WORKDIR/runs/HASH/config.json`
holds the flags and a short label, `WORKDIR/sweep.json` the whole grid, and
each process's output goes to `WORKDIR/runs/HASH/train.log`.

With --num_tasks=N, configuration i runs on task i % N, so N hosts sharing
WORKDIR split the grid without talking to each other.

Examples:
  python -m scripts.sweep --grid=grid.json --workdir=/tmp/sweep --dry_run
  python -m scripts.sweep --grid=grid.py --workdir=/tmp/sweep \
      --task_index=1 --num_tasks=4
"""

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Sequence

from absl import app
from absl import flags

from fedjax_core import errors
from fedjax_core.experiments import grid
from scripts import flags as script_flags

_GRID = flags.DEFINE_string(
    'grid', None, 'Grid file: .json, or .py defining GRID = {"base": {...}, '
    '"grid": {...}}.')
_TASK_INDEX = flags.DEFINE_integer(
    'task_index', 0, 'This task, in [0, --num_tasks).')
_NUM_TASKS = flags.DEFINE_integer(
    'num_tasks', 1, 'Tasks sharing the grid: configuration i runs on task '
    'i % num_tasks.')
_DRY_RUN = flags.DEFINE_bool(
    'dry_run', False, 'Print the train commands without running them or '
    'writing anything.')
flags.declare_key_flag('workdir')  # Shared with scripts.train.

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_COMMAND = (sys.executable, '-m', 'scripts.train')
_TAIL_LINES = 5
_STOP_GRACE_S = 30


@dataclasses.dataclass
class SweepResult:
  """What one task of a sweep did, counted in seeds and processes.

  Attributes:
    ran: Seeds whose process exited 0.
    skipped: Seeds already done before the sweep started.
    failed: Seeds whose process failed.
    failed_logs: The train.log of each failed process.
  """
  ran: int = 0
  skipped: int = 0
  failed: int = 0
  failed_logs: list[str] = dataclasses.field(default_factory=list)


def run_sweep(units: Sequence[grid.Unit], workdir: str, *,
              task_index: int = 0, num_tasks: int = 1,
              dry_run: bool = False,
              command_prefix: Sequence[str] = TRAIN_COMMAND,
              cwd: str = REPO_ROOT) -> SweepResult:
  """Launches the unfinished seeds of this task's units, one process each.

  Args:
    units: Every unit of the grid (`grid.expand_grid`), unfiltered.
    workdir: The sweep directory.
    task_index: This task.
    num_tasks: Tasks sharing the grid.
    dry_run: Print the commands only; run and write nothing.
    command_prefix: The train command; the train flags follow it.
    cwd: Where the processes run (the repository root).

  Returns:
    The counts of seeds run, skipped and failed.

  Raises:
    ValueError: Bad task_index or num_tasks.
  """
  workdir = os.path.abspath(workdir)
  mine = grid.task_units(units, task_index, num_tasks)
  result = SweepResult()
  launches = []
  for unit in mine:
    done = grid.completed_seeds(workdir, unit)
    result.skipped += len(done)
    launches += grid.plan_launches(workdir, unit, done)
  print(f'{len(units)} configurations, task {task_index} of {num_tasks} '
        f'has {len(mine)}: {result.skipped} seeds done, '
        f'{len(launches)} train processes to run.', flush=True)
  if not dry_run:
    _write_records(units, mine, workdir)
  for k, launch in enumerate(launches, start=1):
    command = [*command_prefix, *grid.train_args(launch),
               '--progress=false']
    print(f'[{k}/{len(launches)}] {launch.unit.label} '
          f'{_seed_range(launch.seeds)} -> {launch.workdir}', flush=True)
    if dry_run:
      print(f'  {shlex.join(command)}', flush=True)
    else:
      _run_and_report(launch, command, workdir, cwd, result)
  return result


def _seed_range(seeds: Sequence[int]) -> str:
  """'seeds 0..3', or 'seed 5' for one."""
  if len(seeds) == 1:
    return f'seed {seeds[0]}'
  return f'seeds {seeds[0]}..{seeds[-1]}'


def _write_records(units: Sequence[grid.Unit], mine: Sequence[grid.Unit],
                   workdir: str) -> None:
  """Writes sweep.json and the config.json of this task's units."""
  _write_json(os.path.join(workdir, 'sweep.json'), grid.sweep_record(units))
  for unit in mine:
    _write_json(os.path.join(grid.run_dir(workdir, unit), 'config.json'),
                grid.unit_record(unit))


def _write_json(path: str, record: dict) -> None:
  """Writes `record` to `path` atomically (tasks may write it at once)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temporary = f'{path}.{os.getpid()}.tmp'
  with open(temporary, 'w') as f:
    json.dump(record, f, indent=2)
    f.write('\n')
  os.replace(temporary, path)


def _run_and_report(launch: grid.Launch, command: Sequence[str],
                    workdir: str, cwd: str, result: SweepResult) -> None:
  """Runs one train process and prints ok or FAILED with its log's tail."""
  log_path = os.path.join(grid.run_dir(workdir, launch.unit), 'train.log')
  start = time.monotonic()
  returncode = _launch(command, log_path, cwd)
  seconds = time.monotonic() - start
  if returncode == 0:
    result.ran += len(launch.seeds)
    print(f'  ok ({seconds:.1f} s)', flush=True)
    return
  result.failed += len(launch.seeds)
  result.failed_logs.append(log_path)
  print(f'  FAILED (exit {returncode}, {seconds:.1f} s); log: {log_path}',
        flush=True)
  for line in _tail(log_path, _TAIL_LINES):
    print(f'    {line}', flush=True)


def _launch(command: Sequence[str], log_path: str, cwd: str) -> int:
  """Runs `command` in `cwd`, its output appended to `log_path`; returns
  its exit code."""
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  with open(log_path, 'a') as log:
    log.write(f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} '
              f'{shlex.join(command)}\n')
    log.flush()
    process = subprocess.Popen(command, cwd=cwd, stdout=log,
                               stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
    try:
      return process.wait()
    except KeyboardInterrupt:
      _stop(process)
      raise


def _stop(process: subprocess.Popen) -> None:
  """Gives an interrupted train process time to save its progress (it got
  the Ctrl-C too), then kills it."""
  try:
    process.wait(timeout=_STOP_GRACE_S)
  except (subprocess.TimeoutExpired, KeyboardInterrupt):
    process.kill()
    process.wait()


def _tail(path: str, num_lines: int) -> list[str]:
  """The last `num_lines` non-empty lines of a text file."""
  with open(path, errors='replace') as f:
    lines = [line.rstrip() for line in f if line.strip()]
  return lines[-num_lines:]


def format_summary(result: SweepResult) -> str:
  """One line: seeds run, skipped and failed."""
  return (f'sweep: {result.ran} seeds ran, {result.skipped} skipped (done '
          f'before), {result.failed} failed.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  script_flags.reject_unused('scripts.sweep', script_flags.WORKDIR)
  try:
    units = grid.expand_grid(grid.load_grid(_GRID.value))
    result = run_sweep(units, script_flags.WORKDIR.value,
                       task_index=_TASK_INDEX.value,
                       num_tasks=_NUM_TASKS.value, dry_run=_DRY_RUN.value)
  except errors.SettingError as e:
    sys.exit(f'error: {script_flags.describe(e)}')
  except (OSError, ValueError) as e:
    sys.exit(f'error: {e}')
  except KeyboardInterrupt:
    sys.exit(130)  # Finished seeds are kept; re-run to go on.
  if not _DRY_RUN.value:
    print(format_summary(result))
  if result.failed:
    sys.exit(f'error: {result.failed} seeds failed; logs: '
             + ', '.join(result.failed_logs))


if __name__ == '__main__':
  flags.mark_flags_as_required(['grid', 'workdir'])
  app.run(main)
