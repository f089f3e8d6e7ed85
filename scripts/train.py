r"""Runs federated training from the command line.

With no flags it runs the quickstart: FedAvg against FedAdam on scikit-learn's
digits split over 20 clients by Dirichlet(0.5) label skew, then prints an
accuracy table. `--algorithm` takes one name or a comma-separated list; with
a list each algorithm gets its own `WORKDIR/NAME/` and the table compares
them. `--num_seeds` (and `--vmapped_hparam`) run several seeds (and values)
of each algorithm as one compiled program, each in `WORKDIR/[NAME/]seed_K/`.
`--init_checkpoint` starts from a base that `scripts.pretrain` wrote, which
`--algorithm=fedlora|ffa_lora` fine-tunes through LoRA adapters.
Re-run with the same `--workdir` to resume from the last checkpoint.

Examples:
  python -m scripts.train
  python -m scripts.train --algorithm=fedyogi --dataset=synthetic \
      --model=logreg --local_steps=20 --num_rounds=200 --workdir=/tmp/run
  python -m scripts.train --flagfile=my_run.flags
  python -m scripts.train --algorithm=fedsam --num_seeds=4 \
      --vmapped_hparam=rho=0.01:0.05:0.1 --workdir=/tmp/rho
  python -m scripts.pretrain --workdir=/tmp/base
  python -m scripts.train --algorithm=fedlora,ffa_lora \
      --dataset=pydoc_topics --data_part=finetune --model=transformer \
      --init_checkpoint=/tmp/base/base --lora_rank=4 --workdir=/tmp/lora
"""

import glob
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import optax

import algorithms
import fedjax_core
from fedjax_core import errors
from fedjax_core.channel import topology
from fedjax_core.data import partition_report
from fedjax_core.engine import distributed
from fedjax_core.engine import placement
from fedjax_core.engine import simulation
from fedjax_core.toolkit import pretrained
import models
from scripts import config_from_flags
from scripts import flags as script_flags
from scripts import run_config

flags.adopt_module_key_flags(script_flags)  # --help lists them.

# Largest clients x classes label table partition.json holds (8M cells,
# 64 MB of int64; StackOverflow's 342,477 users x 10,004 words is 3.4G).
_MAX_LABEL_CELLS = 1 << 23


def _byzantine_line(config: simulation.SimulationConfig) -> str:
  """One line saying who attacks and which rule defends."""
  parts = []
  if config.attack is not None:
    count = config.attack.num_byzantine(config.clients_per_round)
    parts.append(f'{count} of {config.clients_per_round} clients a round '
                 f'attack by {config.attack.name}')
  robust = config.robust
  if robust is not None:
    mixing = ' after nearest-neighbour mixing' if robust.nnm else ''
    parts.append(f'aggregation by {robust.rule}{mixing} tolerating f='
                 f'{robust.num_byzantine}')
  elif config.secure_aggregation is not None:
    parts.append('aggregation by secure aggregation')
  else:
    parts.append('aggregation by the plain mean')
  return '; '.join(parts)


def _describe(name: str, sim: simulation.Simulation, workdir: str) -> None:
  """Prints how `sim` runs: its buckets and loop, DP, attack and defense."""
  config = sim.config
  buckets = ', '.join(str(b) for b in sim.step_buckets)
  print(f'{name}: local steps of batch {config.batch_size} padded to '
        f'{buckets}, loop={sim.loop}, clients in parallel per device='
        f'{sim.clients_in_parallel or "all"}, state store='
        f'{sim.store.placement}, devices={sim.mesh.size}, '
        f'workdir={workdir}')
  if config.client_dp is not None:
    print(f'{name}: {sim.privacy.describe(sim.final_round)}; clip '
          f'{script_flags.DP_CLIP_NORM.value:g}')
  elif sim.privacy is not None:
    print(f'{name}: {sim.privacy.describe(sim.final_round)}')
  if config.robust is not None or config.attack is not None:
    print(f'{name}: {_byzantine_line(config)}')
  if name in algorithms.LORA_ALGORITHMS:
    trainable = optax.tree.size(sim.server_state.model.params)
    frozen = optax.tree.size(sim.server_state.frozen.value)
    print(f'{name}: LoRA rank {script_flags.LORA_RANK.value} (alpha '
          f'{script_flags.LORA_ALPHA.value:g}) on '
          f'{script_flags.LORA_TARGETS.value!r}: {trainable:,} '
          f'trainable, {frozen:,} frozen parameters '
          f'({100 * trainable / (trainable + frozen):.2f}% trained)')


