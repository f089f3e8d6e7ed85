"""Per-FedAvg (FO and HF) through the whole engine against a numpy
re-statement of Fallah et al. 2020's local step on the engine's batches cut
into 2 or 3 contiguous parts, and its personal model (SGD steps of size
alpha from the global model)."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from algorithms.per_fedavg import per_fedavg_fo, per_fedavg_hf
from fedjax_core import Batch, FederatedDataset, Simulation, SimulationConfig
from fedjax_core.data import sampling
from fedjax_core.data.client_indices import ClientIndices
from fedjax_core.engine import batching
from fedjax_core.errors import SettingError
from fedjax_core.toolkit.local_sgd import LocalSGD
import tiny_problem as tiny

BETA = 0.5
ALPHA = 0.3
DELTA = 0.05  # Large enough for float32's finite difference to match.
ROUNDS = 2
EPOCHS = 2
_RNG = np.random.default_rng(7)
X = _RNG.normal(size=(18, 3)).astype(np.float32)
Y = _RNG.integers(0, 2, size=18).astype(np.int32)
CLIENTS = (np.arange(0, 6), np.arange(6, 11), np.arange(11, 15))
LOCAL_TEST = ([15], [16], [17])  # Each client's held-out rows.


def _dataset():
  return FederatedDataset(name='tiny3', train_x=X, train_y=Y,
                          client_indices=CLIENTS, test_x=X, test_y=Y,
                          num_classes=2,
                          local_test_indices=ClientIndices.from_lists(
                              LOCAL_TEST))


def _np_grad(theta, rows):
  """Gradient of the mean cross-entropy over `rows` (0 if none), flat."""
  if len(rows) == 0:
    return np.zeros_like(theta)
  w, b = theta[:6].reshape(3, 2), theta[6:]
  x = X[rows].astype(np.float64)
  z = x @ w + b
  p = np.exp(z - z.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  d = (p - np.eye(2)[Y[rows]]) / len(rows)
  return tiny.flat(x.T @ d, d.sum(axis=0))


def _np_hessian(theta, rows):
  """The exact Hessian of the mean cross-entropy over `rows`, flat."""
  w, b = theta[:6].reshape(3, 2), theta[6:]
  hessian = np.zeros((8, 8))
  for row in rows:
    x = X[row].astype(np.float64)
    z = x @ w + b
    p = np.exp(z - z.max())
    p /= p.sum()
    jac = np.concatenate([np.kron(x[None], np.eye(2)), np.eye(2)], axis=1)
    hessian += jac.T @ (np.diag(p) - np.outer(p, p)) @ jac / len(rows)
  return hessian


def _np_hvp(theta, rows, u, delta):
  """The paper's finite-difference estimate of `H(theta; rows) u`."""
  return (_np_grad(theta + delta * u, rows) -
          _np_grad(theta - delta * u, rows)) / (2 * delta)


