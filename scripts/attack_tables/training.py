"""The federated setup every attack table trains: FedAvg on digits.

`Setup` holds what the tables share (model, population, rounds, learning
rate, seed); `simulation` builds a FedAvg run of it under one defence, and
`clean_accuracy` trains one and returns its final test accuracy, the cost of
the defence that each table cell reports next to the attack's metric.
"""

import dataclasses
import functools
from typing import Any

import algorithms
from fedjax_core.data import datasets
from fedjax_core.data.federated import FederatedDataset
from fedjax_core.engine import simulation
import models
from scripts.attack_tables import defences


@dataclasses.dataclass(frozen=True)
class Setup:
  """FedAvg on digits, as every table trains it.

  Attributes:
    model: a `models.MODEL_NAMES` entry.
    num_clients: the population.
    clients_per_round: the cohort.
    num_rounds: rounds of each training run.
    client_lr: the clients' SGD learning rate.
    batch_size: the local batch size.
    local_steps: fixed local steps per round; None: one local epoch.
    partition: how digits is split over the clients.
    seed: seeds the data split, the model and every run.
    dp_clip_norm: client-level DP's clip norm S.
  """

  model: str = 'mlp'
  num_clients: int = 20
  clients_per_round: int = 10
  num_rounds: int = 30
  client_lr: float = 0.05
  batch_size: int = 10
  local_steps: int | None = None
  partition: str = 'iid'
  seed: int = 0
  dp_clip_norm: float = 1.0

  @functools.cached_property
  def dataset(self) -> FederatedDataset:
    return datasets.load_dataset('digits', num_clients=self.num_clients,
                                 seed=self.seed, partition=self.partition)

  @functools.cached_property
  def model_fns(self) -> models.Model:
    return models.get_model(self.model, self.dataset.example_shape,
                            self.dataset.num_classes)


def simulation_config(setup: Setup, defence: defences.Defence,
                      **fields: Any) -> simulation.SimulationConfig:
  """FedAvg's run settings under `defence` (and any `fields` on top)."""
  settings = dict(
      num_rounds=setup.num_rounds,
      clients_per_round=setup.clients_per_round,
      batch_size=setup.batch_size, local_steps=setup.local_steps,
      seed=setup.seed,
      eval_every=setup.num_rounds, checkpoint_every=setup.num_rounds,
      progress=False)
  settings.update(defences.simulation_fields(
      defence, dp_clip_norm=setup.dp_clip_norm))
  settings.update(fields)
  return simulation.SimulationConfig(**settings)


def fedavg(setup: Setup, dataset: FederatedDataset | None = None):
  """FedAvg with plain SGD at the setup's learning rate."""
  dataset = dataset or setup.dataset
  return algorithms.build_algorithm(
      'fedavg', setup.model_fns.apply, num_clients=dataset.num_clients,
      client_lr=setup.client_lr)


def simulation_of(setup: Setup, defence: defences.Defence,
                  **fields: Any) -> simulation.Simulation:
  """A FedAvg run of `setup` under `defence`."""
  return simulation.Simulation(fedavg(setup), setup.model_fns, setup.dataset,
                               simulation_config(setup, defence, **fields))


def final_accuracy(sim: simulation.Simulation) -> float:
  """Runs `sim`; its final test accuracy, or NaN if training diverged."""
  try:
    return float(sim.run()['final_test_accuracy'])
  except simulation.TrainingDivergedError:
    return float('nan')


@functools.cache
def clean_accuracy(setup: Setup, defence: defences.Defence) -> float:
  """Final test accuracy of FedAvg trained under `defence` (cached)."""
  return final_accuracy(simulation_of(setup, defence))