def _run_one(name: str, dataset, model, workdir: str, start) -> dict:
  """Trains algorithm `name` and returns its summary; calls `start()` once
  the run is built and checked, before it writes anything."""
  algorithm = config_from_flags.build_algorithm(name, model, dataset)
  config = config_from_flags.simulation_config(
      script_flags.SEED.value, workdir, script_flags.PROGRESS.value)
  sim = simulation.Simulation(algorithm, model, dataset, config,
                              mesh=config_from_flags.mesh())
  start()
  _describe(name, sim, workdir)
  summary = sim.run()
  _report(name, summary)
  return summary


def _run_decentralized(name: str, datasets_by_seed: dict, model,
                       workdir: str, start) -> dict[str, dict]:
  """Trains decentralized algorithm `name` for every seed, one run after
  another (in `WORKDIR/seed_K/` when there are several); returns each run's
  summary by its label ('' for a single seed). Calls `start()` as
  `_run_one` does."""
  summaries = {}
  for seed, dataset in datasets_by_seed.items():
    label = f'seed_{seed}' if len(datasets_by_seed) > 1 else ''
    run_dir = os.path.join(workdir, label) if label else workdir
    sim = fedjax_core.DecentralizedSimulation(
        config_from_flags.build_algorithm(name, model, dataset),
        model, dataset,
        config_from_flags.simulation_config(seed, run_dir,
                                            script_flags.PROGRESS.value),
        config_from_flags.gossip_config(), mesh=config_from_flags.mesh())
    start()
    if label:  # A single run's partition is written by `start()`.
      _write_partition(run_dir, dataset)
    if placement.is_main_process():
      os.makedirs(run_dir, exist_ok=True)
      topology.draw(sim.topology, os.path.join(run_dir, 'topology.png'))
    print(f'{name}: {sim.describe()}; picture in {run_dir}/topology.png')
    print(f'{name}: local steps of batch {sim.config.batch_size} padded to '
          f'{", ".join(str(b) for b in sim.step_buckets)}, loop={sim.loop}, '
          f'devices={sim.mesh.size}, workdir={run_dir}')
    try:
      summaries[label] = sim.run()
    except simulation.TrainingDivergedError as e:
      print(f'{name}: {e}', file=sys.stderr)
      summaries[label] = {'diverged': f'diverged (round {e.round_num})'}
    _report(f'{name}/{label}' if label else name, summaries[label])
  return summaries


def _report(name: str, summary: dict) -> None:
  """Prints what a run's summary says beyond the table: where it resumed,
  whether the privacy budget stopped it, and how a decentralized run's
  node models spread."""
  if 'resumed_from_round' in summary:
    print(f'{name}: resumed from round {summary["resumed_from_round"]}')
  if 'final_test_accuracy_p10' in summary:  # A decentralized run's nodes.
    print(f'{name}: node models\' test accuracy mean '
          f'{summary["final_test_accuracy"]:.4f}, 10th percentile '
          f'{summary["final_test_accuracy_p10"]:.4f}; the average model '
          f'{summary["final_average_model_test_accuracy"]:.4f}; consensus '
          f'distance {summary["final_consensus_distance"]:.3g}')
  if 'stopped_by_privacy_budget' in summary:
    print(f'{name}: {summary["stopped_by_privacy_budget"]}')


