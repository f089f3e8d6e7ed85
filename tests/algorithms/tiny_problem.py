"""A tiny federated problem with exact numpy gradients, shared by the
algorithm tests.

Two clients (3 and 2 examples) train logistic regression on 3 features and
2 classes. With batch size 3 every local step is a full-batch gradient step
on the client's data, so a numpy re-statement of an algorithm's update rule
needs no shuffling: `local_epochs=E` is E full-batch steps per client.
"""

import jax
import numpy as np

from fedjax_core import FederatedDataset, Simulation, SimulationConfig
from fedjax_core.algorithm import Batch
from fedjax_core.data import sampling
from fedjax_core.data.client_indices import ClientIndices
import models

X = np.array([[1.0, 0.5, -1.0], [0.2, -0.3, 0.8], [-1.5, 1.0, 0.1],
              [0.7, 0.7, 0.7], [-0.4, 2.0, -0.6]], np.float32)
Y = np.array([0, 1, 1, 0, 1], np.int32)
CLIENTS = (np.array([0, 1, 2]), np.array([3, 4]))
NUM_CLIENTS = len(CLIENTS)


def dataset(local_test: bool = False) -> FederatedDataset:
  """The two clients; with `local_test`, each client's training rows are
  also its local test rows (a personalized run is scored on them)."""
  return FederatedDataset(
      name='tiny', train_x=X, train_y=Y, client_indices=CLIENTS, test_x=X,
      test_y=Y, num_classes=2,
      local_test_indices=(ClientIndices.from_lists(CLIENTS) if local_test
                          else None))


def model():
  """Logistic regression: params['params']['Dense_0'] = {kernel, bias}."""
  return models.get_model('logreg', (3,), 2)


def loss(w: np.ndarray, b: np.ndarray, client: int) -> float:
  """Mean softmax cross-entropy of client `client`'s data, in float64."""
  rows = CLIENTS[client]
  z = X[rows].astype(np.float64) @ w + b
  z = z - z.max(axis=1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  return float(-log_p[np.arange(len(rows)), Y[rows]].mean())


def grad(w: np.ndarray, b: np.ndarray,
         client: int) -> tuple[np.ndarray, np.ndarray]:
  """Gradient of `loss` with respect to (w, b), in float64."""
  rows = CLIENTS[client]
  x = X[rows].astype(np.float64)
  z = x @ w + b
  p = np.exp(z - z.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  d = (p - np.eye(2)[Y[rows]]) / len(rows)
  return x.T @ d, d.sum(axis=0)


def as_numpy(params) -> tuple[np.ndarray, np.ndarray]:
  """(kernel, bias) of the logistic regression params, as float64."""
  dense = params['params']['Dense_0']
  return (np.asarray(dense['kernel'], np.float64),
          np.asarray(dense['bias'], np.float64))


def run(algorithm, num_rounds: int, local_epochs: int = 2,
        loop: str = 'scan', participation: str = 'fixed',
        clients_per_round: int = 2, local_test: bool = False):
  """Runs `algorithm` for `num_rounds` rounds with seed 0 on
  `dataset(local_test)`.

  With `clients_per_round=1` the cohort of round t is
  `fedjax_core.sample_clients(0, t, 2, 1)` (a population twice the cohort,
  for rules that sum over the cohort but average over the population).

  Returns:
    (initial (w, b), final (w, b), the finished Simulation).
  """
  config = SimulationConfig(num_rounds=num_rounds,
                            clients_per_round=clients_per_round,
                            batch_size=3, local_epochs=local_epochs,
                            eval_every=0, loop=loop,
                            participation=participation, progress=False)
  sim = Simulation(algorithm, model(), dataset(local_test), config)
  init = as_numpy(algorithm.server_params(sim.server_state))
  sim.run()
  return init, as_numpy(algorithm.server_params(sim.server_state)), sim


def flat(w: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(kernel, bias) as one flat float64 vector theta."""
  return np.concatenate([np.ravel(w), b])


def flat_grad(theta: np.ndarray, client: int) -> np.ndarray:
  """`grad` at the flat vector theta, flat."""
  return flat(*grad(theta[:6].reshape(3, 2), theta[6:], client))


def per_client_flat(stacked) -> list[np.ndarray]:
  """The store's `[N, ...]` params-shaped leaves as N flat vectors."""
  kernel, bias = as_numpy(stacked)
  return [flat(kernel[i], bias[i]) for i in range(NUM_CLIENTS)]


def np_fedavg(x: np.ndarray, *, lr: float, rounds: int, epochs: int,
              cohort_size: int, lr_decay: float = 1.0,
              weight_decay: float = 0.0,
              server_lr: float = 1.0) -> np.ndarray:
  """Uniformly averaged FedAvg on the flat vector x, in float64: the
  baseline that shows an algorithm's own ingredient mattered."""
  for t in range(rounds):
    eta = lr * lr_decay**t
    models = []
    for i in cohort(t, cohort_size):
      y = x.copy()
      for _ in range(epochs):
        y = y - eta * (flat_grad(y, i) + weight_decay * y)
      models.append(y)
    x = x + server_lr * (np.mean(models, axis=0) - x)
  return x


def personal_flat(algorithm, sim, client: int | None) -> np.ndarray:
  """The personal model of client `client` after `sim` (None: of a client
  that never trained), flat, for an algorithm that needs no training
  batches to find it."""
  if client is None:
    state = algorithm.client_state_init(
        algorithm.server_params(sim.server_state))
  else:
    state = jax.tree.map(lambda leaf: leaf[client], sim.store.stacked)
  no_data = Batch(x=np.zeros((0, 3, 3), np.float32),
                  y=np.zeros((0, 3), np.int32),
                  mask=np.zeros((0, 3), np.float32))
  params = algorithm.personalization.personal_params(
      sim.server_state, state, no_data, jax.random.key(0))
  return flat(*as_numpy(params))


def cohort(t: int, cohort_size: int, participation: str = 'fixed'):
  """Round t's cohort as the engine samples it with seed 0."""
  if participation == 'bernoulli':
    return sampling.sample_bernoulli(0, t, NUM_CLIENTS,
                                     cohort_size / NUM_CLIENTS)
  return sampling.sample_clients(0, t, NUM_CLIENTS, cohort_size)
