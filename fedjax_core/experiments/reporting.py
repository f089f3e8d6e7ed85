"""Plots and tables of federated runs, read from their metrics.jsonl files.

A run is a directory holding `metrics.jsonl`: one JSON object per round with
`round`, `train_loss` and `wall_s`, plus `test_accuracy` and `test_loss` on
evaluated rounds. Runs group by seed: a run in a directory named `seed_K`
belongs to its parent directory's group; any other run is a group of one.
A group is labelled by the `label` of a `config.json` in its directory (as a
sweep writes), else by its path relative to the directory searched.

Across the seeds of a group, `±` is the sample standard deviation
(`np.std(..., ddof=1)`); with a single seed it is undefined and left out.
"""

import csv
import dataclasses
import json
import math
import os
import re
from typing import Any

import numpy as np

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedjax_core.errors import SettingError

METRICS_FILE = 'metrics.jsonl'
CONFIG_FILE = 'config.json'
STD_DDOF = 1  # Sample standard deviation over seeds.
CSV_COLUMNS = (
    'label', 'seeds', 'evaluated_seeds', 'final_accuracy_mean',
    'final_accuracy_std', 'best_accuracy_mean', 'best_accuracy_std',
    'rounds_to_target_mean', 'rounds_to_target_std', 'target_reached',
    'final_train_loss_mean', 'final_train_loss_std', 'wall_s_mean')
PLOTS = (  # File, metric, x axis.
    ('accuracy_vs_round.png', 'test_accuracy', 'round'),
    ('loss_vs_round.png', 'test_loss', 'round'),
    ('accuracy_vs_time.png', 'test_accuracy', 'time'),
    ('loss_vs_time.png', 'test_loss', 'time'),
)
EXPECTED_LAYOUT = (
    'Expected DIR/metrics.jsonl (one run), DIR/NAME/metrics.jsonl (runs to '
    'compare), DIR/seed_K/metrics.jsonl or DIR/NAME/seed_K/metrics.jsonl '
    '(seeds of one configuration), or DIR/runs/ID/seed_K/metrics.jsonl with '
    'DIR/runs/ID/config.json (a sweep).')

_SEED_DIR = re.compile(r'seed_(-?\d+)')
_UNSAFE_CHARS = re.compile(r'[^A-Za-z0-9._=,+-]+')
_NON_FINITE = {'nan': math.nan, 'inf': math.inf, '-inf': -math.inf,
               'infinity': math.inf, '-infinity': -math.inf}