def _run_vmapped(name: str, datasets_by_seed: dict, model, workdir: str,
                 start) -> dict[str, dict]:
  """Trains algorithm `name` for every seed (and --vmapped_hparam value) in
  one compiled program; returns each run's summary by its directory. Calls
  `start()` as `_run_one` does."""
  hparam, values = config_from_flags.vmapped_values([name])
  runs, labels = [], []
  for value in values:
    overrides = {} if hparam is None else {hparam: value}
    for seed, dataset in datasets_by_seed.items():
      label = os.path.join(*([] if hparam is None else [f'{hparam}={value:g}']),
                           f'seed_{seed}')
      sim = simulation.Simulation(
          config_from_flags.build_algorithm(name, model, dataset,
                                            overrides),
          model, dataset,
          config_from_flags.simulation_config(seed, None, False),
          mesh=config_from_flags.mesh())
      runs.append(fedjax_core.Run(sim, os.path.join(workdir, label),
                                  overrides))
      labels.append(label)
  start()
  for run in runs:
    _write_partition(run.workdir, run.simulation.dataset)
  _describe(name, runs[0].simulation, workdir)
  print(f'{name}: {len(runs)} runs ({", ".join(labels)}) in one program')
  group = fedjax_core.VmappedRuns(
      runs, workdir=workdir, progress=script_flags.PROGRESS.value,
      algorithm_for=lambda h: config_from_flags.build_algorithm(
          name, model, runs[0].simulation.dataset, h))
  summaries = dict(zip(labels, group.run()))
  for label, summary in summaries.items():
    _report(f'{name}/{label}', summary)
  return summaries


def _write_partition(workdir: str, dataset) -> str:
  """Writes WORKDIR/partition.json and partition.png; returns a one-line
  summary of the split (process 0 only; others write nothing). Label
  statistics and the heatmap are left out when the clients x classes table
  would exceed `_MAX_LABEL_CELLS` (e.g. StackOverflow's words)."""
  if not placement.is_main_process():
    return ''
  os.makedirs(workdir, exist_ok=True)
  info = dataset.partition_info
  cells = dataset.num_clients * dataset.num_classes
  counts = (partition_report.label_counts(
      dataset.train_y, dataset.client_indices, dataset.num_classes)
            if cells <= _MAX_LABEL_CELLS else None)
  summary = partition_report.write_partition_json(
      os.path.join(workdir, 'partition.json'), dataset.client_indices,
      counts, scheme=info['scheme'], args=info['args'],
      local_test_indices=dataset.local_test_indices)
  size = summary['client_size']
  line = (f'{info["scheme"]} partition: {summary["num_clients"]} clients '
          f'of {size["min"]}-{size["max"]} examples (median '
          f'{size["median"]:g})')
  if counts is None:
    return (f'{line}; no label statistics or heatmap ({dataset.num_clients}'
            f' clients x {dataset.num_classes} classes)')
  partition_report.plot_heatmap(
      os.path.join(workdir, 'partition.png'), counts,
      title=f'{dataset.name}, {info["scheme"]} partition')
  entropy = summary['label_entropy_bits']
  return (f'{line}; label entropy {entropy["mean"]:.2f} of '
          f'{entropy["max_possible"]:.2f} bits on average; heatmap in '
          f'{workdir}/partition.png')


def _model(dataset) -> models.Model:
  """--model for `dataset`, initialized from --init_checkpoint's base if
  one is given."""
  model = models.get_model(script_flags.MODEL.value, dataset.example_shape,
                           dataset.num_classes,
                           **config_from_flags.model_keywords(dataset))
  path = script_flags.INIT_CHECKPOINT.value
  if path is None:
    return model
  params, info = pretrained.load_base(
      path, jax.eval_shape(model.init, jax.random.key(0)),
      {'model': script_flags.MODEL.value,
       'example_shape': dataset.example_shape,
       'num_classes': dataset.num_classes})
  print(f'Base {path}: pre-trained on {info.get("dataset")} (part '
        f'{info.get("data_part")}) for {info.get("step")} steps')
  return models.Model(init=lambda rng: params, apply=model.apply)


