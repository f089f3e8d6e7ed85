"""FedCM and MoFedSAM through the whole engine against a numpy re-statement
of client-level momentum (Xu et al. 2021): local steps on `beta g + (1 - beta)
Delta`, with Delta the cohort's mean `(x - y_K) / (K eta_t)` of the previous
round, and MoFedSAM's SAM gradient (Qu et al. 2022) in place of g."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from algorithms.fedcm import fedcm, mofedsam
from fedjax_core import Batch, ClientInfo, sample_clients
from fedjax_core.toolkit.local_sgd import LocalSGD
import tiny_problem as tiny

LR = 0.5
BETA = 0.3
RHO = 0.3


def _np_grad(yw, yb, client, rho):
  """The plain gradient (rho = 0) or SAM's, from Foret et al.'s formula."""
  gw, gb = tiny.grad(yw, yb, client)
  if rho == 0:
    return gw, gb
  norm = np.sqrt(np.sum(gw**2) + np.sum(gb**2))
  return tiny.grad(yw + rho * gw / (norm + 1e-12),
                   yb + rho * gb / (norm + 1e-12), client)


def _np_fedcm(w, b, rounds, epochs, beta=BETA, rho=0.0, lr_decay=1.0,
              weight_decay=0.0, server_lr=1.0, clients_per_round=2):
  """Returns the final (w, b) and the final server momentum (mw, mb)."""
  mw, mb = np.zeros_like(w), np.zeros_like(b)
  for t in range(rounds):
    lr = LR * lr_decay**t
    if clients_per_round == tiny.NUM_CLIENTS:
      cohort = range(tiny.NUM_CLIENTS)
    else:
      cohort = sample_clients(0, t, tiny.NUM_CLIENTS, clients_per_round)
    deltas, pseudo_grads = [], []
    for client in cohort:
      yw, yb = w.copy(), b.copy()
      for _ in range(epochs):  # One full-batch step an epoch: K = epochs.
        gw, gb = _np_grad(yw, yb, client, rho)
        dw = beta * gw + (1 - beta) * mw + weight_decay * yw
        db = beta * gb + (1 - beta) * mb + weight_decay * yb
        yw, yb = yw - lr * dw, yb - lr * db
      deltas.append((yw - w, yb - b))
      pseudo_grads.append(((w - yw) / (epochs * lr), (b - yb) / (epochs * lr)))
    w = w + server_lr * np.mean([d[0] for d in deltas], axis=0)
    b = b + server_lr * np.mean([d[1] for d in deltas], axis=0)
    mw = np.mean([p[0] for p in pseudo_grads], axis=0)
    mb = np.mean([p[1] for p in pseudo_grads], axis=0)
  return (w, b), (mw, mb)


@pytest.mark.parametrize(
    'sam, rounds, epochs, lr_decay, weight_decay, server_lr, clients', [
        (False, 2, 2, 1.0, 0.0, 1.0, 2),
        (False, 3, 3, 0.5, 0.1, 0.6, 2),
        # Rounds 0-3 sample client 1 alone, round 4 client 0.
        (False, 5, 2, 0.5, 0.0, 1.0, 1),
        (True, 2, 2, 1.0, 0.0, 1.0, 2),
        (True, 3, 3, 0.5, 0.1, 1.0, 1),
    ])
def test_matches_numpy_restatement(sam, rounds, epochs, lr_decay,
                                   weight_decay, server_lr, clients):
  model = tiny.model()
  local_sgd = LocalSGD(LR, lr_decay=lr_decay, weight_decay=weight_decay)
  if sam:
    algorithm = mofedsam(model.apply, local_sgd, optax.sgd(server_lr),
                         beta=BETA, rho=RHO)
  else:
    algorithm = fedcm(model.apply, local_sgd, optax.sgd(server_lr),
                      beta=BETA)
  (w0, b0), (w, b), sim = tiny.run(algorithm, rounds, local_epochs=epochs,
                                   clients_per_round=clients)
  kwargs = dict(rho=RHO if sam else 0.0, lr_decay=lr_decay,
                weight_decay=weight_decay, server_lr=server_lr,
                clients_per_round=clients)
  (want_w, want_b), (mw, mb) = _np_fedcm(w0, b0, rounds, epochs, **kwargs)
  np.testing.assert_allclose(w, want_w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(b, want_b, rtol=1e-5, atol=1e-6)
  momentum = sim.server_state.momentum['params']['Dense_0']
  np.testing.assert_allclose(momentum['kernel'], mw, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(momentum['bias'], mb, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sim.history[-1]['momentum_norm'],
                             np.sqrt(np.sum(mw**2) + np.sum(mb**2)),
                             rtol=1e-5)
  # The momentum mattered: FedAvg (beta = 1) lands elsewhere ...
  (fedavg_w, _), _ = _np_fedcm(w0, b0, rounds, epochs, beta=1.0, **kwargs)
  assert not np.allclose(w, fedavg_w, rtol=1e-3, atol=1e-4)
  # ... and so did the SAM gradient, or its absence.
  other = {**kwargs, 'rho': 0.0 if sam else RHO}
  (other_w, _), _ = _np_fedcm(w0, b0, rounds, epochs, **other)
  assert not np.allclose(w, other_w, rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize('num_steps', [1, 4])
def test_momentum_divides_by_the_clients_own_step_count(num_steps):
  """Delta's per-client `K_i` is `ClientInfo.num_steps`, not the number of
  local steps the engine ran (padding steps included)."""
  model = tiny.model()
  lr, decay = 0.3, 0.5
  algorithm = fedcm(model.apply, LocalSGD(lr, lr_decay=decay),
                    optax.sgd(1.0), beta=BETA)
  server_state = algorithm.server_init(model.init(jax.random.key(0)), None)
  server_state = server_state.replace(
      model=server_state.model.replace(round_num=jnp.int32(2)))
  local = algorithm.client_init(server_state, (), None)
  rows = tiny.CLIENTS[0]
  batch = Batch(x=jnp.asarray(tiny.X[rows]), y=jnp.asarray(tiny.Y[rows]),
                mask=jnp.ones(len(rows), jnp.float32))
  for _ in range(2):
    local, _ = algorithm.local_step(local, batch, None)
  output = algorithm.client_final(
      server_state, (), local,
      ClientInfo(num_examples=jnp.float32(6.0),
                 num_steps=jnp.int32(num_steps)))
  eta = lr * decay**2
  jax.tree.map(
      lambda d, g: np.testing.assert_allclose(g, -d / (num_steps * eta),
                                              rtol=1e-6),
      output.message.delta, output.message.pseudo_gradient)
  assert float(output.metrics['delta_norm']) > 0


def test_client_without_steps_sends_a_finite_message():
  model = tiny.model()
  algorithm = fedcm(model.apply, LocalSGD(0.1), optax.sgd(1.0))
  server_state = algorithm.server_init(model.init(jax.random.key(0)), None)
  local = algorithm.client_init(server_state, (), None)
  output = algorithm.client_final(
      server_state, (), local,
      ClientInfo(num_examples=jnp.float32(0.0), num_steps=jnp.int32(0)))
  for leaf in jax.tree.leaves(output.message):
    assert np.all(np.asarray(leaf) == 0)


@pytest.mark.parametrize('factory, kwargs, name', [
    (fedcm, {'beta': 0.0}, 'beta'),
    (fedcm, {'beta': 1.5}, 'beta'),
    (mofedsam, {'beta': -0.1}, 'beta'),
    (mofedsam, {'rho': 0.0}, 'rho'),
])
def test_bad_hyperparameters_are_errors(factory, kwargs, name):
  with pytest.raises(ValueError, match=name):
    factory(tiny.model().apply, LocalSGD(0.1), optax.sgd(1.0), **kwargs)