@dataclasses.dataclass(frozen=True)
class Run:
  """One run: its directory, its seed (None outside a `seed_K` directory)
  and its records, one per round, sorted by round."""
  path: str
  seed: int | None
  records: tuple[dict[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class Group:
  """The runs of one configuration, one per seed, sorted by seed."""
  label: str
  path: str
  runs: tuple[Run, ...]


@dataclasses.dataclass(frozen=True)
class Curve:
  """A group's metric at the evaluated rounds that all its evaluated seeds
  share: the mean and std over seeds (std 0 for one seed), and the mean
  cumulative wall seconds at each of those rounds."""
  rounds: np.ndarray
  seconds: np.ndarray
  mean: np.ndarray
  std: np.ndarray
  num_seeds: int


# Reading.


def as_number(value: Any) -> float | None:
  """`value` as a float if it is a number (or a non-finite number that
  metrics_writer stored as a string, e.g. 'inf'), else None."""
  if isinstance(value, bool):
    return None
  if isinstance(value, (int, float)):
    return float(value)
  if isinstance(value, str):
    return _NON_FINITE.get(value.strip().lower())
  return None


def numeric_metrics(record: dict[str, Any]) -> dict[str, float]:
  """The numeric entries of a record, other than `round`, as floats."""
  numbers = {k: as_number(v) for k, v in record.items() if k != 'round'}
  return {k: v for k, v in numbers.items() if v is not None}


def parse_records(lines) -> list[dict[str, Any]]:
  """The records of metrics.jsonl lines, one per round, sorted by round.

  Lines that do not parse as a JSON object with an integer `round` (the
  truncated last line of a killed run) are skipped. Of a round written more
  than once (a resumed run), the last record is kept.
  """
  by_round = {}
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:
      continue
    if (isinstance(record, dict) and isinstance(record.get('round'), int)
        and not isinstance(record['round'], bool)):
      by_round[record['round']] = record
  return [by_round[k] for k in sorted(by_round)]


def read_records(path: str) -> list[dict[str, Any]]:
  """The records of a metrics.jsonl file, as `parse_records` keeps them."""
  with open(path, encoding='utf-8', errors='replace') as f:
    return parse_records(f)


def find_metrics_files(workdir: str) -> list[str]:
  """Every metrics.jsonl under `workdir` (itself included), sorted; the
  `checkpoints` directories are not searched."""
  found = []
  for root, dirs, files in os.walk(workdir):
    dirs[:] = sorted(d for d in dirs if d != 'checkpoints')
    if METRICS_FILE in files:
      found.append(os.path.join(root, METRICS_FILE))
  return sorted(found)


def seed_of(run_dir: str) -> int | None:
  """K of a directory named `seed_K`, else None."""
  match = _SEED_DIR.fullmatch(os.path.basename(os.path.normpath(run_dir)))
  return int(match.group(1)) if match else None


def group_dir_of(run_dir: str) -> str:
  """The group directory of a run: the parent of a `seed_K` directory, else
  the run's own directory."""
  run_dir = os.path.normpath(run_dir)
  return os.path.dirname(run_dir) if seed_of(run_dir) is not None else run_dir


def group_label(group_dir: str, workdir: str) -> str:
  """The `label` of `group_dir/config.json`, else the group directory's path
  relative to `workdir` (its basename for `workdir` itself, or for the
  parent of a `workdir` that is a `seed_K` directory)."""
  config_path = os.path.join(group_dir, CONFIG_FILE)
  if os.path.isfile(config_path):
    try:
      with open(config_path, encoding='utf-8') as f:
        label = json.load(f).get('label')
    except (ValueError, AttributeError):
      label = None
    if isinstance(label, str) and label:
      return label
  relative = os.path.relpath(group_dir, workdir)
  if relative == '.' or relative.startswith('..'):
    return os.path.basename(os.path.abspath(group_dir))
  return relative.replace(os.sep, '/')


def _unique_labels(labels: dict[str, str], workdir: str) -> dict[str, str]:
  """Labels by group directory, with the relative path appended to labels
  that several groups share (two sweeps of the same configuration)."""
  counts = {}
  for label in labels.values():
    counts[label] = counts.get(label, 0) + 1
  return {d: label if counts[label] == 1
          else f'{label} [{os.path.relpath(d, workdir)}]'
          for d, label in labels.items()}


def load_groups(workdir: str) -> list[Group]:
  """Every run under `workdir`, grouped by seed and sorted by label.

  Raises:
    ValueError: `workdir` does not exist or holds no metrics.jsonl.
  """
  if not os.path.isdir(workdir):
    raise SettingError('workdir', f'workdir {workdir} does not exist (or is '
                       'not a directory). Point it at the workdir of a '
                       'training run or sweep.')
  paths = find_metrics_files(workdir)
  if not paths:
    raise ValueError(f'No {METRICS_FILE} under {workdir}. {EXPECTED_LAYOUT}')
  runs_by_group = {}
  for path in paths:
    run_dir = os.path.dirname(path)
    run = Run(run_dir, seed_of(run_dir), tuple(read_records(path)))
    runs_by_group.setdefault(group_dir_of(run_dir), []).append(run)
  labels = _unique_labels(
      {d: group_label(d, workdir) for d in runs_by_group}, workdir)
  groups = [Group(labels[d], d, tuple(sorted(
      runs, key=lambda r: (r.seed is not None, r.seed or 0))))
            for d, runs in runs_by_group.items()]
  return sorted(groups, key=lambda g: g.label)


# Statistics.


def mean_and_std(values, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Mean and sample std (ddof=STD_DDOF) over `axis`; the std is NaN where
  there is a single value."""
  values = np.asarray(values, dtype=float)
  mean = np.mean(values, axis=axis)
  if values.shape[axis] <= STD_DDOF:
    return mean, np.full_like(mean, np.nan)
  return mean, np.std(values, axis=axis, ddof=STD_DDOF)


def evaluated_records(run: Run, metric: str = 'test_accuracy') -> list[dict]:
  """The run's records that hold `metric`, in round order."""
  return [r for r in run.records if as_number(r.get(metric)) is not None]


def cumulative_seconds(run: Run) -> dict[int, float]:
  """Seconds since the run's start at the end of each round: the sum of
  `wall_s` over its rounds up to that one."""
  total, seconds = 0.0, {}
  for record in run.records:
    total += as_number(record.get('wall_s')) or 0.0
    seconds[record['round']] = total
  return seconds


def group_curve(group: Group, metric: str) -> Curve | None:
  """The mean and std over seeds of `metric` at the rounds that every seed
  with an evaluation of it has; None if no seed has one."""
  series = []
  for run in group.runs:
    evaluated = evaluated_records(run, metric)
    if evaluated:
      series.append((run, {r['round']: as_number(r[metric])
                           for r in evaluated}))
  if not series:
    return None
  rounds = sorted(set.intersection(*(set(values) for _, values in series)))
  shape = (len(series), len(rounds))
  values = np.array([[v[k] for k in rounds] for _, v in series]).reshape(shape)
  elapsed = [cumulative_seconds(run) for run, _ in series]
  seconds = np.array([[e[k] for k in rounds] for e in elapsed]).reshape(shape)
  mean, std = mean_and_std(values, axis=0)
  if len(series) == 1:
    std = np.zeros_like(mean)
  return Curve(np.array(rounds, dtype=int), seconds.mean(axis=0), mean, std,
               len(series))


def rounds_to_target(run: Run, target: float) -> int | None:
  """The first evaluated round whose test accuracy is at least `target`,
  else None."""
  for record in evaluated_records(run):
    if as_number(record['test_accuracy']) >= target:
      return record['round']
  return None


def _stats(values: list[float]) -> tuple[float | None, float | None]:
  """Mean and sample std as floats; None where undefined."""
  if not values:
    return None, None
  mean, std = mean_and_std(values)
  return float(mean), None if np.isnan(std) else float(std)


def summarize_group(group: Group, target: float) -> dict[str, Any]:
  """One table row of a group: CSV_COLUMNS to numbers (None where a value
  is undefined, e.g. the std of one seed).

  Final and best test accuracy and rounds to `target` are over the seeds
  with an evaluated round (each seed's latest evaluation is its final one);
  rounds to `target` are averaged over the seeds that reached it.
  """
  evaluated = [evaluated_records(run) for run in group.runs]
  evaluated = [records for records in evaluated if records]
  final = [as_number(records[-1]['test_accuracy']) for records in evaluated]
  best = [max(as_number(r['test_accuracy']) for r in records)
          for records in evaluated]
  reached = [n for n in (rounds_to_target(run, target) for run in group.runs)
             if n is not None]
  losses = [as_number(run.records[-1].get('train_loss'))
            for run in group.runs if run.records]
  losses = [v for v in losses if v is not None]
  wall = [sum(as_number(r.get('wall_s')) or 0.0 for r in run.records)
          for run in group.runs if run.records]
  row = {'label': group.label, 'seeds': len(group.runs),
         'evaluated_seeds': len(evaluated), 'target_reached': len(reached),
         'wall_s_mean': _stats(wall)[0]}
  for name, values in (('final_accuracy', final), ('best_accuracy', best),
                       ('rounds_to_target', reached),
                       ('final_train_loss', losses)):
    row[f'{name}_mean'], row[f'{name}_std'] = _stats(values)
  return row


def table_rows(groups: list[Group], target: float) -> list[dict[str, Any]]:
  """One row per group (`summarize_group`), sorted by label."""
  rows = [summarize_group(group, target) for group in groups]
  return sorted(rows, key=lambda row: row['label'])


def has_evaluations(groups: list[Group]) -> bool:
  """Whether any run of any group has an evaluated round."""
  return any(evaluated_records(run) for g in groups for run in g.runs)


def check_evaluated(groups: list[Group], workdir: str) -> None:
  """Raises ValueError if no run has an evaluated round yet."""
  if not has_evaluations(groups):
    raise ValueError(
        f'No run under {workdir} has an evaluated round yet (no record with '
        'test_accuracy). Train with eval_every=N (N > 0) to evaluate every '
        'N rounds, or wait for the first evaluation.')


def notes(groups: list[Group]) -> list[str]:
  """Caveats of partial results: seeds without an evaluated round yet,
  groups whose seeds share no evaluated round, seeds at different rounds."""
  lines = []
  for group in groups:
    missing = [_run_name(run) for run in group.runs
               if not evaluated_records(run)]
    if missing and len(missing) < len(group.runs):
      lines.append(f'{group.label}: {len(missing)} of {len(group.runs)} '
                   f'seeds have no evaluated round yet ({", ".join(missing)});'
                   ' its curves and accuracies use the others.')
    elif missing:
      lines.append(f'{group.label}: no evaluated round yet; left out of the '
                   'plots.')
    curve = group_curve(group, 'test_accuracy')
    if curve is not None and not curve.rounds.size:
      lines.append(f'{group.label}: its seeds share no evaluated round; left '
                   'out of the plots.')
    last = sorted({run.records[-1]['round'] for run in group.runs
                   if run.records})
    if len(last) > 1:
      lines.append(f'{group.label}: seeds are at different rounds '
                   f'({last[0]} to {last[-1]}); final values are each seed\'s '
                   'latest.')
  return lines


def _run_name(run: Run) -> str:
  return f'seed_{run.seed}' if run.seed is not None else run.path


# Tables.


def _number_cell(mean: float | None, std: float | None,
                 digits: int = 4) -> str:
  if mean is None:
    return '-'
  if std is None:
    return f'{mean:.{digits}f}'
  return f'{mean:.{digits}f} +- {std:.{digits}f}'


def _rounds_cell(row: dict[str, Any]) -> str:
  reached = f'({row["target_reached"]}/{row["seeds"]} reached)'
  return (_number_cell(row['rounds_to_target_mean'],
                       row['rounds_to_target_std'], digits=1)
          + ' ' + reached)


def format_markdown(rows: list[dict[str, Any]], target: float,
                    caveats: list[str] = ()) -> str:
  """A Markdown table of `table_rows`, with a caption line and the
  `caveats` (see `notes`) below it."""
  lines = [
      f'Mean +- sample standard deviation (ddof={STD_DDOF}) over seeds; no '
      'std for a single value. Rounds to reach test accuracy '
      f'{target:g} are over the seeds that reached it.', '',
      f'| label | seeds | final test accuracy | best test accuracy | '
      f'rounds to {target:g} | final train loss | wall s |',
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: |']
  for row in rows:
    cells = [
        row['label'].replace('|', '\\|'), str(row['seeds']),
        _number_cell(row['final_accuracy_mean'], row['final_accuracy_std']),
        _number_cell(row['best_accuracy_mean'], row['best_accuracy_std']),
        _rounds_cell(row),
        _number_cell(row['final_train_loss_mean'],
                     row['final_train_loss_std']),
        _number_cell(row['wall_s_mean'], None, digits=1)]
    lines.append('| ' + ' | '.join(cells) + ' |')
  if caveats:
    lines += [''] + [f'Note: {line}' for line in caveats]
  return '\n'.join(lines) + '\n'


def write_markdown(rows: list[dict[str, Any]], target: float, path: str,
                   caveats: list[str] = ()) -> None:
  """Writes `format_markdown` to `path`."""
  with open(path, 'w', encoding='utf-8') as f:
    f.write(format_markdown(rows, target, caveats))


def write_csv(rows: list[dict[str, Any]], path: str) -> None:
  """Writes the rows with CSV_COLUMNS as header; undefined values are empty
  cells, numbers are written in full precision."""
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: '' if row[k] is None else row[k]
                       for k in CSV_COLUMNS})


# Plots.


def curve_label(group: Group, curve: Curve) -> str:
  """A legend entry: the label and how many seeds the curve averages."""
  total = len(group.runs)
  if curve.num_seeds < total:
    return f'{group.label} ({curve.num_seeds} of {total} seeds)'
  return f'{group.label} ({total} seed{"s" if total > 1 else ""})'


def plot_metric(groups: list[Group], metric: str, x_axis: str,
                path: str) -> None:
  """Writes a PNG of `metric` against 'round' or 'time' (cumulative wall
  seconds): one line per group, shaded ± one std when it has several
  seeds."""
  fig = Figure(figsize=(7, 4.5), layout='tight')
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  banded = False
  for group in groups:
    curve = group_curve(group, metric)
    if curve is None or not curve.rounds.size:
      continue
    x = curve.rounds if x_axis == 'round' else curve.seconds
    (line,) = ax.plot(x, curve.mean, marker='.',
                      label=curve_label(group, curve))
    if curve.num_seeds > 1:
      ax.fill_between(x, curve.mean - curve.std, curve.mean + curve.std,
                      color=line.get_color(), alpha=0.2, linewidth=0)
      banded = True
  name = metric.replace('_', ' ')
  ax.set_xlabel('round' if x_axis == 'round'
                else 'wall-clock time since the start (s)')
  ax.set_ylabel(name)
  ax.set_title(f'{name.capitalize()} vs {x_axis}'
               + (' (mean ± sample std over seeds)' if banded else ''))
  ax.grid(alpha=0.3)
  if ax.lines:
    ax.legend()
  fig.savefig(path, dpi=100)


def write_plots(groups: list[Group], out_dir: str) -> list[str]:
  """Writes the PLOTS into `out_dir` and returns their paths."""
  paths = []
  for filename, metric, x_axis in PLOTS:
    path = os.path.join(out_dir, filename)
    plot_metric(groups, metric, x_axis, path)
    paths.append(path)
  return paths


# TensorBoard.


def safe_name(label: str) -> str:
  """`label` as one directory name: runs of other characters become '_'."""
  name = _UNSAFE_CHARS.sub('_', label).strip('_')
  return name if name.strip('.') else '_'


def tensorboard_dir(out_dir: str, group: Group, run: Run) -> str:
  """OUT/tensorboard/LABEL/seed_K, or OUT/tensorboard/LABEL for a run
  outside a seed directory."""
  base = os.path.join(out_dir, 'tensorboard', safe_name(group.label))
  return base if run.seed is None else os.path.join(base, f'seed_{run.seed}')


def write_tensorboard(groups: list[Group], out_dir: str) -> list[str]:
  """Writes every finite numeric metric of every record as a TensorBoard
  scalar at step = round, one event file per run, and returns the run
  directories.

  Event files an earlier export left in those directories are replaced.

  Raises:
    ValueError: tensorboardX is not installed.
  """
  try:
    # Imported here: only the TensorBoard export needs it.
    from tensorboardX import SummaryWriter
  except ImportError as e:
    raise ValueError("The TensorBoard export needs tensorboardX: pip install "
                     "'tensorboardX>=2.6'") from e
  run_dirs = []
  for group in groups:
    for run in group.runs:
      run_dir = tensorboard_dir(out_dir, group, run)
      _remove_event_files(run_dir)
      writer = SummaryWriter(logdir=run_dir)
      try:
        for record in run.records:
          for tag, value in numeric_metrics(record).items():
            if math.isfinite(value):  # tensorboardX warns on each inf.
              writer.add_scalar(tag, value, global_step=record['round'])
      finally:
        writer.close()
      run_dirs.append(run_dir)
  return run_dirs


def _remove_event_files(run_dir: str) -> None:
  if os.path.isdir(run_dir):
    for name in os.listdir(run_dir):
      if name.startswith('events.out.tfevents.'):
        os.remove(os.path.join(run_dir, name))
