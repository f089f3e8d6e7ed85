"""Workload `stackoverflow_shape`: StackOverflow's population and model.

Three parts, on data of the real shapes (generated, not real text):
  1. Loading: `scripts/make_stackoverflow_sqlite.py` writes a file of TFF's
     schema with the real 342,477 training clients (2 examples each), in a
     child process, into a temporary folder (or `--stackoverflow_dir` is
     read as it is). The workload times `tff_stackoverflow`'s next-word
     loader on it (`load_s`) and its one-client-per-user partition
     (`partition_s`), and reports this process's peak resident memory
     before (`rss_before_load_mb`: imports) and after loading
     (`peak_rss_mb`).
  2. The whole population: rounds of FedAvg with cohorts of 50 of the
     `lstm_stackoverflow` model over the loaded file's 342,477 clients, one
     per user, in batches of their 2 examples (`population_s_per_round`,
     `population_compile_s`), so the sampler, the state store and the
     batching run at the real population.
  3. Rounds: FedAvg with cohorts of 50 (Reddi et al., 2021, "Adaptive
     Federated Optimization": StackOverflow next-word prediction, batch 16)
     of the `lstm_stackoverflow` model (4,050,748 parameters) on random
     token ids of the real shapes, x `[*, 20]` in [0, 10004) and per-position
     targets; each of 500 clients holds `--stackoverflow_client_examples`
     examples, one local epoch. It reports the round and compile times
     (`harness.timed_rounds`) and the tokens trained per second.
"""

import os
import subprocess
import sys
import tempfile
import time

from absl import flags
import numpy as np

import algorithms
from fedjax_core import FederatedDataset, Simulation, SimulationConfig
from fedjax_core.data import partition
from fedjax_core.data.client_indices import ClientIndices
from fedjax_core.data.datasets import registry
from fedjax_core.data.datasets import tff_stackoverflow as so
import models
from scripts import config_from_flags
from scripts.benchmarks import harness

CLIENTS, EXAMPLES_PER_CLIENT = 342_477, 2
COHORT, BATCH, POPULATION, LR = 50, 16, 500, 0.3

_DIR = flags.DEFINE_string(
    'stackoverflow_dir', None, 'stackoverflow_shape: folder holding TFF '
    'StackOverflow files to load; default: generate the 342,477-client '
    'file into a temporary folder.')
_CLIENT_EXAMPLES = flags.DEFINE_integer(
    'stackoverflow_client_examples', 4 * BATCH, 'stackoverflow_shape: '
    'examples of each client in the timed rounds (batch 16).')


def _generate(folder: str) -> float:
  """Seconds to write the generated file into `folder` (a child process)."""
  start = time.perf_counter()
  subprocess.run(
      [sys.executable, '-m', 'scripts.make_stackoverflow_sqlite',
       f'--clients={CLIENTS}', f'--examples_per_client={EXAMPLES_PER_CLIENT}',
       f'--out={folder}'], check=True, capture_output=True)
  return time.perf_counter() - start


def _load(folder: str) -> tuple[dict, FederatedDataset]:
  """Part 1's figures for the files in `folder`, and its dataset."""
  result = {'rss_before_load_mb': harness.peak_host_mb()}
  start = time.perf_counter()
  central = so.load_stackoverflow_words(data_dir=folder)
  result['load_s'] = time.perf_counter() - start
  result['peak_rss_mb'] = harness.peak_host_mb()
  num_users = len(np.unique(central.train_groups))
  start = time.perf_counter()
  clients = partition.natural_partition(central.train_groups, num_users, 0)
  result.update(partition_s=time.perf_counter() - start,
                num_clients=len(clients), train_rows=len(central.train_x),
                test_rows=len(central.test_x))
  return result, registry.federate(central, clients)


def _simulation(dataset: FederatedDataset, batch_size: int) -> Simulation:
  """FedAvg of the StackOverflow LSTM on `dataset`, cohorts of 50."""
  model = models.get_model('lstm_stackoverflow', (so.SEQUENCE_LENGTH,),
                           so.WORDS_VOCAB, input_vocab=so.WORDS_VOCAB,
                           per_position=True)
  algorithm = algorithms.build_algorithm(
      'fedavg', model.apply, num_clients=dataset.num_clients, client_lr=LR)
  config = SimulationConfig(
      num_rounds=1 + harness.ROUNDS.value, clients_per_round=COHORT,
      batch_size=batch_size, local_epochs=1, progress=False,
      **config_from_flags.placement_settings())
  return Simulation(algorithm, model, dataset, config,
                    mesh=config_from_flags.mesh())


def _population_rounds(dataset: FederatedDataset) -> dict:
  """Part 2's figures: rounds over every client of the loaded file."""
  batch_size = min(BATCH, int(dataset.client_sizes.max()))
  compile_s, round_s = harness.timed_rounds(_simulation(dataset, batch_size))
  return {'population_s_per_round': round_s,
          'population_compile_s': compile_s}


def _rounds() -> dict:
  """Part 3's figures: FedAvg rounds of the LSTM on random tokens."""
  per_client = _CLIENT_EXAMPLES.value
  rng = np.random.default_rng(0)
  n = POPULATION * per_client
  x = rng.integers(0, so.WORDS_VOCAB, (n, so.SEQUENCE_LENGTH), np.int32)
  y = rng.integers(1, so.WORDS_VOCAB, (n, so.SEQUENCE_LENGTH), np.int32)
  dataset = FederatedDataset(
      name='random_stackoverflow', train_x=x, train_y=y,
      client_indices=ClientIndices(np.arange(n),
                                   np.arange(0, n + 1, per_client)),
      test_x=x[:100], test_y=y[:100], num_classes=so.WORDS_VOCAB,
      input_vocab=so.WORDS_VOCAB)
  sim = _simulation(dataset, BATCH)
  compile_s, round_s = harness.timed_rounds(sim)
  tokens = COHORT * per_client * so.SEQUENCE_LENGTH
  return {'s_per_round': round_s, 'compile_s': compile_s,
          'tokens_per_s': tokens / round_s, 'client_examples': per_client,
          **harness.placement_figures(sim)}


def run() -> dict:
  """Workload `stackoverflow_shape` (module docstring)."""
  result = {'workload': 'stackoverflow_shape'}
  if _DIR.value:
    figures, dataset = _load(_DIR.value)
  else:
    with tempfile.TemporaryDirectory() as folder:
      result['generate_s'] = _generate(folder)
      result['file_mb'] = os.path.getsize(
          os.path.join(folder, so.SQLITE_FILE)) / 2**20
      figures, dataset = _load(folder)
  result.update(figures)
  result.update(_population_rounds(dataset))
  del dataset
  result.update(_rounds())
  return result
