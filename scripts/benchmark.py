r"""Benchmarks the simulator against the limits of the same arithmetic.

Workload `mlp`: 10 clients a round, each 50 local SGD steps of batch 10 on
784-dimensional random inputs, model 784-200-200-10. It reports the compile
time, the median round time after warm-up, examples per second, peak memory
and two ratios measured in the same process:
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

Workload `fedspeed`: the `mlp` workload trained by FedAvg and by FedSpeed
(both forms), rounds interleaved; it reports FedSpeed's round time as a
ratio to FedAvg's (ratio_fedspeed_vs_fedavg).

Workload `privacy`: the `mlp` workload's FedAvg aggregated in the clear, by
secure aggregation (32-bit words, no dropouts, and with 30% of each cohort
dropping after masking), and with client-level DP (clip 1, noise 1, RDP
accounting every round), rounds interleaved; it reports each round time as
a ratio to the plain one (ratio_secure_vs_plain, ...) and the host time of
the protocol's key agreement and Shamir recovery (secagg_setup_s).

Workload `dp_accounting`: the quickstart's FedAvg on digits (20 clients,
Poisson sampling of 5 a round, 100 rounds) under client-level DP (clip 1,
noise 1), with the RDP and the PLD accountant. It reports the seconds the
accounting takes (built once, epsilon asked after every round, as a run
does), the whole run's seconds, their ratio (accounting_share_pld, ...) and
the final epsilon.

Workload `robustness`: the `mlp` workload's FedAvg aggregated by the plain
mean, by every robust rule (f = 2 of the 10 clients) and by the mean after
nearest-neighbour mixing, and with each compressor, rounds interleaved; it
reports each round time as a ratio to the plain one
(ratio_median_vs_plain, ratio_topk_vs_plain, ...).

Workload `cohort_assembly`: the host side of a round at growing
populations (1,000, 10,000 and 100,000 clients, 20 examples each on
average, quantity skew with lognormal sigma 1). It reports how long the
partition takes and the median time to sample a cohort of 100 and build its
padded batches (one epoch of batch 10); that time should not grow with the
population. It also reports the padding waste (share of masked example
slots) with 1 and with 4 local-step size buckets, and the time of every
partition scheme at 100,000 clients.

Workload `sweep`: 8 seeds of FedAvg with logistic regression on
Synthetic(1, 1) (30 clients, 10 a round, 20 local steps of batch 10, 200
rounds), as `python -m scripts.train --num_seeds=8` (one compiled program)
and as 8 runs of `python -m scripts.train --seed=K` one after another, each
timed as a whole process (start-up and compiles included), in two
interleaved cycles. It reports the medians, ratio_vmapped_vs_sequential, and
the largest difference between a seed's final test accuracy in the two.

Examples:
  python -m scripts.benchmark --workload=mlp
  python -m scripts.benchmark --workload=fedspeed
  python -m scripts.benchmark --workload=cohort_assembly
  python -m scripts.benchmark --workload=privacy
  python -m scripts.benchmark --workload=dp_accounting
  python -m scripts.benchmark --workload=robustness
  python -m scripts.benchmark --workload=sweep --json
  python -m scripts.benchmark --workload=mlp --local_loop=scan --json
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import algorithms
from fedjax_core import FederatedDataset, Simulation, SimulationConfig
from fedjax_core import aggregation
from fedjax_core import batching
from fedjax_core import datasets
from fedjax_core import losses
from fedjax_core import partition
from fedjax_core import placement
from fedjax_core import privacy
from fedjax_core import privacy_accounting
from fedjax_core import sampling
from fedjax_core import uplink
import models
from scripts import placement_flags

WORKLOADS = ('mlp', 'cnn_cifar', 'resnet18_gn', 'population', 'fedspeed',
             'privacy', 'dp_accounting', 'robustness', 'cohort_assembly',
             'sweep')
# Workloads whose limits run in a child process.
_LIMITED = ('mlp', 'cnn_cifar')

_WORKLOAD = flags.DEFINE_enum('workload', 'mlp', WORKLOADS, 'What to run.')
_ROUNDS = flags.DEFINE_integer('rounds', 7, 'Timed rounds after warm-up.')
_REPEATS = flags.DEFINE_integer(
    'repeats', 5, 'Timed repetitions of each limit.')
_CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices', None, 'On CPU, JAX devices to split the host into; the '
    'cohort is sharded over them (default: one per core; 1 disables).')
_JSON = flags.DEFINE_bool(
    'json', False, 'Print the result as one JSON object on the last line.')
_LIMITS_ONLY = flags.DEFINE_bool(
    'limits_only', False, 'Measure only the limits and print them as JSON '
    '(the benchmark runs itself so in a child process).')
_OUTPUT = flags.DEFINE_string(
    'output', None, 'Also append the JSON result to this file.')

# Workload `cohort_assembly`.
_POPULATIONS = (1_000, 10_000, 100_000)
_EXAMPLES_PER_CLIENT, _ASSEMBLY_COHORT, _ASSEMBLY_BATCH = 20, 100, 10
_POPULATION_COHORT = 10  # Workload `population`.

# Workload `sweep`: FedAvg with logistic regression on Synthetic(1, 1).
_SWEEP_FLAGS = ('--algorithm=fedavg', '--dataset=synthetic', '--model=logreg',
                '--num_clients=30', '--clients_per_round=10',
                '--local_steps=20', '--batch_size=10', '--num_rounds=200',
                '--progress=false')
_SWEEP_SEEDS, _SWEEP_CYCLES = 8, 2

# Workloads `cnn_cifar` and `resnet18_gn`: CIFAR-10-shaped random data.
_CIFAR_SHAPE, _CIFAR_CLIENTS, _CIFAR_EXAMPLES = (32, 32, 3), 100, 500
_CIFAR_COHORT, _CIFAR_BATCH, _CIFAR_TEST = 10, 50, 10_000
_RESNET_EPOCHS = flags.DEFINE_integer(
    'resnet_epochs', 5, 'Local epochs of workload resnet18_gn (FL-Simulator: '
    '5).')

# Workload `dp_accounting`: the quickstart's digits run under client-level
# DP, Poisson sampling.
_DP_ROUNDS, _DP_CLIENTS, _DP_COHORT = 100, 20, 5

# Workload `mlp`.
_COHORT, _STEPS, _BATCH, _DIM, _CLASSES = 10, 50, 10, 784, 10
_POPULATION, _LR = 50, 0.05


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
  """Median wall time of `fn()` (which must block) after one warm-up."""
  fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _sgd_step_fn(model: models.Model):
  def step(params, x, y):
    def loss_fn(p):
      return losses.softmax_cross_entropy(model.apply(p, x), y,
                                          jnp.ones(y.shape, jnp.float32))
    grads = jax.grad(loss_fn)(params)
    return jax.tree.map(lambda p, g: p - _LR * g, params, grads)
  return step


def _python_loop_seconds(step, params, xs, ys, repeats) -> float:
  """Median time of a Python loop over a jitted step, one call per batch."""
  jitted = jax.jit(step)

  def run():
    p = params
    for x, y in zip(xs, ys):
      p = jitted(p, x, y)
    return jax.block_until_ready(p)

  return _median_seconds(run, repeats)


def _scan_seconds(step, params, xs, ys, repeats) -> float:
  """Median time of all steps inside one jitted `lax.scan`."""
  @jax.jit
  def run_all(p, xs, ys):
    return jax.lax.scan(lambda p, b: (step(p, *b), None), p, (xs, ys))[0]

  return _median_seconds(
      lambda: jax.block_until_ready(run_all(params, xs, ys)), repeats)


def _per_client_seconds(step, params, xs, ys, repeats) -> float:
  """Median time of every client's steps as one sharded vmap of scans."""
  num_devices = max(d for d in range(1, jax.device_count() + 1)
                    if _COHORT % d == 0)
  sharding = placement.cohort_sharding(
      placement.client_mesh(jax.devices()[:num_devices]))
  xs, ys = jax.device_put((xs, ys), sharding)

  @jax.jit
  def run_clients(xs, ys):
    def one_client(xs, ys):
      return jax.lax.scan(lambda p, b: (step(p, *b), None), params,
                          (xs, ys))[0]
    return jax.vmap(one_client)(xs, ys)

  return _median_seconds(lambda: jax.block_until_ready(run_clients(xs, ys)),
                         repeats)


