"""FedAvg and FedOpt through the whole engine against a numpy re-statement.

Two clients (3 and 2 examples) train logistic regression; the batch size (3)
covers each client, so every local step is full-batch gradient descent and
the result does not depend on shuffling. The numpy side re-states McMahan et
al. 2017 (clients) and Reddi et al. 2021, Algorithm 2 (server) in float64.
"""

import numpy as np
import pytest

from algorithms import build_algorithm, fedavg
from fedjax_core import FederatedDataset, Simulation, SimulationConfig
from fedjax_core.toolkit import optimizers
import models
import tiny_problem as tiny

X = np.array([[1.0, 0.5, -1.0], [0.2, -0.3, 0.8], [-1.5, 1.0, 0.1],
              [0.7, 0.7, 0.7], [-0.4, 2.0, -0.6]], np.float32)
Y = np.array([0, 1, 1, 0, 1], np.int32)
CLIENTS = (np.array([0, 1, 2]), np.array([3, 4]))
CLIENT_LR = 0.3
LOCAL_EPOCHS = 2
NUM_ROUNDS = 3
TAU = 0.05  # Large enough that tau's placement changes the result.


def _dataset():
  return FederatedDataset(name='tiny', train_x=X, train_y=Y,
                          client_indices=CLIENTS, test_x=X, test_y=Y,
                          num_classes=2)


