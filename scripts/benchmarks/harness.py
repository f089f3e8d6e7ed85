"""How the benchmark workloads measure: timing, interleaved comparisons,
peak memory, and the limits measured in a child process.

Examples:
  >>> seconds = harness.median_seconds(lambda: f().block_until_ready(), 5)
  >>> result = harness.interleaved_comparison('privacy', runs, 'plain')
"""

import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable

from absl import flags
import jax

from fedjax_core import Simulation

ROUNDS = flags.DEFINE_integer('rounds', 7, 'Timed rounds after warm-up.')
REPEATS = flags.DEFINE_integer(
    'repeats', 5, 'Timed repetitions of each limit.')


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
  """Median wall time of `fn()` (which must block) after one warm-up."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def python_loop_seconds(step, params, xs, ys, repeats) -> float:
  """Median time of a Python loop over a jitted step, one call per batch."""
  jitted = jax.jit(step)

  def run():
    p = params
    for x, y in zip(xs, ys):
      p = jitted(p, x, y)
    return jax.block_until_ready(p)

  return median_seconds(run, repeats)


def scan_seconds(step, params, xs, ys, repeats) -> float:
  """Median time of all steps inside one jitted `lax.scan`."""
  @jax.jit
  def run_all(p, xs, ys):
    return jax.lax.scan(lambda p, b: (step(p, *b), None), p, (xs, ys))[0]

  return median_seconds(
      lambda: jax.block_until_ready(run_all(params, xs, ys)), repeats)


def limits_in_child_process(workload: str) -> dict:
  """`workload`'s limits, measured by `scripts.benchmark --limits_only` in
  a child process on one default JAX device."""
  result = subprocess.run(
      [sys.executable, '-m', 'scripts.benchmark',
       f'--workload={workload}', '--limits_only', '--cpu_devices=1',
       f'--repeats={REPEATS.value}'],
      capture_output=True, text=True, check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


def peak_device_mb() -> float | None:
  """The first device's peak memory in use so far, in MB (None where the
  backend keeps no memory statistics)."""
  stats = jax.devices()[0].memory_stats()
  return stats['peak_bytes_in_use'] / 2**20 if stats else None


def peak_host_mb() -> float:
  """This process's peak resident memory so far, in MB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def placement_figures(sim: Simulation) -> dict:
  """How `sim` ran: its devices, loop and store, and its round's traces
  (1: no second compile after round 1)."""
  return {'backend': jax.default_backend(), 'devices': sim.mesh.size,
          'loop': sim.loop,
          'clients_in_parallel': sim.clients_in_parallel,
          'state_store': sim.store.placement,
          'num_traces': sim.round_fn.num_traces}


def timed_rounds(sim: Simulation) -> tuple[float, float]:
  """Compile seconds (the first round's excess) and the median seconds of
  the next `--rounds` rounds."""
  first = sim.run_round()['wall_s']
  median = statistics.median(sim.run_round()['wall_s']
                             for _ in range(ROUNDS.value))
  return first - median, median


def interleaved_comparison(workload: str, runs: dict[str, Simulation],
                           baseline: str) -> dict:
  """Compile seconds, median round seconds and the ratio to `baseline`'s
  round of each run, one round of each in turn so that machine noise falls
  on all alike; and the most traces any run's round needed."""
  first = {name: sim.run_round()['wall_s'] for name, sim in runs.items()}
  times = {name: [] for name in runs}
  for _ in range(ROUNDS.value):
    for name, sim in runs.items():
      times[name].append(sim.run_round()['wall_s'])
  medians = {name: statistics.median(t) for name, t in times.items()}
  result = {'workload': workload, 'backend': jax.default_backend(),
            'devices': jax.device_count(),
            'loop': runs[baseline].loop,
            'max_num_traces': max(sim.round_fn.num_traces
                                  for sim in runs.values())}
  for name in runs:
    result[f's_per_round_{name}'] = medians[name]
    result[f'compile_s_{name}'] = first[name] - medians[name]
  for name in runs:
    if name != baseline:
      result[f'ratio_{name}_vs_{baseline}'] = medians[name] / medians[
          baseline]
  return result