def _peak_device_mb() -> float | None:
  stats = jax.devices()[0].memory_stats()
  return stats['peak_bytes_in_use'] / 2**20 if stats else None


def _mlp_data() -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  n = _POPULATION * _STEPS * _BATCH
  return (rng.normal(size=(n, _DIM)).astype(np.float32),
          rng.integers(0, _CLASSES, n).astype(np.int32))


def _cohort_arrays(x: np.ndarray, y: np.ndarray) -> tuple[jax.Array, ...]:
  """One round's examples as `[cohort, steps, batch, ...]` arrays."""
  n = _COHORT * _STEPS * _BATCH
  return (jnp.asarray(x[:n].reshape(_COHORT, _STEPS, _BATCH, _DIM)),
          jnp.asarray(y[:n].reshape(_COHORT, _STEPS, _BATCH)))


def mlp_limits() -> dict:
  """The sequential and batched limits of workload `mlp`, in seconds."""
  x, y = _mlp_data()
  model = models.get_model('mlp', (_DIM,), _CLASSES)
  params = model.init(jax.random.key(0))
  step = _sgd_step_fn(model)
  cohort_x, cohort_y = _cohort_arrays(x, y)
  seq_x = cohort_x.reshape(-1, _BATCH, _DIM)
  seq_y = cohort_y.reshape(-1, _BATCH)
  big_x = seq_x.reshape(_STEPS, _COHORT * _BATCH, _DIM)
  big_y = seq_y.reshape(_STEPS, _COHORT * _BATCH)
  loop_s = _python_loop_seconds(step, params, big_x, big_y, _REPEATS.value)
  scan_s = _scan_seconds(step, params, big_x, big_y, _REPEATS.value)
  return {
      'sequential_limit_s': _python_loop_seconds(step, params, seq_x, seq_y,
                                                 _REPEATS.value),
      'batched_limit_s': min(loop_s, scan_s),
      'batched_limit_loop_s': loop_s,
      'batched_limit_scan_s': scan_s,
  }