def _np_grad(w, b, x, y):
  """Gradient of the mean softmax cross-entropy of logits x @ w + b."""
  z = x @ w + b
  p = np.exp(z - z.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  d = (p - np.eye(2)[y]) / len(y)
  return x.T @ d, d.sum(axis=0)


def _np_fedopt(w, b, server, server_lr, weighted, momentum=0.9, b1=0.9,
               b2=0.99):
  """NUM_ROUNDS rounds of FedOpt on both clients, in float64."""
  x_all, y_all = X.astype(np.float64), Y
  params = [w.astype(np.float64), b.astype(np.float64)]
  m = [np.zeros_like(p) for p in params]  # momentum or first moment
  v = [np.full_like(p, TAU**2) for p in params]
  for _ in range(NUM_ROUNDS):
    deltas, weights = [], []
    for rows in CLIENTS:
      yw, yb = params[0].copy(), params[1].copy()
      for _ in range(LOCAL_EPOCHS):
        gw, gb = _np_grad(yw, yb, x_all[rows], y_all[rows])
        yw, yb = yw - CLIENT_LR * gw, yb - CLIENT_LR * gb
      deltas.append([yw - params[0], yb - params[1]])  # Delta_i = y_i - x
      weights.append(len(rows) if weighted else 1.0)
    weights = np.array(weights) / np.sum(weights)
    mean_delta = [sum(wt * d[k] for wt, d in zip(weights, deltas))
                  for k in range(2)]
    for k, delta in enumerate(mean_delta):
      if server == 'sgd':
        params[k] = params[k] + server_lr * delta
      elif server == 'momentum':  # optax trace: m <- g + mu m, g = -Delta.
        m[k] = -delta + momentum * m[k]
        params[k] = params[k] - server_lr * m[k]
      else:  # Reddi et al. 2021, Algorithm 2.
        m[k] = b1 * m[k] + (1 - b1) * delta
        sq = delta * delta
        if server == 'adagrad':
          v[k] = v[k] + sq
        elif server == 'yogi':
          v[k] = v[k] - (1 - b2) * sq * np.sign(v[k] - sq)
        else:
          v[k] = b2 * v[k] + (1 - b2) * sq
        params[k] = params[k] + server_lr * m[k] / (np.sqrt(v[k]) + TAU)
  return params


def _engine(server, server_lr, weighted, loop='scan'):
  model = models.get_model('logreg', (3,), 2)
  algorithm = fedavg(
      model.apply, optimizers.client_optimizer('sgd', CLIENT_LR),
      optimizers.server_optimizer(server, server_lr, tau=TAU),
      weighted=weighted)
  config = SimulationConfig(num_rounds=NUM_ROUNDS, clients_per_round=2,
                            batch_size=3, local_epochs=LOCAL_EPOCHS,
                            eval_every=0, loop=loop,
                            progress=False)
  sim = Simulation(algorithm, model, _dataset(), config)
  dense = algorithm.server_params(sim.server_state)['params']['Dense_0']
  init = (np.asarray(dense['kernel']), np.asarray(dense['bias']))
  sim.run()
  dense = algorithm.server_params(sim.server_state)['params']['Dense_0']
  return init, (np.asarray(dense['kernel']), np.asarray(dense['bias']))


@pytest.mark.parametrize('server, server_lr, weighted', [
    ('sgd', 1.0, True),        # FedAvg
    ('sgd', 1.0, False),       # FedAvg, clients weighted equally
    ('sgd', 0.5, True),        # FedAvg with a server learning rate
    ('momentum', 0.7, True),   # FedAvgM
    ('adagrad', 0.1, True),    # FedAdagrad
    ('yogi', 0.1, True),       # FedYogi
    ('adam', 0.1, True),       # FedAdam
])
def test_matches_numpy_restatement(server, server_lr, weighted):
  (w0, b0), (w, b) = _engine(server, server_lr, weighted)
  want_w, want_b = _np_fedopt(w0, b0, server, server_lr, weighted)
  np.testing.assert_allclose(w, want_w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(b, want_b, rtol=1e-5, atol=1e-6)
  assert not np.allclose(w, w0)  # The model did move.


def test_unrolled_loop_gives_the_same_model():
  _, (w_scan, b_scan) = _engine('adam', 0.1, True, loop='scan')
  _, (w_unroll, b_unroll) = _engine('adam', 0.1, True, loop='unroll')
  np.testing.assert_allclose(w_unroll, w_scan, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(b_unroll, b_scan, rtol=1e-6, atol=1e-7)


def test_one_full_batch_step_is_centralized_gradient_descent():
  """FedAvg with one local full-batch step each and server lr 1 equals one
  step of gradient descent on the union of the clients' data (a classic
  identity: the example-weighted mean of client gradients is the full
  gradient)."""
  model = models.get_model('logreg', (3,), 2)
  algorithm = fedavg(model.apply, optimizers.client_optimizer('sgd', 0.3),
                     optimizers.server_optimizer('sgd', 1.0))
  config = SimulationConfig(num_rounds=1, clients_per_round=2, batch_size=3,
                            local_steps=1, eval_every=0, progress=False)
  sim = Simulation(algorithm, model, _dataset(), config)
  dense = sim.server_state.params['params']['Dense_0']
  w0, b0 = np.asarray(dense['kernel']), np.asarray(dense['bias'])
  sim.run()
  dense = sim.server_state.params['params']['Dense_0']
  gw, gb = _np_grad(w0.astype(np.float64), b0.astype(np.float64),
                    X.astype(np.float64), Y)
  np.testing.assert_allclose(dense['kernel'], w0 - 0.3 * gw, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(dense['bias'], b0 - 0.3 * gb, rtol=1e-5,
                             atol=1e-6)


def test_client_lr_decay_weight_decay_and_clipping_match_numpy():
  """build_algorithm's FedAvg with FL-Simulator's client options: lr * 0.5^t,
  gradients clipped to norm 0.3, then coupled weight decay 0.1."""
  algorithm = build_algorithm('fedavg', tiny.model().apply, num_clients=2,
                              client_lr=0.4, client_lr_decay=0.5,
                              weight_decay=0.1, max_grad_norm=0.3)
  (w, b), (got_w, got_b), _ = tiny.run(algorithm, num_rounds=2)
  for t in range(2):
    models_, weights = [], []
    for client, rows in enumerate(tiny.CLIENTS):
      yw, yb = w.copy(), b.copy()
      for _ in range(2):
        gw, gb = tiny.grad(yw, yb, client)
        scale = min(1.0, 0.3 / np.sqrt(np.sum(gw**2) + np.sum(gb**2)))
        yw = yw - 0.4 * 0.5**t * (scale * gw + 0.1 * yw)
        yb = yb - 0.4 * 0.5**t * (scale * gb + 0.1 * yb)
      models_.append((yw, yb))
      weights.append(len(rows))
    weights = np.array(weights) / np.sum(weights)
    w = sum(wt * m[0] for wt, m in zip(weights, models_))
    b = sum(wt * m[1] for wt, m in zip(weights, models_))
  np.testing.assert_allclose(got_w, w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_b, b, rtol=1e-5, atol=1e-6)
