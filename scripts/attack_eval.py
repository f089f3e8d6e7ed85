r"""What each defence costs an attacker: attack x defence tables.

Trains FedAvg on scikit-learn's digits (embedded: nothing is downloaded)
under each defence of `--defences` and runs `--attack` against it:

- `inversion`: the curious server inverts the victim's FedAvg update
  (Inverting Gradients, DLG or iDLG; `--variants`), from the freshly
  initialized model; metrics PSNR, SSIM and the share of labels recovered.
  Also writes `inversion.png`: for each variant and defence, each
  original image next to its reconstruction.
- `membership`: the loss-threshold attack and LiRA (`--variants`) on the
  trained global model, with `--mia_runs` runs trained as one vmapped
  program, each the target once and the others its shadows, and the loss
  drop of one client's update (`client_update`); metrics AUC and TPR at
  0.1% and 1% FPR.
- `backdoor`: attackers plant a trigger (`--variants`: pattern, blend,
  dba, boosted, two_targets; see scripts/attack_tables/backdoor.py);
  metric the attack success rate on the triggered test set of the final
  model, whose clean accuracy is the attacked run's.

Every cell also reports the clean test accuracy of FedAvg trained under the
defence. Defences (`scripts/attack_tables/defences.py`): none, dp:Z
(client-level DP, noise multiplier Z), clip:M (norm bounding), secagg,
median, topk:F, steps:E and batch:B (FedAvg's own local steps and batch
size). Writes OUT_DIR/ATTACK.md and OUT_DIR/ATTACK.csv.

Examples:
  python -m scripts.attack_eval --attack=inversion
  python -m scripts.attack_eval --attack=membership --mia_runs=16
  python -m scripts.attack_eval --attack=backdoor \
      --defences=none,dp:0.1,dp:1,clip:0.5,secagg,median
"""

import time

from absl import app
from absl import flags

from fedjax_core import errors
from fedjax_core.engine import placement
from scripts.attack_tables import backdoor
from scripts.attack_tables import defences
from scripts.attack_tables import inversion
from scripts.attack_tables import membership
from scripts.attack_tables import report
from scripts.attack_tables import training
import models

_VARIANTS = {'inversion': ('ig', 'dlg', 'idlg'),
             'membership': ('loss', 'lira', 'lira_offline', 'client_update'),
             'backdoor': backdoor.VARIANTS}
_DEFAULT_VARIANTS = {'inversion': ['ig'],
                     'membership': list(_VARIANTS['membership']),
                     'backdoor': list(backdoor.VARIANTS)}
_HEADLINES = {'inversion': 'psnr', 'membership': 'auc', 'backdoor': 'asr'}

_ATTACK = flags.DEFINE_enum('attack', 'inversion', list(_VARIANTS),
                            'Which attack the table measures.')
_VARIANTS_FLAG = flags.DEFINE_list(
    'variants', None, 'Rows of the table (default: ig for inversion, every '
    'variant otherwise): ' + '; '.join(
        f'{attack} {"|".join(names)}' for attack, names in _VARIANTS.items())
    + '.')
_DEFENCES = flags.DEFINE_list(
    'defences', ['none', 'dp:0.1', 'dp:1', 'clip:0.5', 'secagg', 'median'],
    'Columns of the table: ' + ', '.join(defences.DEFENCES)
    + ' (NAME or NAME:VALUE, see scripts/attack_tables/defences.py).')
_OUT_DIR = flags.DEFINE_string('out_dir', 'runs/attack_eval',
                               'Where the tables (and the PNG) go.')
_MODEL = flags.DEFINE_enum('model', 'mlp', models.MODEL_NAMES,
                           'Model of every run.')
_NUM_CLIENTS = flags.DEFINE_integer('num_clients', 20, 'Population.')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 10,
                                          'Cohort of the training runs.')
_NUM_ROUNDS = flags.DEFINE_integer('num_rounds', 30,
                                   'Rounds of each training run.')