def _limits_in_child_process() -> dict:
  result = subprocess.run(
      [sys.executable, '-m', 'scripts.benchmark',
       f'--workload={_WORKLOAD.value}', '--limits_only', '--cpu_devices=1',
       f'--repeats={_REPEATS.value}'],
      capture_output=True, text=True, check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


def _mlp_simulation(x, y, name: str, config_overrides=None,
                    **hparams) -> Simulation:
  """Workload `mlp`'s simulation, running algorithm `name`."""
  clients = tuple(np.arange(i, len(y), _POPULATION) for i in range(_POPULATION))
  dataset = FederatedDataset(name='random_mlp', train_x=x, train_y=y,
                             client_indices=clients, test_x=x[:100],
                             test_y=y[:100], num_classes=_CLASSES)
  model = models.get_model('mlp', (_DIM,), _CLASSES)
  algorithm = algorithms.build_algorithm(name, model.apply,
                                         num_clients=_POPULATION,
                                         client_lr=_LR, hparams=hparams)
  config = SimulationConfig(
      num_rounds=1 + 2 * _ROUNDS.value, clients_per_round=_COHORT,
      batch_size=_BATCH, local_steps=_STEPS, progress=False,
      **placement_flags.settings(), **(config_overrides or {}))
  return Simulation(algorithm, model, dataset, config,
                    mesh=placement_flags.mesh())


def _placement_figures(sim: Simulation) -> dict:
  """How `sim` ran: its devices, loop and store, and its round's traces
  (1: no second compile after round 1)."""
  return {'backend': jax.default_backend(), 'devices': sim.mesh.size,
          'loop': sim.loop,
          'clients_in_parallel': sim.clients_in_parallel,
          'state_store': sim.store.placement,
          'num_traces': sim.round_fn.num_traces}


def _peak_host_mb() -> float:
  """This process's peak resident memory so far, in MB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _interleaved_comparison(workload: str, runs: dict[str, Simulation],
                            baseline: str) -> dict:
  """Compile seconds, median round seconds and the ratio to `baseline`'s
  round of each run, one round of each in turn so that machine noise falls
  on all alike; and the most traces any run's round needed."""
  first = {name: sim.run_round()['wall_s'] for name, sim in runs.items()}
  times = {name: [] for name in runs}
  for _ in range(_ROUNDS.value):
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


def benchmark_privacy() -> dict:
  """Workload `privacy`: the cost of secure aggregation and of DP."""
  x, y = _mlp_data()
  overrides = {
      'plain': {},
      'secure': {'secure_aggregation': aggregation.SecureAggregation()},
      'secure_dropout': {'secure_aggregation': aggregation.SecureAggregation(
          dropout_fraction=0.3)},
      'dp': {'client_dp': privacy.ClientDPSettings(
          clip_norm=1.0, noise_multiplier=1.0)},
  }
  runs = {name: _mlp_simulation(x, y, 'fedavg', config_overrides=o)
          for name, o in overrides.items()}
  result = _interleaved_comparison('privacy', runs, 'plain')
  result['secagg_setup_s'] = runs['secure_dropout'].run_round()[
      'secagg_setup_s']
  result['peak_mem_mb'] = _peak_host_mb()
  return result


def benchmark_dp_accounting() -> dict:
  """Workload `dp_accounting`: the share of a DP-FedAvg run that privacy
  accounting takes, under RDP and PLD."""
  dataset = datasets.load_dataset('digits', num_clients=_DP_CLIENTS)
  model = models.get_model('mlp', dataset.example_shape, dataset.num_classes)
  algorithm = algorithms.build_algorithm('fedavg', model.apply,
                                         num_clients=_DP_CLIENTS)
  result = {'workload': 'dp_accounting', 'rounds': _DP_ROUNDS}
  for accountant in privacy_accounting.ACCOUNTANTS:
    settings = privacy.ClientDPSettings(clip_norm=1.0, noise_multiplier=1.0,
                                        accountant=accountant)
    # What a run asks of its accounting: built once, epsilon every round.
    start = time.perf_counter()
    accounting = privacy.ClientLevelPrivacy(
        settings, num_clients=_DP_CLIENTS, clients_per_round=_DP_COHORT,
        participation='bernoulli', num_rounds=_DP_ROUNDS)
    epsilon = [accounting.epsilon(k) for k in range(1, _DP_ROUNDS + 1)][-1]
    accounting_s = time.perf_counter() - start
    sim = Simulation(algorithm, model, dataset, SimulationConfig(
        num_rounds=_DP_ROUNDS, clients_per_round=_DP_COHORT, batch_size=10,
        participation='bernoulli', client_dp=settings, eval_every=10,
        progress=False, **placement_flags.settings()),
                     mesh=placement_flags.mesh())
    start = time.perf_counter()
    sim.run()  # Its own accounting included.
    run_s = time.perf_counter() - start
    result.update({f'accounting_s_{accountant}': accounting_s,
                   f'run_s_{accountant}': run_s,
                   f'accounting_share_{accountant}': accounting_s / run_s,
                   f'epsilon_{accountant}': epsilon})
  return result


def benchmark_robustness() -> dict:
  """Workload `robustness`: the cost of robust rules and of compression."""
  x, y = _mlp_data()
  overrides = {'plain': {}}
  for rule in aggregation.ROBUST_RULES:
    overrides[rule] = {'robust': aggregation.RobustAggregation(
        rule, num_byzantine=2)}
  overrides['nnm'] = {'robust': aggregation.RobustAggregation(
      'mean', num_byzantine=2, nnm=True)}
  for name in ('topk', 'qsgd', 'sign', 'fedzip'):
    overrides[name] = {'uplink': uplink.Uplink(name)}
  runs = {name: _mlp_simulation(x, y, 'fedavg', config_overrides=o)
          for name, o in overrides.items()}
  result = _interleaved_comparison('robustness', runs, 'plain')
  result['peak_mem_mb'] = _peak_host_mb()
  return result


def benchmark_fedspeed() -> dict:
  """Workload `fedspeed`: FedSpeed's round time relative to FedAvg's.

  The `mlp` workload run by FedAvg (optax SGD), by local-SGD FedAvg (FedProx
  with mu = 0: the same client loop FedSpeed uses, minus its extra
  gradient) and by FedSpeed in both forms. Rounds are interleaved, one of
  each in turn, so machine noise falls on all alike; medians are reported.
  FedSpeed evaluates two gradients per local step (at y and at the ascent
  point), so about 2x FedAvg's arithmetic; FL-Simulator's PyTorch FedSpeed
  pays 1.9x.
  """
  x, y = _mlp_data()
  runs = {'fedavg': _mlp_simulation(x, y, 'fedavg'),
          'fedprox_mu0': _mlp_simulation(x, y, 'fedprox', mu=0.0),
          'fedspeed': _mlp_simulation(x, y, 'fedspeed'),
          'fedspeed_reference': _mlp_simulation(x, y, 'fedspeed',
                                                form='reference')}
  result = _interleaved_comparison('fedspeed', runs, 'fedavg')
  result['peak_mem_mb'] = _peak_host_mb()
  return result


def benchmark_mlp() -> dict:
  """Runs workload `mlp` and returns its figures."""
  x, y = _mlp_data()
  sim = _mlp_simulation(x, y, 'fedavg')
  model = models.get_model('mlp', (_DIM,), _CLASSES)
  first_round_s = sim.run_round()['wall_s']
  round_s = statistics.median(
      sim.run_round()['wall_s'] for _ in range(_ROUNDS.value))
  limits = _limits_in_child_process()
  per_client_s = _per_client_seconds(
      _sgd_step_fn(model), model.init(jax.random.key(0)),
      *_cohort_arrays(x, y), _REPEATS.value)
  return {
      'workload': 'mlp',
      **_placement_figures(sim),
      'compile_s': first_round_s - round_s,
      's_per_round': round_s,
      'examples_per_s': _COHORT * _STEPS * _BATCH / round_s,
      **limits,
      'ratio_sequential_limit': round_s / limits['sequential_limit_s'],
      'ratio_batched_limit': round_s / limits['batched_limit_s'],
      'per_client_limit_s': per_client_s,
      'ratio_per_client_limit': round_s / per_client_s,
      'peak_mem_mb': _peak_host_mb(),
      'peak_device_mem_mb': _peak_device_mb(),
  }


def _cifar_data(num_examples: int) -> tuple[np.ndarray, np.ndarray]:
  """Random CIFAR-10-shaped uint8 images and labels."""
  rng = np.random.default_rng(0)
  return (rng.integers(0, 256, (num_examples, *_CIFAR_SHAPE), np.uint8),
          rng.integers(0, _CLASSES, num_examples).astype(np.int32))


def _cifar_simulation(name: str, model_name: str, local_epochs: int,
                      num_rounds: int) -> Simulation:
  """`name` on 100 clients of 500 random CIFAR-shaped examples, 10 a
  round, batches of 50."""
  x, y = _cifar_data(_CIFAR_CLIENTS * _CIFAR_EXAMPLES)
  test_x, test_y = _cifar_data(_CIFAR_TEST)
  clients = tuple(np.arange(i * _CIFAR_EXAMPLES, (i + 1) * _CIFAR_EXAMPLES)
                  for i in range(_CIFAR_CLIENTS))
  dataset = FederatedDataset(name='random_cifar', train_x=x, train_y=y,
                             client_indices=clients, test_x=test_x,
                             test_y=test_y, num_classes=_CLASSES)
  model = models.get_model(model_name, _CIFAR_SHAPE, _CLASSES)
  algorithm = algorithms.build_algorithm(
      name, model.apply, num_clients=_CIFAR_CLIENTS, client_lr=_LR)
  config = SimulationConfig(
      num_rounds=num_rounds, clients_per_round=_CIFAR_COHORT,
      batch_size=_CIFAR_BATCH, local_epochs=local_epochs, eval_every=0,
      progress=False, **placement_flags.settings())
  return Simulation(algorithm, model, dataset, config,
                    mesh=placement_flags.mesh())


def cnn_cifar_limits() -> dict:
  """The sequential and batched limits of workload `cnn_cifar`: the round's
  100 SGD steps of batch 50, and its 10 steps at batch 500 (cohort x
  batch), each as a Python loop over one jitted step."""
  model = models.get_model('cnn', _CIFAR_SHAPE, _CLASSES)
  params = model.init(jax.random.key(0))
  step = _sgd_step_fn(model)
  x, y = _cifar_data(_CIFAR_COHORT * _CIFAR_EXAMPLES)
  x = jnp.asarray(x, jnp.float32) / 255.0
  seq_x = x.reshape(-1, _CIFAR_BATCH, *_CIFAR_SHAPE)
  seq_y = jnp.asarray(y).reshape(-1, _CIFAR_BATCH)
  steps = _CIFAR_EXAMPLES // _CIFAR_BATCH
  return {
      'sequential_limit_s': _python_loop_seconds(step, params, seq_x, seq_y,
                                                 _REPEATS.value),
      'batched_limit_s': _python_loop_seconds(
          step, params, seq_x.reshape(steps, -1, *_CIFAR_SHAPE),
          seq_y.reshape(steps, -1), _REPEATS.value),
  }


def _timed_rounds(sim: Simulation) -> tuple[float, float]:
  """Compile seconds (the first round's excess) and the median seconds of
  the next `--rounds` rounds."""
  first = sim.run_round()['wall_s']
  median = statistics.median(sim.run_round()['wall_s']
                             for _ in range(_ROUNDS.value))
  return first - median, median


def benchmark_cnn_cifar() -> dict:
  """Workload `cnn_cifar`: FedAvg with McMahan's CIFAR CNN, 10 of 100
  clients a round, one local epoch of 10 steps of batch 50."""
  sim = _cifar_simulation('fedavg', 'cnn', 1, 1 + _ROUNDS.value)
  compile_s, round_s = _timed_rounds(sim)
  limits = _limits_in_child_process()
  return {
      'workload': 'cnn_cifar',
      **_placement_figures(sim),
      'compile_s': compile_s,
      's_per_round': round_s,
      'examples_per_s': _CIFAR_COHORT * _CIFAR_EXAMPLES / round_s,
      **limits,
      'ratio_sequential_limit': round_s / limits['sequential_limit_s'],
      'ratio_batched_limit': round_s / limits['batched_limit_s'],
      'peak_mem_mb': _peak_host_mb(),
      'peak_device_mem_mb': _peak_device_mb(),
  }


def benchmark_resnet18_gn() -> dict:
  """Workload `resnet18_gn`: FL-Simulator's CIFAR-10 setup (ResNet-18 with
  GroupNorm, 10 of 100 clients, batch 50, `--resnet_epochs` local epochs)
  for FedAvg and FedSpeed; evaluation on 10,000 test images timed apart."""
  result = {'workload': 'resnet18_gn', 'local_epochs': _RESNET_EPOCHS.value}
  for name in ('fedavg', 'fedspeed'):
    sim = _cifar_simulation(name, 'resnet18_gn', _RESNET_EPOCHS.value,
                            1 + _ROUNDS.value)
    compile_s, round_s = _timed_rounds(sim)
    sim.evaluate()  # Compiles the evaluation.
    start = time.perf_counter()
    sim.evaluate()
    result.update({
        **_placement_figures(sim),
        f'compile_s_{name}': compile_s,
        f's_per_round_{name}': round_s,
        f'examples_per_s_{name}': (_CIFAR_COHORT * _CIFAR_EXAMPLES
                                   * _RESNET_EPOCHS.value / round_s),
        f'eval_s_{name}': time.perf_counter() - start,
        f'num_traces_{name}': sim.round_fn.num_traces})
  result.pop('num_traces')
  result.update(device_kind=jax.devices()[0].device_kind,
                peak_mem_mb=_peak_host_mb(),
                peak_device_mem_mb=_peak_device_mb())
  return result


def benchmark_population() -> dict:
  """Workload `population`: SCAFFOLD (a control variate per client) with
  logistic regression on 28x28 inputs, cohorts of 10, at populations of
  1,000, 10,000 and 100,000 clients of 20 examples; the round time should
  not grow with the population."""
  result = {'workload': 'population'}
  for population in _POPULATIONS:
    rng = np.random.default_rng(0)
    n = population * _EXAMPLES_PER_CLIENT
    x = rng.integers(0, 256, (n, 28, 28, 1), np.uint8)
    y = rng.integers(0, _CLASSES, n).astype(np.int32)
    clients = tuple(np.arange(i * _EXAMPLES_PER_CLIENT,
                              (i + 1) * _EXAMPLES_PER_CLIENT)
                    for i in range(population))
    dataset = FederatedDataset(name='random_population', train_x=x,
                               train_y=y, client_indices=clients,
                               test_x=x[:100], test_y=y[:100],
                               num_classes=_CLASSES)
    model = models.get_model('logreg', (28, 28, 1), _CLASSES)
    algorithm = algorithms.build_algorithm(
        'scaffold', model.apply, num_clients=population, client_lr=_LR)
    config = SimulationConfig(
        num_rounds=1 + _ROUNDS.value, clients_per_round=_POPULATION_COHORT,
        batch_size=_ASSEMBLY_BATCH, local_epochs=1, progress=False,
        **placement_flags.settings())
    sim = Simulation(algorithm, model, dataset, config,
                     mesh=placement_flags.mesh())
    compile_s, round_s = _timed_rounds(sim)
    store_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(
        sim.store.stacked))
    result.update({
        f's_per_round_{population}': round_s,
        f'compile_s_{population}': compile_s,
        f'state_store_{population}': sim.store.placement,
        f'store_mb_{population}': store_bytes / 2**20,
        f'num_traces_{population}': sim.round_fn.num_traces})
    figures = _placement_figures(sim)
    del sim, dataset, x, clients
  figures.pop('num_traces')
  figures.pop('state_store')
  small, large = _POPULATIONS[0], _POPULATIONS[-1]
  result.update(figures, ratio_round_largest_vs_smallest=(
      result[f's_per_round_{large}'] / result[f's_per_round_{small}']),
                peak_mem_mb=_peak_host_mb())
  return result


