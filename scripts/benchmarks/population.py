"""Workload `population`: the round time against the population size.

SCAFFOLD (a control variate per client) with logistic regression on 28x28
inputs, cohorts of 10, at populations of 1,000, 10,000 and 100,000 clients
of 20 examples; the round time should not grow with the population. It
reports each population's round and compile time, where the client state
lives and its size, and the largest population's round time as a ratio to
the smallest's.
"""

import jax
import numpy as np

import algorithms
from fedjax_core import FederatedDataset, Simulation, SimulationConfig
import models
from scripts import config_from_flags
from scripts.benchmarks import harness
from scripts.benchmarks import setups

_COHORT = 10


def run() -> dict:
  """Workload `population`: SCAFFOLD (a control variate per client) with
  logistic regression on 28x28 inputs, cohorts of 10, at populations of
  1,000, 10,000 and 100,000 clients of 20 examples; the round time should
  not grow with the population."""
  result = {'workload': 'population'}
  for population in setups.POPULATIONS:
    rng = np.random.default_rng(0)
    n = population * setups.EXAMPLES_PER_CLIENT
    x = rng.integers(0, 256, (n, 28, 28, 1), np.uint8)
    y = rng.integers(0, setups.CLASSES, n).astype(np.int32)
    clients = tuple(np.arange(i * setups.EXAMPLES_PER_CLIENT,
                              (i + 1) * setups.EXAMPLES_PER_CLIENT)
                    for i in range(population))
    dataset = FederatedDataset(name='random_population', train_x=x,
                               train_y=y, client_indices=clients,
                               test_x=x[:100], test_y=y[:100],
                               num_classes=setups.CLASSES)
    model = models.get_model('logreg', (28, 28, 1), setups.CLASSES)
    algorithm = algorithms.build_algorithm(
        'scaffold', model.apply, num_clients=population, client_lr=setups.LR)
    config = SimulationConfig(
        num_rounds=1 + harness.ROUNDS.value, clients_per_round=_COHORT,
        batch_size=setups.POPULATION_BATCH, local_epochs=1, progress=False,
        **config_from_flags.placement_settings())
    sim = Simulation(algorithm, model, dataset, config,
                     mesh=config_from_flags.mesh())
    compile_s, round_s = harness.timed_rounds(sim)
    store_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(
        sim.store.stacked))
    result.update({
        f's_per_round_{population}': round_s,
        f'compile_s_{population}': compile_s,
        f'state_store_{population}': sim.store.placement,
        f'store_mb_{population}': store_bytes / 2**20,
        f'num_traces_{population}': sim.round_fn.num_traces})
    figures = harness.placement_figures(sim)
    del sim, dataset, x, clients
  figures.pop('num_traces')
  figures.pop('state_store')
  small, large = setups.POPULATIONS[0], setups.POPULATIONS[-1]
  result.update(figures, ratio_round_largest_vs_smallest=(
      result[f's_per_round_{large}'] / result[f's_per_round_{small}']),
                peak_mem_mb=harness.peak_host_mb())
  return result