def _seed_means(summaries: dict[str, dict]) -> list[str]:
  """`NAME: final test accuracy MEAN +- STD over S seeds` for each group of
  runs that differ only in seed (std with ddof=1)."""
  groups = {}
  for name, summary in summaries.items():
    group, sep, _ = name.rpartition('/seed_')
    if sep and 'final_test_accuracy' in summary:
      groups.setdefault(group, []).append(summary['final_test_accuracy'])
  return [f'{group}: final test accuracy {np.mean(accs):.4f} +- '
          f'{np.std(accs, ddof=1):.4f} over {len(accs)} seeds'
          for group, accs in groups.items() if len(accs) > 1]


# Columns a table shows when some run has the summary entry: the mean over
# clients of the global model's accuracy on their own held-out rows, of
# their personal models' and of new clients' (personalized); a backdoor's
# attack success rate.
_CLIENT_COLUMNS = (('local acc', 'final_local_test_accuracy_mean'),
                   ('pers acc', 'final_personal_accuracy_mean'),
                   ('new acc', 'final_newclient_accuracy_mean'),
                   ('asr', 'final_backdoor_asr'))


def format_table(summaries: dict[str, dict]) -> str:
  """A plain-text table of each algorithm's accuracy and time (and the
  epsilon spent, under DP); a run that diverged shows where instead.

  `wall s` is the time of all its rounds, compiles included, evaluation
  excluded; `s/round` the mean round once compiled. Where clients hold out
  rows of their own, the per-client accuracies of `_CLIENT_COLUMNS` follow.
  """
  private = any('epsilon' in s for s in summaries.values())
  columns = [(title, key) for title, key in _CLIENT_COLUMNS
             if any(key in s for s in summaries.values())]
  width = max([12, *map(len, summaries)])
  header = (f'{"algorithm":<{width}} {"final acc":>9} {"best acc":>9} '
            f'{"best round":>10} {"train loss":>10} {"wall s":>8} '
            f'{"s/round":>8}' + (f' {"epsilon":>8}' if private else '')
            + ''.join(f' {title:>9}' for title, _ in columns))
  lines = [header, '-' * len(header)]
  for name, s in summaries.items():
    if 'diverged' in s:
      lines.append(f'{name:<{width}} {s["diverged"]}')
      continue
    per_round = s.get('s_per_round')
    lines.append(
        f'{name:<{width}} {s["final_test_accuracy"]:>9.4f} '
        f'{s["best_test_accuracy"]:>9.4f} {s["best_round"]:>10d} '
        f'{s["final_train_loss"]:>10.4f} {s["wall_s"]:>8.1f} '
        + (f'{per_round:>8.3f}' if per_round is not None else f'{"-":>8}')
        + (f' {s["epsilon"]:>8.3g}' if private else '')
        + ''.join(f' {s[key]:>9.4f}' if key in s else f' {"-":>9}'
                  for _, key in columns))
  return '\n'.join(lines)


def _check_workdir(workdir: str) -> dict | None:
  """The workdir's recorded configuration if this run may resume it (or
  None for a new workdir); raises `run_config.ConfigChangedError` if a
  flag differs. Reads only."""
  safe = run_config.SAFE_TO_CHANGE
  if (script_flags.DP_CLIP_NORM.value is not None
      and script_flags.DP_NOISE_MULTIPLIER.value is None):
    safe -= {'num_rounds'}  # The noise is calibrated to the run's length.
  return run_config.check(
      workdir, _recorded_flags(),
      allow_change=script_flags.ALLOW_CONFIG_CHANGE.value, safe=safe,
      defaults=_recorded_flags(defaults=True))


def _record_flags(workdir: str, recorded: dict | None) -> None:
  """Writes this run's flags to the workdir's record (`run_config`)."""
  run_config.write(workdir, _recorded_flags(), recorded,
                   _recorded_flags(defaults=True))


def _recorded_flags(defaults: bool = False) -> dict:
  """This run's result-affecting flags (or their defaults), by name."""
  return run_config.flag_values([script_flags], defaults)


