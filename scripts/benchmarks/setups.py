"""The data, models and simulations several benchmark workloads share.

The `mlp` workload's setup (10 clients a round of a population of 50, each
50 local SGD steps of batch 10 on 784-dimensional random inputs, model
784-200-200-10) is also the one `fedspeed`, `privacy` and `robustness`
compare algorithms and settings on; `cnn_cifar` and `resnet18_gn` share
100 clients of 500 random CIFAR-10-shaped images; `population` and
`cohort_assembly` share populations of 20 examples a client.

Examples:
  >>> x, y = setups.mlp_data()
  >>> sim = setups.mlp_simulation(x, y, 'fedavg')
"""

import jax
import jax.numpy as jnp
import numpy as np

import algorithms
from fedjax_core import FederatedDataset, Simulation, SimulationConfig
from fedjax_core.toolkit import losses
import models
from scripts import config_from_flags
from scripts.benchmarks import harness

# Workload `mlp`, and those built on it.
COHORT, STEPS, BATCH, DIM, CLASSES = 10, 50, 10, 784, 10
POPULATION, LR = 50, 0.05

# Workloads `cnn_cifar` and `resnet18_gn`: CIFAR-10-shaped random data.
CIFAR_SHAPE, CIFAR_CLIENTS, CIFAR_EXAMPLES = (32, 32, 3), 100, 500
CIFAR_COHORT, CIFAR_BATCH, CIFAR_TEST = 10, 50, 10_000

# Workloads `population` and `cohort_assembly`.
POPULATIONS = (1_000, 10_000, 100_000)
EXAMPLES_PER_CLIENT, POPULATION_BATCH = 20, 10


def sgd_step_fn(model: models.Model):
  """One plain SGD step of `model` at learning rate `LR`, as limits take
  it: `step(params, x, y) -> params`."""
  def step(params, x, y):
    def loss_fn(p):
      return losses.cross_entropy(model.apply(p, x), y,
                                  jnp.ones(y.shape, jnp.float32))
    grads = jax.grad(loss_fn)(params)
    return jax.tree.map(lambda p, g: p - LR * g, params, grads)
  return step


def mlp_data() -> tuple[np.ndarray, np.ndarray]:
  """The `mlp` workload's random inputs and labels, all clients'."""
  rng = np.random.default_rng(0)
  n = POPULATION * STEPS * BATCH
  return (rng.normal(size=(n, DIM)).astype(np.float32),
          rng.integers(0, CLASSES, n).astype(np.int32))


def cohort_arrays(x: np.ndarray, y: np.ndarray) -> tuple[jax.Array, ...]:
  """One round's examples as `[cohort, steps, batch, ...]` arrays."""
  n = COHORT * STEPS * BATCH
  return (jnp.asarray(x[:n].reshape(COHORT, STEPS, BATCH, DIM)),
          jnp.asarray(y[:n].reshape(COHORT, STEPS, BATCH)))


def mlp_simulation(x, y, name: str, config_overrides=None,
                   **hparams) -> Simulation:
  """Workload `mlp`'s simulation, running algorithm `name`."""
  clients = tuple(np.arange(i, len(y), POPULATION) for i in range(POPULATION))
  dataset = FederatedDataset(name='random_mlp', train_x=x, train_y=y,
                             client_indices=clients, test_x=x[:100],
                             test_y=y[:100], num_classes=CLASSES)
  model = models.get_model('mlp', (DIM,), CLASSES)
  algorithm = algorithms.build_algorithm(name, model.apply,
                                         num_clients=POPULATION,
                                         client_lr=LR, hparams=hparams)
  config = SimulationConfig(
      num_rounds=1 + 2 * harness.ROUNDS.value, clients_per_round=COHORT,
      batch_size=BATCH, local_steps=STEPS, progress=False,
      **config_from_flags.placement_settings(), **(config_overrides or {}))
  return Simulation(algorithm, model, dataset, config,
                    mesh=config_from_flags.mesh())


def cifar_data(num_examples: int) -> tuple[np.ndarray, np.ndarray]:
  """Random CIFAR-10-shaped uint8 images and labels."""
  rng = np.random.default_rng(0)
  return (rng.integers(0, 256, (num_examples, *CIFAR_SHAPE), np.uint8),
          rng.integers(0, CLASSES, num_examples).astype(np.int32))


def cifar_simulation(name: str, model_name: str, local_epochs: int,
                     num_rounds: int) -> Simulation:
  """`name` on 100 clients of 500 random CIFAR-shaped examples, 10 a
  round, batches of 50."""
  x, y = cifar_data(CIFAR_CLIENTS * CIFAR_EXAMPLES)
  test_x, test_y = cifar_data(CIFAR_TEST)
  clients = tuple(np.arange(i * CIFAR_EXAMPLES, (i + 1) * CIFAR_EXAMPLES)
                  for i in range(CIFAR_CLIENTS))
  dataset = FederatedDataset(name='random_cifar', train_x=x, train_y=y,
                             client_indices=clients, test_x=test_x,
                             test_y=test_y, num_classes=CLASSES)
  model = models.get_model(model_name, CIFAR_SHAPE, CLASSES)
  algorithm = algorithms.build_algorithm(
      name, model.apply, num_clients=CIFAR_CLIENTS, client_lr=LR)
  config = SimulationConfig(
      num_rounds=num_rounds, clients_per_round=CIFAR_COHORT,
      batch_size=CIFAR_BATCH, local_epochs=local_epochs, eval_every=0,
      progress=False, **config_from_flags.placement_settings())
  return Simulation(algorithm, model, dataset, config,
                    mesh=config_from_flags.mesh())
