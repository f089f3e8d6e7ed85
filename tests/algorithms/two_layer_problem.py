"""A tiny two-layer federated problem with exact numpy gradients, for the
algorithms that split a model into a body and a head.

Three clients (4, 2 and 3 training examples, one held-out row each) of 3
features and 2 classes. The model
is `Dense_0` (3 -> 2, tanh), the body, then `Dense_1` (2 -> 2), the head.
Params on the numpy side are float64 nested dicts shaped like flax's,
`{'params': {'Dense_0': {'kernel', 'bias'}, 'Dense_1': {...}}}`; a local
step is a list of training rows (empty for an all-padding step). The
rows of every round are the engine's own (`batches`), so minibatches,
several epochs and padded steps are restated exactly.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_core import FederatedDataset, Simulation, SimulationConfig
from fedjax_core.algorithm import Batch
from fedjax_core.data import sampling
from fedjax_core.data.client_indices import ClientIndices
from fedjax_core.engine import batching
import models

X = np.array([[1.0, 0.5, -1.0], [0.2, -0.3, 0.8], [-1.5, 1.0, 0.1],
              [0.3, -1.2, 0.5], [0.7, 0.7, 0.7], [-0.4, 2.0, -0.6],
              [1.1, -0.8, 0.2], [-0.9, -0.5, 1.3], [0.4, 1.6, -1.1],
              [0.5, 0.1, -0.2], [-1.0, 0.3, 0.9], [0.6, -0.4, 0.0]],
             np.float32)
Y = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 0, 1, 1], np.int32)
CLIENTS = (np.arange(0, 4), np.arange(4, 6), np.arange(6, 9))
# Each client's held-out row (rows of X), for the engine's personal
# evaluation.
HELD_OUT = (np.array([9]), np.array([10]), np.array([11]))
NUM_CLIENTS = len(CLIENTS)
BODY = ('Dense_0',)
HEAD = ('Dense_1',)
ALL = BODY + HEAD
HEAD_PATTERN = '^params/Dense_1/'
BODY_PATTERN = '^params/Dense_0/'


class TwoLayer(nn.Module):
  """`Dense_1(tanh(Dense_0(x)))` with 2 hidden units and 2 classes."""

  @nn.compact
  def __call__(self, x):
    hidden = jnp.tanh(nn.Dense(2)(x))
    return nn.Dense(2)(hidden)


def model() -> models.Model:
  module = TwoLayer()
  return models.Model(
      init=lambda rng: module.init(rng, jnp.zeros((1, 3), jnp.float32)),
      apply=module.apply)


def dataset() -> FederatedDataset:
  return FederatedDataset(name='two_layer', train_x=X, train_y=Y,
                          client_indices=CLIENTS, test_x=X, test_y=Y,
                          num_classes=2,
                          local_test_indices=ClientIndices.from_lists(
                              HELD_OUT))


def config(num_rounds: int, *, clients_per_round: int = 2,
           batch_size: int = 2, local_epochs: int = 1) -> SimulationConfig:
  return SimulationConfig(num_rounds=num_rounds,
                          clients_per_round=clients_per_round,
                          batch_size=batch_size, local_epochs=local_epochs,
                          eval_every=0, loop='scan', progress=False)


def run(algorithm, cfg: SimulationConfig):
  """Runs `algorithm`; returns the initial params (numpy, from
  `full_params`, else `server_params`) and the finished Simulation."""
  sim = Simulation(algorithm, model(), dataset(), cfg)
  init = as_numpy(algorithm.evaluated_params(sim.server_state))
  sim.run()
  return init, sim


def cohort(t: int, cfg: SimulationConfig) -> np.ndarray:
  """Round t's cohort as the engine samples it (fixed participation)."""
  return sampling.sample_clients(cfg.seed, t, NUM_CLIENTS,
                                 cfg.clients_per_round)


def batches(t: int, cfg: SimulationConfig) -> dict[int, list[np.ndarray]]:
  """Client id -> its rows of each local step of round t (the engine's
  shuffles and padding; an empty array for an all-padding step)."""
  ids = cohort(t, cfg)
  work = batching.LocalWork(
      dataset().client_indices, seed=cfg.seed,
      batch_size=cfg.batch_size, local_epochs=cfg.local_epochs,
      local_steps=None, cohort_size=cfg.clients_per_round,
      size_buckets=cfg.size_buckets)
  got = work.batches(ids, t)
  return {int(cid): [rows[mask > 0] for rows, mask
                     in zip(got.indices[slot], got.mask[slot])]
          for slot, cid in enumerate(ids)}


def as_numpy(params):
  """A params tree as float64 numpy arrays."""
  return jax.tree.map(lambda a: np.array(a, np.float64), params)