def _quiet_logs() -> None:
  """Hides INFO lines of other libraries (jax's 'Unable to initialize
  backend' on machines without a TPU, orbax's per-save lines) unless
  --verbosity asks for them."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def main(argv):
  _quiet_logs()  # Before jax initializes its backends.
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments: {" ".join(argv[1:])}')
  placement.use_cpu_device_per_core(script_flags.CPU_DEVICES.value)
  try:
    distributed.initialize(script_flags.COORDINATOR_ADDRESS.value,
                           script_flags.NUM_PROCESSES.value,
                           script_flags.PROCESS_ID.value)
  except errors.SettingError as e:
    sys.exit(f'error: {script_flags.describe(e)}')
  except ValueError as e:
    sys.exit(f'error: {e}')
  main_process = placement.is_main_process()
  if not main_process:
    sys.stdout = open(os.devnull, 'w')  # Process 0 reports for all.
  workdir = script_flags.WORKDIR.value or os.path.join(
      'runs', time.strftime('%Y%m%d-%H%M%S'))
  names = script_flags.ALGORITHM.value
  try:
    config_from_flags.check(names)
    recorded = _check_workdir(workdir)
    # A workdir an older version trained: its flags are known once its
    # checkpoints have been restored under these.
    unrecorded = recorded is None and bool(glob.glob(
        os.path.join(workdir, '**', 'checkpoints'), recursive=True))
    if unrecorded:
      print(f'{workdir} has checkpoints but no {run_config.FILENAME}: its '
            'flags cannot be checked; these are recorded once the run ends.')
    first_seed = script_flags.SEED.value
    num_seeds = script_flags.NUM_SEEDS.value
    vmapped = num_seeds > 1 or bool(script_flags.VMAPPED_HPARAM.value)
    datasets_by_seed = {
        seed: config_from_flags.load_dataset(seed)
        for seed in range(first_seed, first_seed + num_seeds)}
    dataset = datasets_by_seed[first_seed]
    model = _model(dataset)
    for name in names:  # Rejects bad names and settings before any training.
      config_from_flags.build_algorithm(name, model, dataset)
    print(f'{dataset.name}: {len(dataset.train_y)} train / '
          f'{len(dataset.test_y)} test examples; model '
          f'{script_flags.MODEL.value}')
    started = False

    def start():
      """Writes flags.json (unless `unrecorded`) and the partition once the
      first run is built and checked, so that a refused run leaves the
      workdir untouched."""
      nonlocal started
      if started or not main_process:
        return
      started = True
      if not unrecorded:
        _record_flags(workdir, recorded)
      if not vmapped:
        print(_write_partition(workdir, dataset))

    summaries, failures = {}, []
    for name in names:
      run_dir = os.path.join(workdir, name) if len(names) > 1 else workdir
      if name in algorithms.DECENTRALIZED_ALGORITHMS:
        runs = _run_decentralized(name, datasets_by_seed, model, run_dir,
                                  start)
        for label, summary in runs.items():
          key = f'{name}/{label}' if label else name
          summaries[key] = summary
          if 'diverged' in summary:
            failures.append(f'{key}: {summary["diverged"]}')
        continue
      if vmapped:
        runs = _run_vmapped(name, datasets_by_seed, model, run_dir, start)
        for label, summary in runs.items():
          summaries[f'{name}/{label}'] = summary
          if 'diverged' in summary:
            failures.append(f'{name}/{label}: {summary["diverged"]}')
        continue
      try:
        summaries[name] = _run_one(name, dataset, model, run_dir, start)
      except simulation.TrainingDivergedError as e:
        # One diverging algorithm does not cost the comparison the others.
        print(f'{name}: {e}', file=sys.stderr)
        failures.append(f'{name}: {e}')
        summaries[name] = {'diverged': f'diverged (round {e.round_num})'}
    if unrecorded and main_process:  # Its checkpoints matched these flags.
      _record_flags(workdir, None)
  except errors.SettingError as e:
    sys.exit(f'error: {script_flags.describe(e)}')
  except ValueError as e:
    sys.exit(f'error: {e}')
  except KeyboardInterrupt:
    sys.exit(130)  # The simulation has said where its progress is saved.
  print()
  print(format_table(summaries))
  for line in _seed_means(summaries):
    print(line)
  print(f'\nMetrics and checkpoints: {workdir}')
  if failures:
    sys.exit('error: ' + '\n'.join(failures))


if __name__ == '__main__':
  app.run(main)
