"""Workload `sweep`: 8 seeds in one program against 8 runs one after
another.

8 seeds of FedAvg with logistic regression on Synthetic(1, 1) (30 clients,
10 a round, 20 local steps of batch 10, 200 rounds), as `python -m
scripts.train --num_seeds=8` (one compiled program) and as 8 runs of
`python -m scripts.train --seed=K` one after another, each timed as a whole
process (start-up and compiles included), in two interleaved cycles. It
reports the medians, ratio_vmapped_vs_sequential, and the largest
difference between a seed's final test accuracy in the two.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

# FedAvg with logistic regression on Synthetic(1, 1).
_TRAIN_FLAGS = ('--algorithm=fedavg', '--dataset=synthetic', '--model=logreg',
                '--num_clients=30', '--clients_per_round=10',
                '--local_steps=20', '--batch_size=10', '--num_rounds=200',
                '--progress=false')
_SEEDS, _CYCLES = 8, 2


def _train_seconds(workdir: str, *flags: str) -> float:
  """Wall seconds of `python -m scripts.train` as a user launches it."""
  start = time.perf_counter()
  subprocess.run([sys.executable, '-m', 'scripts.train', *_TRAIN_FLAGS,
                  f'--workdir={workdir}', *flags], check=True,
                 stdout=subprocess.DEVNULL)
  return time.perf_counter() - start


def _final_accuracy(run_dir: str) -> float:
  with open(os.path.join(run_dir, 'summary.json')) as f:
    return json.load(f)['final_test_accuracy']


def run() -> dict:
  """Workload `sweep`: 8 seeds in one program against 8 runs one after
  another, whole processes timed (start-up and compile included)."""
  result = {'workload': 'sweep', 'seeds': _SEEDS}
  vmapped, sequential, differences = [], [], []
  for cycle in range(_CYCLES):  # Interleaved: the machine is shared.
    with tempfile.TemporaryDirectory() as workdir:
      vmapped.append(_train_seconds(os.path.join(workdir, 'vmapped'),
                                    f'--num_seeds={_SEEDS}'))
      sequential.append(sum(
          _train_seconds(os.path.join(workdir, f'seed_{seed}'),
                         f'--seed={seed}') for seed in range(_SEEDS)))
      differences.extend(
          abs(_final_accuracy(os.path.join(workdir, 'vmapped',
                                           f'seed_{seed}'))
              - _final_accuracy(os.path.join(workdir, f'seed_{seed}')))
          for seed in range(_SEEDS))
    result[f'ratio_cycle_{cycle}'] = vmapped[-1] / sequential[-1]
  result.update(
      vmapped_s=statistics.median(vmapped),
      sequential_s=statistics.median(sequential),
      max_final_accuracy_difference=max(differences))
  result['ratio_vmapped_vs_sequential'] = (result['vmapped_s']
                                           / result['sequential_s'])
  return result
