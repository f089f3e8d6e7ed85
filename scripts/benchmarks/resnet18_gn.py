"""Workload `resnet18_gn`: FL-Simulator's CIFAR-10 setup for FedAvg and
FedSpeed.

ResNet-18 with GroupNorm, 10 of 100 clients of 500 random CIFAR-10-shaped
images a round, batch 50, `--resnet_epochs` local epochs. It reports each
algorithm's compile time, median round time and examples per second, and
the time of an evaluation on 10,000 test images, timed apart.
"""

import time

from absl import flags
import jax

from scripts.benchmarks import harness
from scripts.benchmarks import setups

RESNET_EPOCHS = flags.DEFINE_integer(
    'resnet_epochs', 5, 'Local epochs of workload resnet18_gn (FL-Simulator: '
    '5).')


def run() -> dict:
  """Workload `resnet18_gn`: FL-Simulator's CIFAR-10 setup (ResNet-18 with
  GroupNorm, 10 of 100 clients, batch 50, `--resnet_epochs` local epochs)
  for FedAvg and FedSpeed; evaluation on 10,000 test images timed apart."""
  epochs = RESNET_EPOCHS.value
  result = {'workload': 'resnet18_gn', 'local_epochs': epochs}
  for name in ('fedavg', 'fedspeed'):
    sim = setups.cifar_simulation(name, 'resnet18_gn', epochs,
                                  1 + harness.ROUNDS.value)
    compile_s, round_s = harness.timed_rounds(sim)
    sim.evaluate()  # Compiles the evaluation.
    start = time.perf_counter()
    sim.evaluate()
    result.update({
        **harness.placement_figures(sim),
        f'compile_s_{name}': compile_s,
        f's_per_round_{name}': round_s,
        f'examples_per_s_{name}': (setups.CIFAR_COHORT
                                   * setups.CIFAR_EXAMPLES * epochs
                                   / round_s),
        f'eval_s_{name}': time.perf_counter() - start,
        f'num_traces_{name}': sim.round_fn.num_traces})
  result.pop('num_traces')
  result.update(device_kind=jax.devices()[0].device_kind,
                peak_mem_mb=harness.peak_host_mb(),
                peak_device_mem_mb=harness.peak_device_mb())
  return result