_CLIENT_LR = flags.DEFINE_float('client_lr', 0.05, 'Local SGD step size.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 10, 'Local batch size.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the data, model and runs.')
_DP_CLIP_NORM = flags.DEFINE_float('dp_clip_norm', 1.0,
                                   'Client-level DP\'s clip norm S.')
_INVERSION_BATCH = flags.DEFINE_integer(
    'inversion_batch', 1, 'Images in the victim\'s batch (inversion).')
_INVERSION_STEPS = flags.DEFINE_integer(
    'inversion_steps', 1, 'The victim\'s local SGD steps (inversion).')
_ITERATIONS = flags.DEFINE_integer('inversion_iterations', 500,
                                   'Optimization steps of the inversion.')
_RESTARTS = flags.DEFINE_integer('inversion_restarts', 4,
                                 'Vmapped restarts of the inversion.')
_BOOST = flags.DEFINE_float(
    'boost', 5.0, 'The boosted backdoor\'s scaling of its updates (model '
    'replacement\'s gamma).')
_MIA_RUNS = flags.DEFINE_integer(
    'mia_runs', 16, 'Runs trained as one program for membership inference; '
    'each is the target once, the others its shadows (even).')
_MIA_POOL = flags.DEFINE_integer(
    'mia_pool', 100, 'Digits training rows the membership runs draw their '
    'halves from.')


def _setup() -> training.Setup:
  return training.Setup(
      model=_MODEL.value, num_clients=_NUM_CLIENTS.value,
      clients_per_round=_CLIENTS_PER_ROUND.value,
      num_rounds=_NUM_ROUNDS.value, client_lr=_CLIENT_LR.value,
      batch_size=_BATCH_SIZE.value, seed=_SEED.value,
      dp_clip_norm=_DP_CLIP_NORM.value)


def _variants(attack: str) -> list[str]:
  variants = _VARIANTS_FLAG.value or _DEFAULT_VARIANTS[attack]
  unknown = [v for v in variants if v not in _VARIANTS[attack]]
  if unknown:
    raise errors.SettingError(
        'variants', f'{", ".join(unknown)}: not a variant of the {attack} '
        f'attack; valid: {", ".join(_VARIANTS[attack])}.')
  return variants


def _inversion_cells(setup, columns, variants):
  attack = inversion.InversionSetup(
      batch_size=_INVERSION_BATCH.value, local_steps=_INVERSION_STEPS.value,
      iterations=_ITERATIONS.value,
      restarts=_RESTARTS.value)
  pairs = {}
  for variant in variants:
    for defence in columns:
      cell, x, reconstructed = inversion.attack_cell(setup, attack, variant,
                                                     defence)
      pairs[f'{variant} / {defence.label}'] = (x, reconstructed)
      yield cell
  report.write_image_grid(pairs, f'{_OUT_DIR.value}/inversion.png')


def _cells(attack, setup, columns, variants):
  if attack == 'inversion':
    return _inversion_cells(setup, columns, variants)
  if attack == 'membership':
    return membership.cells(setup, columns, variants,
                            membership.MembershipSetup(
                                num_runs=_MIA_RUNS.value,
                                pool_size=_MIA_POOL.value))
  return backdoor.cells(setup, columns, variants, _BOOST.value)


def main(argv):
  del argv
  placement.use_cpu_device_per_core(None)
  attack = _ATTACK.value
  try:
    columns = [defences.parse_defence(s) for s in _DEFENCES.value]
    variants = _variants(attack)
  except errors.SettingError as e:
    raise app.UsageError(f'--{e.setting}: {e}') from None
  cells = []
  start = time.perf_counter()
  try:
    for cell in _cells(attack, _setup(), columns, variants):
      cells.append(cell)
      metrics = ', '.join(f'{k} {v:.4g}' for k, v in cell.metrics.items())
      print(f'{cell.variant} / {cell.defence}: {metrics}; clean accuracy '
            f'{cell.clean_accuracy:.4f} '
            f'({time.perf_counter() - start:.1f} s)', flush=True)
      start = time.perf_counter()
  except errors.SettingError as e:
    raise app.UsageError(f'{e} (setting {e.setting!r})') from None
  md_path, csv_path = report.write_tables(cells, _HEADLINES[attack],
                                          _OUT_DIR.value, attack)
  print()
  print(report.markdown(cells, _HEADLINES[attack]))
  print(f'\nWrote {md_path} and {csv_path}.')


if __name__ == '__main__':
  app.run(main)