def _assemble(clients, steps, buckets, round_num: int):
  """Samples round `round_num`'s cohort and builds its padded batches."""
  ids = sampling.sample_clients(0, round_num, len(clients), _ASSEMBLY_COHORT)
  return batching.cohort_batches(
      clients, ids, seed=0, round_num=round_num, batch_size=_ASSEMBLY_BATCH,
      num_steps=batching.bucket_steps(buckets, steps[ids]), local_epochs=1)


def _partition_seconds(population: int) -> dict[str, float]:
  """Seconds of each partition of `_EXAMPLES_PER_CLIENT * population`
  examples of 10 random classes into `population` clients; dirichlet_equal,
  a loop over examples, at its common use (50,000 examples, 100 clients)."""
  num_examples = _EXAMPLES_PER_CLIENT * population
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 10, num_examples)
  groups = rng.integers(0, population, num_examples)
  args = dict(labels=labels, groups=groups, num_clients=population, seed=0,
              min_client_size=0)
  seconds = {}
  for scheme in partition.PARTITION_NAMES:
    scheme_args = args
    if scheme == 'dirichlet_equal':
      scheme_args = dict(args, labels=labels[:50_000], num_clients=100)
    start = time.perf_counter()
    partition.make_partition(scheme, **scheme_args)
    seconds[f'partition_s_{scheme}'] = time.perf_counter() - start
  return seconds


