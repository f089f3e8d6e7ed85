r"""Plots and tables of finished or running federated runs.

Reads every metrics.jsonl under --workdir, groups the runs of `seed_K`
directories by their parent (labelled by its config.json's "label" if it has
one, else by its path), and writes into --out (default: --workdir):
accuracy_vs_round.png, loss_vs_round.png, accuracy_vs_time.png and
loss_vs_time.png (the mean over seeds, shaded +- one sample standard
deviation), results.md and results.csv (one row per group: final and best
test accuracy, rounds to --target_accuracy, final train loss, wall seconds),
and with --tensorboard, TensorBoard event files under OUT/tensorboard/.

Examples:
  python -m scripts.plot --workdir=/tmp/qs
  python -m scripts.plot --workdir=/tmp/sweep --out=/tmp/sweep_plots \
      --target_accuracy=0.9 --tensorboard
"""

import os
import sys

from absl import app
from absl import flags

from fedjax_core.experiments import reporting

_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory searched recursively for metrics.jsonl: one '
    'run, runs side by side (NAME/), seeds (seed_K/, NAME/seed_K/) or a '
    'sweep (runs/ID/seed_K/ with runs/ID/config.json).')
_OUT = flags.DEFINE_string(
    'out', None, 'Where the plots and tables go (default: --workdir).')
_TARGET_ACCURACY = flags.DEFINE_float(
    'target_accuracy', 0.8, 'Test accuracy (a fraction in [0, 1]) whose '
    'first round the table reports.')
_TENSORBOARD = flags.DEFINE_bool(
    'tensorboard', False, 'Also write TensorBoard event files of every '
    'numeric metric under OUT/tensorboard/LABEL/seed_K/.')
flags.mark_flag_as_required('workdir')


def _check_target(target: float) -> None:
  if target > 1:
    raise app.UsageError(
        f'--target_accuracy={target:g} is above 1: it is a fraction, e.g. '
        f'{target / 100:g} for {target:g}%.')
  if target < 0:
    raise app.UsageError(f'--target_accuracy={target:g} is negative: give a '
                         'fraction in [0, 1], e.g. 0.8.')


def _write_tables(groups, out_dir: str, caveats: list[str]) -> str:
  """Writes results.md and results.csv and returns the Markdown."""
  target = _TARGET_ACCURACY.value
  rows = reporting.table_rows(groups, target)
  markdown_path = os.path.join(out_dir, 'results.md')
  csv_path = os.path.join(out_dir, 'results.csv')
  reporting.write_markdown(rows, target, markdown_path, caveats)
  reporting.write_csv(rows, csv_path)
  print(f'Wrote {markdown_path}')
  print(f'Wrote {csv_path}')
  return reporting.format_markdown(rows, target, caveats)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  _check_target(_TARGET_ACCURACY.value)
  out_dir = _OUT.value or _WORKDIR.value
  try:
    groups = reporting.load_groups(_WORKDIR.value)
    reporting.check_evaluated(groups, _WORKDIR.value)
    os.makedirs(out_dir, exist_ok=True)
    caveats = reporting.notes(groups)
    for line in caveats:
      print(f'Note: {line}')
    for path in reporting.write_plots(groups, out_dir):
      print(f'Wrote {path}')
    table = _write_tables(groups, out_dir, caveats)
    if _TENSORBOARD.value:
      for run_dir in reporting.write_tensorboard(groups, out_dir):
        print(f'Wrote TensorBoard events to {run_dir}')
      print('View them with: tensorboard --logdir='
            f'{os.path.join(out_dir, "tensorboard")}')
  except (ValueError, OSError) as e:
    sys.exit(f'error: {e}')
  print()
  print(table, end='')


if __name__ == '__main__':
  app.run(main)
