"""FedProx through the whole engine against a numpy re-statement of Li et
al. 2020's local update `y <- y - eta (g(y) + mu (y - x))`."""

import numpy as np
import optax
import pytest

from algorithms.fedprox import fedprox
from fedjax_core.toolkit.local_sgd import LocalSGD
import tiny_problem as tiny

LR = 0.4
MU = 0.7
ROUNDS = 2
EPOCHS = 3


def _np_fedprox(w, b, lr_decay=1.0, weight_decay=0.0, mu=MU):
  for t in range(ROUNDS):
    eta = LR * lr_decay**t
    models = []
    for client in range(tiny.NUM_CLIENTS):
      yw, yb = w.copy(), b.copy()
      for _ in range(EPOCHS):
        gw, gb = tiny.grad(yw, yb, client)
        dw = gw + mu * (yw - w) + weight_decay * yw
        db = gb + mu * (yb - b) + weight_decay * yb
        yw, yb = yw - eta * dw, yb - eta * db
      models.append((yw, yb))
    w = np.mean([m[0] for m in models], axis=0)
    b = np.mean([m[1] for m in models], axis=0)
  return w, b


@pytest.mark.parametrize('lr_decay, weight_decay', [(1.0, 0.0), (0.5, 0.1)])
def test_matches_numpy_restatement(lr_decay, weight_decay):
  model = tiny.model()
  algorithm = fedprox(model.apply,
                      LocalSGD(LR, lr_decay=lr_decay,
                               weight_decay=weight_decay),
                      optax.sgd(1.0), mu=MU)
  (w0, b0), (w, b), _ = tiny.run(algorithm, ROUNDS, local_epochs=EPOCHS)
  want_w, want_b = _np_fedprox(w0, b0, lr_decay, weight_decay)
  np.testing.assert_allclose(w, want_w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(b, want_b, rtol=1e-5, atol=1e-6)
  fedavg_w, _ = _np_fedprox(w0, b0, lr_decay, weight_decay, mu=0.0)
  assert not np.allclose(w, fedavg_w, rtol=1e-3)  # The prox term mattered.


def test_negative_mu_is_an_error():
  with pytest.raises(ValueError, match='mu >= 0'):
    fedprox(tiny.model().apply, LocalSGD(0.1), optax.sgd(1.0), mu=-1.0)
