"""Workload `cohort_assembly`: host-side round preparation time against
the population size.

The host side of a round at growing populations (1,000, 10,000 and 100,000
clients, 20 examples each on average, quantity skew with lognormal sigma
1). It reports how long the partition takes and the median time to sample
a cohort of 100 and build its padded batches (one epoch of batch 10); that
time should not grow with the population. It also reports the padding
waste (share of masked example slots) with 1 and with 4 local-step size
buckets, and the time of every partition scheme at 100,000 clients.
"""

import statistics
import time

import numpy as np

from fedjax_core.data import partition
from fedjax_core.data import sampling
from fedjax_core.engine import batching
from scripts.benchmarks import harness
from scripts.benchmarks import setups

_COHORT = 100


def _assemble(clients, steps, buckets, round_num: int):
  """Samples round `round_num`'s cohort and builds its padded batches."""
  ids = sampling.sample_clients(0, round_num, len(clients), _COHORT)
  return batching.cohort_batches(
      clients, ids, seed=0, round_num=round_num,
      batch_size=setups.POPULATION_BATCH,
      num_steps=batching.bucket_steps(buckets, steps[ids]), local_epochs=1)


def _partition_seconds(population: int) -> dict[str, float]:
  """Seconds of each partition of `EXAMPLES_PER_CLIENT * population`
  examples of 10 random classes into `population` clients; dirichlet_equal,
  a loop over examples, at its common use (50,000 examples, 100 clients)."""
  num_examples = setups.EXAMPLES_PER_CLIENT * population
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


def run() -> dict:
  """Workload `cohort_assembly`: host-side round preparation time against
  the population size."""
  result = {'workload': 'cohort_assembly'}
  for population in setups.POPULATIONS:
    num_examples = setups.EXAMPLES_PER_CLIENT * population
    start = time.perf_counter()
    clients = partition.quantity_skew_partition(num_examples, population,
                                                size_sigma=1.0, seed=0)
    result[f'partition_s_{population}'] = time.perf_counter() - start
    steps = -(-clients.sizes // setups.POPULATION_BATCH)
    for num_buckets in (1, 4):
      buckets = batching.step_buckets(steps, _COHORT, num_buckets)
      times, waste = [], []
      for round_num in range(3 * harness.ROUNDS.value):
        start = time.perf_counter()
        batches = _assemble(clients, steps, buckets, round_num)
        times.append(time.perf_counter() - start)
        waste.append(1.0 - float(batches.mask.mean()))
      key = f'{population}_{num_buckets}_buckets'
      result[f'assembly_ms_{key}'] = 1e3 * statistics.median(times)
      result[f'padding_fraction_{key}'] = float(np.mean(waste))
  small, large = setups.POPULATIONS[0], setups.POPULATIONS[-1]
  result.update(_partition_seconds(large))
  result['ratio_assembly_largest_vs_smallest'] = (
      result[f'assembly_ms_{large}_4_buckets'] /
      result[f'assembly_ms_{small}_4_buckets'])
  result['peak_mem_mb'] = harness.peak_host_mb()
  return result