def benchmark_cohort_assembly() -> dict:
  """Workload `cohort_assembly`: host-side round preparation time against
  the population size."""
  result = {'workload': 'cohort_assembly'}
  for population in _POPULATIONS:
    num_examples = _EXAMPLES_PER_CLIENT * population
    start = time.perf_counter()
    clients = partition.quantity_skew_partition(num_examples, population,
                                                size_sigma=1.0, seed=0)
    result[f'partition_s_{population}'] = time.perf_counter() - start
    steps = -(-clients.sizes // _ASSEMBLY_BATCH)
    for num_buckets in (1, 4):
      buckets = batching.step_buckets(steps, _ASSEMBLY_COHORT, num_buckets)
      times, waste = [], []
      for round_num in range(3 * _ROUNDS.value):
        start = time.perf_counter()
        batches = _assemble(clients, steps, buckets, round_num)
        times.append(time.perf_counter() - start)
        waste.append(1.0 - float(batches.mask.mean()))
      key = f'{population}_{num_buckets}_buckets'
      result[f'assembly_ms_{key}'] = 1e3 * statistics.median(times)
      result[f'padding_fraction_{key}'] = float(np.mean(waste))
  small, large = _POPULATIONS[0], _POPULATIONS[-1]
  result.update(_partition_seconds(large))
  result['ratio_assembly_largest_vs_smallest'] = (
      result[f'assembly_ms_{large}_4_buckets'] /
      result[f'assembly_ms_{small}_4_buckets'])
  result['peak_mem_mb'] = _peak_host_mb()
  return result


def _train_seconds(workdir: str, *flags: str) -> float:
  """Wall seconds of `python -m scripts.train` as a user launches it."""
  start = time.perf_counter()
  subprocess.run([sys.executable, '-m', 'scripts.train', *_SWEEP_FLAGS,
                  f'--workdir={workdir}', *flags], check=True,
                 stdout=subprocess.DEVNULL)
  return time.perf_counter() - start


def _final_accuracy(run_dir: str) -> float:
  with open(os.path.join(run_dir, 'summary.json')) as f:
    return json.load(f)['final_test_accuracy']


def benchmark_sweep() -> dict:
  """Workload `sweep`: 8 seeds in one program against 8 runs one after
  another, whole processes timed (start-up and compile included)."""
  result = {'workload': 'sweep', 'seeds': _SWEEP_SEEDS}
  vmapped, sequential, differences = [], [], []
  for cycle in range(_SWEEP_CYCLES):  # Interleaved: the machine is shared.
    with tempfile.TemporaryDirectory() as workdir:
      vmapped.append(_train_seconds(os.path.join(workdir, 'vmapped'),
                                    f'--num_seeds={_SWEEP_SEEDS}'))
      sequential.append(sum(
          _train_seconds(os.path.join(workdir, f'seed_{seed}'),
                         f'--seed={seed}') for seed in range(_SWEEP_SEEDS)))
      differences.extend(
          abs(_final_accuracy(os.path.join(workdir, 'vmapped',
                                           f'seed_{seed}'))
              - _final_accuracy(os.path.join(workdir, f'seed_{seed}')))
          for seed in range(_SWEEP_SEEDS))
    result[f'ratio_cycle_{cycle}'] = vmapped[-1] / sequential[-1]
  result.update(
      vmapped_s=statistics.median(vmapped),
      sequential_s=statistics.median(sequential),
      max_final_accuracy_difference=max(differences))
  result['ratio_vmapped_vs_sequential'] = (result['vmapped_s']
                                           / result['sequential_s'])
  return result


def main(argv):
  del argv
  placement.use_cpu_device_per_core(_CPU_DEVICES.value)
  if _LIMITS_ONLY.value:
    if _WORKLOAD.value not in _LIMITED:
      raise app.UsageError(f'--limits_only applies to --workload='
                           f'{"|".join(_LIMITED)} only.')
    print(json.dumps({'mlp': mlp_limits,
                      'cnn_cifar': cnn_cifar_limits}[_WORKLOAD.value]()))
    return
  try:
    placement_flags.mesh()
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  result = {'mlp': benchmark_mlp,
            'cnn_cifar': benchmark_cnn_cifar,
            'resnet18_gn': benchmark_resnet18_gn,
            'population': benchmark_population,
            'fedspeed': benchmark_fedspeed,
            'privacy': benchmark_privacy,
            'dp_accounting': benchmark_dp_accounting,
            'robustness': benchmark_robustness,
            'cohort_assembly': benchmark_cohort_assembly,
            'sweep': benchmark_sweep}[_WORKLOAD.value]()
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
