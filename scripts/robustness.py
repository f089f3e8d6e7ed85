r"""Tables of defenses against attacks and of accuracy against bytes.

`--table=attacks` trains FedAvg on digits with every aggregation rule
(rows) under every attack (columns), 20% of each cohort Byzantine by
default, and prints the final test accuracy as a Markdown table.
`--table=compression` trains FedAvg with each compressor and prints the
final test accuracy, the bytes each client sends per round and the
compression ratio. Each cell is one run of `fedjax_core.Simulation` with the
same seed, so rows differ only in the rule or the compressor.

Examples:
  python -m scripts.robustness --table=attacks
  python -m scripts.robustness --table=compression --num_rounds=100
"""

import time

from absl import app
from absl import flags

from algorithms import build_algorithm
from fedjax_core.channel import aggregation
from fedjax_core.channel import attacks
from fedjax_core.data import datasets
from fedjax_core.engine import placement
from fedjax_core.engine import simulation
from fedjax_core.channel import uplink
import models

_TABLE = flags.DEFINE_enum('table', 'attacks', ['attacks', 'compression'],
                           'Which table to build.')
_NUM_ROUNDS = flags.DEFINE_integer('num_rounds', 50, 'Rounds per run.')
_NUM_CLIENTS = flags.DEFINE_integer('num_clients', 20, 'Population.')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 10,
                                          'Cohort size.')
_PARTITION = flags.DEFINE_string('partition', 'dirichlet', 'Partition.')
_DIRICHLET_ALPHA = flags.DEFINE_float('dirichlet_alpha', 1.0,
                                      'Dirichlet concentration.')
_MODEL = flags.DEFINE_enum('model', 'mlp', models.MODEL_NAMES, 'Model.')
_CLIENT_LR = flags.DEFINE_float('client_lr', 0.05, 'Local learning rate.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 10, 'Local batch size.')
_BYZANTINE_FRACTION = flags.DEFINE_float(
    'byzantine_fraction', 0.2, 'Share of each cohort that is Byzantine.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of every run.')
_RULES = flags.DEFINE_list(
    'rules', ['mean', 'median', 'trimmed_mean', 'krum', 'multi_krum',
              'geometric_median', 'centered_clip', 'monna', 'median+nnm',
              'krum+nnm'], 'Rows of the attacks table; +nnm adds mixing.')
_ATTACKS = flags.DEFINE_list(
    'attacks', ['none', 'sign_flip:4', 'gaussian:1', 'label_flip', 'alie',
                'ipm:0.1', 'ipm:100'],
    'Columns of the attacks table: NAME or NAME:PARAM (the scale of '
    'sign_flip, the stddev of gaussian, the z of alie, the epsilon of ipm).')
_ATTACK_PARAMS = {'sign_flip': 'scale', 'gaussian': 'stddev',
                  'alie': 'alie_z', 'ipm': 'ipm_epsilon'}
_CC_RADIUS = flags.DEFINE_float('cc_radius', 0.5,
                                'Centered clipping radius.')
_COMPRESSORS = flags.DEFINE_list(
    'compressors', ['none', 'topk:0.01', 'topk:0.1', 'qsgd:4', 'qsgd:16',
                    'sign', 'fedzip:0.1'],
    'Rows of the compression table: NAME or NAME:PARAM (the fraction of '
    'topk / fedzip, the levels of qsgd), +down to compress the broadcast '
    'too.')


def _run(dataset, model, **config) -> dict:
  algorithm = build_algorithm('fedavg', model.apply,
                              num_clients=dataset.num_clients,
                              client_lr=_CLIENT_LR.value)
  settings = simulation.SimulationConfig(
      num_rounds=_NUM_ROUNDS.value,
      clients_per_round=_CLIENTS_PER_ROUND.value,
      batch_size=_BATCH_SIZE.value, seed=_SEED.value,
      eval_every=_NUM_ROUNDS.value, progress=False, **config)
  sim = simulation.Simulation(algorithm, model, dataset, settings)
  try:
    summary = sim.run()
  except simulation.TrainingDivergedError as e:
    return {'diverged': e.round_num}
  summary['last'] = sim.history[-1]
  return summary


def _robust(rule: str, num_byzantine: int):
  name, _, extra = rule.partition('+')
  if name == 'mean' and not extra:
    return None
  return aggregation.RobustAggregation(
      name, num_byzantine=num_byzantine, nnm=extra == 'nnm',
      clip_radius=_CC_RADIUS.value)


def _attack(column: str) -> attacks.Attack | None:
  name, _, param = column.partition(':')
  if name == 'none':
    return None
  kwargs = {_ATTACK_PARAMS[name]: float(param)} if param else {}
  return attacks.Attack(name, fraction=_BYZANTINE_FRACTION.value, **kwargs)


def _attacks_table(dataset, model) -> str:
  num_byzantine = attacks.Attack(
      'sign_flip', fraction=_BYZANTINE_FRACTION.value).num_byzantine(
          _CLIENTS_PER_ROUND.value)
  header = '| rule | ' + ' | '.join(_ATTACKS.value) + ' |'
  lines = [header, '|' + ' --- |' * (len(_ATTACKS.value) + 1)]
  for rule in _RULES.value:
    cells = []
    for column in _ATTACKS.value:
      start = time.perf_counter()
      summary = _run(dataset, model, attack=_attack(column),
                     robust=_robust(rule, max(1, num_byzantine)))
      if 'diverged' in summary:
        cell = f'diverged (round {summary["diverged"]})'
      else:
        cell = f'{summary["final_test_accuracy"]:.4f}'
      cells.append(cell)
      print(f'{rule} / {column}: {cell} '
            f'({time.perf_counter() - start:.1f} s)', flush=True)
    lines.append(f'| {rule} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def _compression_table(dataset, model) -> str:
  lines = ['| compressor | final accuracy | bytes up / client / round | '
           'compression ratio | bytes down / client / round |',
           '| --- | --- | --- | --- | --- |']
  for entry in _COMPRESSORS.value:
    spec, _, down = entry.partition('+')
    name, _, param = spec.partition(':')
    settings = None
    if name != 'none':
      kwargs = {}
      if param:
        kwargs['levels' if name == 'qsgd' else 'fraction'] = (
            int(param) if name == 'qsgd' else float(param))
      settings = uplink.Uplink(name, **kwargs)
    summary = _run(dataset, model, uplink=settings,
                   downlink=settings if down == 'down' else None)
    if 'diverged' in summary:
      line = f'| {entry} | diverged (round {summary["diverged"]}) | | | |'
    else:
      last = summary['last']
      line = (f'| {entry} | {summary["final_test_accuracy"]:.4f} | '
              f'{last["bytes_up"]:.0f} | {last["compression_ratio"]:.1f} | '
              f'{last["bytes_down"]:.0f} |')
    print(line, flush=True)
    lines.append(line)
  return '\n'.join(lines)


def main(argv):
  del argv
  placement.use_cpu_device_per_core(None)
  dataset = datasets.load_dataset(
      'digits', num_clients=_NUM_CLIENTS.value, seed=_SEED.value,
      partition=_PARTITION.value, dirichlet_alpha=_DIRICHLET_ALPHA.value)
  model = models.get_model(_MODEL.value, dataset.example_shape,
                           dataset.num_classes)
  table = (_attacks_table if _TABLE.value == 'attacks'
           else _compression_table)(dataset, model)
  print()
  print(table)


if __name__ == '__main__':
  app.run(main)
