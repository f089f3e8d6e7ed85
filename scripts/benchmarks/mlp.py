"""Workload `mlp`: the engine's round against the limits of its arithmetic.

10 clients a round, each 50 local SGD steps of batch 10 on 784-dimensional
random inputs, model 784-200-200-10. It reports the compile time, the
median round time after warm-up, examples per second, peak memory and two
ratios measured in the same process:
  ratio_sequential_limit: round time / the same 500 SGD steps as a Python loop
    over one jitted single-client step (no federated machinery);
  ratio_batched_limit: round time / 50 SGD steps of batch 100 = cohort x batch
    (the same arithmetic at the best intensity: the floor for any simulator),
    the faster of a Python loop over a jitted step and one jitted scan.
The limits run in a child process on one default JAX device, as plain JAX
code would, so the engine's device settings neither help nor hurt them.
A third figure, ratio_per_client_limit, compares with the same ten clients'
50 steps each as one bare jitted vmap of scans, sharded over the engine's
devices: the cost of ten separate models on this machine without any of the
engine's machinery (sampling, masks, metrics, aggregation).
"""

import statistics

import jax

from fedjax_core.engine import placement
import models
from scripts.benchmarks import harness
from scripts.benchmarks import setups


def _per_client_seconds(step, params, xs, ys, repeats) -> float:
  """Median time of every client's steps as one sharded vmap of scans."""
  num_devices = max(d for d in range(1, jax.device_count() + 1)
                    if setups.COHORT % d == 0)
  sharding = placement.cohort_sharding(
      placement.client_mesh(jax.devices()[:num_devices]))
  xs, ys = jax.device_put((xs, ys), sharding)

  @jax.jit
  def run_clients(xs, ys):
    def one_client(xs, ys):
      return jax.lax.scan(lambda p, b: (step(p, *b), None), params,
                          (xs, ys))[0]
    return jax.vmap(one_client)(xs, ys)

  return harness.median_seconds(
      lambda: jax.block_until_ready(run_clients(xs, ys)), repeats)


def limits() -> dict:
  """The sequential and batched limits of workload `mlp`, in seconds."""
  x, y = setups.mlp_data()
  model = models.get_model('mlp', (setups.DIM,), setups.CLASSES)
  params = model.init(jax.random.key(0))
  step = setups.sgd_step_fn(model)
  cohort_x, cohort_y = setups.cohort_arrays(x, y)
  seq_x = cohort_x.reshape(-1, setups.BATCH, setups.DIM)
  seq_y = cohort_y.reshape(-1, setups.BATCH)
  big_x = seq_x.reshape(setups.STEPS, setups.COHORT * setups.BATCH, setups.DIM)
  big_y = seq_y.reshape(setups.STEPS, setups.COHORT * setups.BATCH)
  repeats = harness.REPEATS.value
  loop_s = harness.python_loop_seconds(step, params, big_x, big_y, repeats)
  scan_s = harness.scan_seconds(step, params, big_x, big_y, repeats)
  return {
      'sequential_limit_s': harness.python_loop_seconds(
          step, params, seq_x, seq_y, repeats),
      'batched_limit_s': min(loop_s, scan_s),
      'batched_limit_loop_s': loop_s,
      'batched_limit_scan_s': scan_s,
  }


def run() -> dict:
  """Runs workload `mlp` and returns its figures."""
  x, y = setups.mlp_data()
  sim = setups.mlp_simulation(x, y, 'fedavg')
  model = models.get_model('mlp', (setups.DIM,), setups.CLASSES)
  first_round_s = sim.run_round()['wall_s']
  round_s = statistics.median(
      sim.run_round()['wall_s'] for _ in range(harness.ROUNDS.value))
  limits_s = harness.limits_in_child_process('mlp')
  per_client_s = _per_client_seconds(
      setups.sgd_step_fn(model), model.init(jax.random.key(0)),
      *setups.cohort_arrays(x, y), harness.REPEATS.value)
  return {
      'workload': 'mlp',
      **harness.placement_figures(sim),
      'compile_s': first_round_s - round_s,
      's_per_round': round_s,
      'examples_per_s': setups.COHORT * setups.STEPS * setups.BATCH / round_s,
      **limits_s,
      'ratio_sequential_limit': round_s / limits_s['sequential_limit_s'],
      'ratio_batched_limit': round_s / limits_s['batched_limit_s'],
      'per_client_limit_s': per_client_s,
      'ratio_per_client_limit': round_s / per_client_s,
      'peak_mem_mb': harness.peak_host_mb(),
      'peak_device_mem_mb': harness.peak_device_mb(),
  }
