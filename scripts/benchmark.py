r"""Benchmarks the simulator against the limits of the same arithmetic.

Each workload is a module under `scripts/benchmarks/`, whose docstring says
what it runs and what each figure it reports means:
  mlp: FedAvg rounds of a small MLP against the sequential, batched and
    per-client limits of the same SGD steps;
  cnn_cifar: the same with McMahan's CIFAR CNN on CIFAR-10-shaped data;
  resnet18_gn: FL-Simulator's ResNet-18 (GroupNorm) setup, FedAvg and
    FedSpeed, evaluation timed apart;
  population: SCAFFOLD rounds at 1,000, 10,000 and 100,000 clients;
  fedspeed: FedSpeed's round time as a ratio to FedAvg's;
  privacy: secure aggregation and client-level DP rounds against plain ones;
  dp_accounting: the share of a DP-FedAvg run that RDP and PLD accounting
    take;
  robustness: each robust rule and compressor against the plain mean;
  cohort_assembly: partitioning and a round's host-side preparation at
    growing populations;
  sweep: 8 seeds of `scripts.train` in one program against 8 processes;
  gossip: decentralized rounds (256 nodes on a ring) against FedAvg's, the
    three mixing kernels, and 256 against 1,024 nodes;
  personal_eval: scoring 1,000 clients' personal models on their own
    held-out rows against one round of a 10-client cohort;
  stackoverflow_shape: loading a generated 342,477-client StackOverflow
    file, and FedAvg rounds of its LSTM on random tokens;
  inversion: 64 Inverting-Gradients restarts against a CNN gradient,
    vmapped in one program against 64 sequential runs.
The placement flags (--loop, --clients_in_parallel, --state_store,
--mesh_shape, --cpu_devices) apply to every workload.

Examples:
  python -m scripts.benchmark --workload=mlp
  python -m scripts.benchmark --workload=fedspeed
  python -m scripts.benchmark --workload=cohort_assembly
  python -m scripts.benchmark --workload=privacy
  python -m scripts.benchmark --workload=dp_accounting
  python -m scripts.benchmark --workload=robustness
  python -m scripts.benchmark --workload=sweep --json
  python -m scripts.benchmark --workload=gossip
  python -m scripts.benchmark --workload=personal_eval
  python -m scripts.benchmark --workload=inversion
  python -m scripts.benchmark --workload=mlp --loop=scan --json
"""

import json

from absl import app
from absl import flags

from fedjax_core import errors
from fedjax_core.engine import placement
from scripts import config_from_flags
from scripts import flags as script_flags
from scripts.benchmarks import cnn_cifar
from scripts.benchmarks import cohort_assembly
from scripts.benchmarks import dp_accounting
from scripts.benchmarks import fedspeed
from scripts.benchmarks import gossip
from scripts.benchmarks import harness
from scripts.benchmarks import inversion
from scripts.benchmarks import mlp
from scripts.benchmarks import personal_eval
from scripts.benchmarks import population
from scripts.benchmarks import privacy
from scripts.benchmarks import resnet18_gn
from scripts.benchmarks import robustness
from scripts.benchmarks import stackoverflow_shape
from scripts.benchmarks import sweep

# Each workload's module; `run()` returns its figures by name.
_MODULES = {'mlp': mlp, 'cnn_cifar': cnn_cifar, 'resnet18_gn': resnet18_gn,
            'population': population, 'fedspeed': fedspeed,
            'privacy': privacy, 'dp_accounting': dp_accounting,
            'robustness': robustness, 'cohort_assembly': cohort_assembly,
            'sweep': sweep, 'gossip': gossip,
            'personal_eval': personal_eval,
            'stackoverflow_shape': stackoverflow_shape,
            'inversion': inversion}
WORKLOADS = tuple(_MODULES)
# Workloads whose limits run in a child process, by `limits()`.
_LIMITED = ('mlp', 'cnn_cifar')
_PLACEMENT_FLAGS = (script_flags.LOOP, script_flags.CLIENTS_IN_PARALLEL,
                    script_flags.STATE_STORE, script_flags.MESH_SHAPE,
                    script_flags.CPU_DEVICES)

_WORKLOAD = flags.DEFINE_enum('workload', 'mlp', WORKLOADS, 'What to run.')
_JSON = flags.DEFINE_bool(
    'json', False, 'Print the result as one JSON object on the last line.')
_LIMITS_ONLY = flags.DEFINE_bool(
    'limits_only', False, 'Measure only the limits and print them as JSON '
    '(the benchmark runs itself so in a child process).')
_OUTPUT = flags.DEFINE_string(
    'output', None, 'Also append the JSON result to this file.')
# --help lists the workloads' flags and the placement flags too.
flags.adopt_module_key_flags(harness)
flags.adopt_module_key_flags(resnet18_gn)
for _holder in _PLACEMENT_FLAGS:
  flags.declare_key_flag(_holder.name)


def main(argv):
  del argv
  script_flags.reject_unused('scripts.benchmark', *_PLACEMENT_FLAGS)
  placement.use_cpu_device_per_core(script_flags.CPU_DEVICES.value)
  module = _MODULES[_WORKLOAD.value]
  if _LIMITS_ONLY.value:
    if _WORKLOAD.value not in _LIMITED:
      raise app.UsageError(f'--limits_only applies to --workload='
                           f'{"|".join(_LIMITED)} only.')
    print(json.dumps(module.limits()))
    return
  try:
    config_from_flags.mesh()
  except errors.SettingError as e:
    raise app.UsageError(script_flags.describe(e)) from None
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  result = module.run()
  for key, value in result.items():
    print(f'{key:>24}: {value:.4g}' if isinstance(value, float)
          else f'{key:>24}: {value}')
  line = json.dumps(result)
  if _OUTPUT.value:
    with open(_OUTPUT.value, 'a') as f:
      f.write(line + '\n')
  if _JSON.value:
    print(line)


if __name__ == '__main__':
  app.run(main)