def _parts(rows, batch_size, parts):
  """The real rows of each part: positions `[i B // parts, (i + 1) B //
  parts)` of the batch."""
  bounds = [i * batch_size // parts for i in range(parts + 1)]
  return [rows[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]


def _np_direction(theta, rows, batch_size, variant):
  """Plain SGD's gradient ('fedavg') or Per-FedAvg's meta-gradient on one
  batch (`rows` is the batch's row list with padding dropped, at the
  front)."""
  if variant == 'fedavg':
    return _np_grad(theta, rows)
  parts = _parts(rows, batch_size, 2 if variant == 'fo' else 3)
  tmp = theta - ALPHA * _np_grad(theta, parts[0])
  u = _np_grad(tmp, parts[1])
  if variant == 'fo':
    return u
  return u - ALPHA * _np_hvp(theta, parts[2], u, DELTA)


def _np_run(theta, batch_size, variant):
  """Example-weighted FedAvg of local SGD on `variant`'s direction."""
  indices = _dataset().client_indices
  for t in range(ROUNDS):
    ids = sampling.sample_clients(0, t, 3, 3)
    batches = batching.cohort_batches(
        indices, ids, seed=0, round_num=t, batch_size=batch_size,
        num_steps=8, local_epochs=EPOCHS)
    models, weights = [], []
    for slot in range(len(ids)):
      y = theta.copy()
      for step_rows, step_mask in zip(batches.indices[slot],
                                      batches.mask[slot]):
        rows = step_rows[step_mask > 0]
        if len(rows):
          y = y - BETA * _np_direction(y, rows, batch_size, variant)
      models.append(y)
      weights.append(batches.mask[slot].sum())
    theta = np.average(models, axis=0, weights=weights)
  return theta


def _run(algorithm, batch_size):
  config = SimulationConfig(num_rounds=ROUNDS, clients_per_round=3,
                            batch_size=batch_size, local_epochs=EPOCHS,
                            eval_every=0, progress=False)
  sim = Simulation(algorithm, tiny.model(), _dataset(), config)
  theta0 = tiny.flat(*tiny.as_numpy(algorithm.server_params(
      sim.server_state)))
  sim.run()
  return theta0, sim


def _flat_params(params):
  return tiny.flat(*tiny.as_numpy(params))


def _check_personal_params(algorithm, sim, theta):
  """A trained and a never-trained client both get the global model after
  one SGD step of size alpha per batch (the second batch partly padding)."""
  rows = np.array([[0, 3, 4, 9], [12, 1, 0, 0]])
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.float32)
  train = Batch(x=jnp.asarray(X[rows]), y=jnp.asarray(Y[rows]),
                mask=jnp.asarray(mask))
  want = theta
  for step_rows, step_mask in zip(rows, mask):
    want = want - ALPHA * _np_grad(want, step_rows[step_mask > 0])
  personal_params = algorithm.personalization.personal_params
  never_trained = algorithm.client_state_init(
      algorithm.server_params(sim.server_state))
  for client_state in (sim.store.stacked, never_trained):
    got = personal_params(sim.server_state, client_state, train, None)
    np.testing.assert_allclose(_flat_params(got), want, rtol=1e-5,
                               atol=1e-6)
  assert algorithm.personalization.train_steps == 2


def test_fo_matches_numpy_restatement():
  algorithm = per_fedavg_fo(tiny.model().apply, LocalSGD(BETA),
                            optax.sgd(1.0), alpha=ALPHA, finetune_steps=2)
  theta0, sim = _run(algorithm, batch_size=4)
  got = _flat_params(algorithm.server_params(sim.server_state))
  want = _np_run(theta0, 4, 'fo')
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  fedavg = _np_run(theta0, 4, 'fedavg')
  assert not np.allclose(got, fedavg, rtol=1e-3)  # The inner step mattered.
  _check_personal_params(algorithm, sim, want)
  assert 'personal_accuracy_mean' in sim.evaluate()  # The engine's scoring.


def test_hf_matches_numpy_restatement():
  algorithm = per_fedavg_hf(tiny.model().apply, LocalSGD(BETA),
                            optax.sgd(1.0), alpha=ALPHA, finetune_steps=2,
                            delta=DELTA)
  theta0, sim = _run(algorithm, batch_size=5)
  got = _flat_params(algorithm.server_params(sim.server_state))
  want = _np_run(theta0, 5, 'hf')
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  fo = _np_run(theta0, 5, 'fo')
  assert not np.allclose(got, fo, rtol=1e-3)  # The Hessian term mattered.
  _check_personal_params(algorithm, sim, want)


def test_numpy_finite_difference_is_the_hessian_product():
  theta = np.linspace(-1.0, 1.0, 8)
  u = np.cos(np.arange(8.0))
  rows = np.array([0, 5, 7])
  np.testing.assert_allclose(_np_hvp(theta, rows, u, 1e-5),
                             _np_hessian(theta, rows) @ u, rtol=1e-6,
                             atol=1e-9)


@pytest.mark.parametrize('factory, kwargs, setting', [
    (per_fedavg_fo, {'alpha': 0.0}, 'alpha'),
    (per_fedavg_hf, {'alpha': -0.1}, 'alpha'),
    (per_fedavg_hf, {'delta': 0.0}, 'delta'),
    (per_fedavg_fo, {'finetune_steps': -1}, 'finetune_steps'),
    (per_fedavg_fo, {'finetune_steps': 1.5}, 'finetune_steps'),
])
def test_bad_hyperparameters_are_errors(factory, kwargs, setting):
  with pytest.raises(SettingError) as error:
    factory(tiny.model().apply, LocalSGD(0.1), optax.sgd(1.0), **kwargs)
  assert error.value.setting == setting