def row(stacked, i: int):
  """Client i's row of a stacked `[num_clients, ...]` tree, as numpy."""
  return jax.tree.map(lambda a: np.array(a[i], np.float64), stacked)


def layers(p, names):
  """The layers `names` of `p`, as a params tree of them only."""
  return {'params': {n: p['params'][n] for n in names}}


def merge(*parts):
  """One params tree from trees of disjoint layers."""
  return {'params': {n: v for part in parts
                     for n, v in part['params'].items()}}


def _forward(p, x):
  d0, d1 = p['params']['Dense_0'], p['params']['Dense_1']
  h = np.tanh(x @ d0['kernel'] + d0['bias'])
  return h, h @ d1['kernel'] + d1['bias']


def loss(p, rows: np.ndarray) -> float:
  """Mean softmax cross-entropy on `rows`, in float64."""
  _, z = _forward(p, X[rows].astype(np.float64))
  z = z - z.max(axis=1, keepdims=True)
  log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  return float(-log_p[np.arange(len(rows)), Y[rows]].mean())


def grad(p, rows: np.ndarray):
  """Gradient of `loss` with respect to every leaf of `p` (zeros for no
  rows, as the engine's masked mean)."""
  x = X[rows].astype(np.float64)
  h, z = _forward(p, x)
  prob = np.exp(z - z.max(axis=1, keepdims=True))
  prob /= prob.sum(axis=1, keepdims=True)
  d = (prob - np.eye(2)[Y[rows]]) / max(len(rows), 1)
  dpre = (d @ p['params']['Dense_1']['kernel'].T) * (1 - h**2)
  return {'params': {
      'Dense_0': {'kernel': x.T @ dpre, 'bias': dpre.sum(axis=0)},
      'Dense_1': {'kernel': h.T @ d, 'bias': d.sum(axis=0)}}}


def sgd_step(p, rows: np.ndarray, lr: float, trainable=ALL,
             weight_decay: float = 0.0):
  """One local SGD step (coupled weight decay) of the `trainable` layers."""
  g = grad(p, rows)
  out = {'params': dict(p['params'])}
  for name in trainable:
    out['params'][name] = {
        k: v - lr * (g['params'][name][k] + weight_decay * v)
        for k, v in p['params'][name].items()}
  return out


def local_sgd(p, steps: list[np.ndarray], lr: float, trainable=ALL,
              weight_decay: float = 0.0):
  """SGD over a client's steps; all-padding steps are skipped."""
  for rows in steps:
    if len(rows):
      p = sgd_step(p, rows, lr, trainable, weight_decay)
  return p


def add(p, q, scale: float = 1.0):
  """`p + scale * q` of two trees of the same layers."""
  return jax.tree.map(lambda a, b: a + scale * b, p, q)


def weighted_mean(trees: list, weights: list[float]):
  w = np.asarray(weights, np.float64) / np.sum(weights)
  return jax.tree.map(lambda *xs: sum(wi * x for wi, x in zip(w, xs)),
                      *trees)


def np_fedavg(p, cfg: SimulationConfig, *, lr: float, lr_decay: float = 1.0,
              weighted: bool = True, weight_decay: float = 0.0):
  """FedAvg with local SGD and server SGD(1) over `cfg.num_rounds` rounds,
  in float64: the baseline that shows an algorithm's ingredient mattered."""
  for t in range(cfg.num_rounds):
    models, weights = [], []
    for steps in batches(t, cfg).values():
      models.append(local_sgd(p, steps, lr * lr_decay**t,
                              weight_decay=weight_decay))
      weights.append(sum(map(len, steps)) if weighted else 1.0)
    p = weighted_mean(models, weights)
  return p


def eval_batch(client: int, num_steps: int) -> tuple[Batch, list]:
  """`num_steps` batches of all of client's rows (padded to 4, the largest
  client), the last one all padding, as `Personalization.personal_params`
  receives them; and the rows of each step for numpy."""
  rows = CLIENTS[client]
  steps = [rows] * (num_steps - 1) + [rows[:0]]
  idx = np.zeros((num_steps, 4), np.int32)
  mask = np.zeros((num_steps, 4), np.float32)
  for s, r in enumerate(steps):
    idx[s, :len(r)] = r
    mask[s, :len(r)] = 1.0
  return Batch(x=jnp.asarray(X[idx]), y=jnp.asarray(Y[idx]),
               mask=jnp.asarray(mask)), steps


def stack(*trees):
  """Trees stacked along a new leading axis."""
  return jax.tree.map(lambda *xs: jnp.stack([jnp.asarray(x) for x in xs]),
                      *trees)


def assert_close(got, want):
  """Every leaf of `got` (any arrays) matches `want` (numpy, float64)."""
  jax.tree.map(lambda g, w: np.testing.assert_allclose(
      np.asarray(g, np.float64), w, rtol=1e-5, atol=1e-6), got, want)
