"""FedSAM and FedASAM through the whole engine against a numpy re-statement
of the local SAM step (Foret et al. 2021; Qu et al. 2022; Caldarola et al.
2022) and ASAM's adaptive ascent (Kwon et al. 2021)."""

import numpy as np
import optax
import pytest

from algorithms.fedsam import fedasam, fedsam
from fedjax_core.toolkit.local_sgd import LocalSGD
import tiny_problem as tiny

LR = 0.5
RHO = 0.3
ETA = 0.05
ROUNDS = 2


def _np_sam_grad(yw, yb, client, rho, adaptive, eta):
  """The gradient at the SAM (or ASAM) ascent point, from the formulas."""
  gw, gb = tiny.grad(yw, yb, client)
  if rho == 0:
    return gw, gb
  if adaptive:
    tw, tb = np.abs(yw) + eta, np.abs(yb) + eta
  else:
    tw, tb = np.ones_like(yw), np.ones_like(yb)
  norm = np.sqrt(np.sum((tw * gw)**2) + np.sum((tb * gb)**2))
  ew = rho * tw * tw * gw / (norm + 1e-12)
  eb = rho * tb * tb * gb / (norm + 1e-12)
  return tiny.grad(yw + ew, yb + eb, client)


def _np_fedsam(w, b, epochs, rho=RHO, adaptive=False, eta=0.0, lr_decay=1.0,
               weight_decay=0.0, server_lr=1.0):
  for t in range(ROUNDS):
    lr = LR * lr_decay**t
    models = []
    for client in range(tiny.NUM_CLIENTS):
      yw, yb = w.copy(), b.copy()
      for _ in range(epochs):
        gw, gb = _np_sam_grad(yw, yb, client, rho, adaptive, eta)
        yw = yw - lr * (gw + weight_decay * yw)
        yb = yb - lr * (gb + weight_decay * yb)
      models.append((yw, yb))
    w = w + server_lr * (np.mean([m[0] for m in models], axis=0) - w)
    b = b + server_lr * (np.mean([m[1] for m in models], axis=0) - b)
  return w, b


@pytest.mark.parametrize(
    'adaptive, epochs, lr_decay, weight_decay, server_lr',
    [(False, 2, 1.0, 0.0, 1.0),
     (False, 3, 0.5, 0.1, 0.7),
     (True, 2, 1.0, 0.0, 1.0),
     (True, 3, 0.5, 0.1, 1.0)])
def test_matches_numpy_restatement(adaptive, epochs, lr_decay, weight_decay,
                                   server_lr):
  model = tiny.model()
  local_sgd = LocalSGD(LR, lr_decay=lr_decay, weight_decay=weight_decay)
  if adaptive:
    algorithm = fedasam(model.apply, local_sgd, optax.sgd(server_lr),
                        rho=RHO, eta=ETA)
  else:
    algorithm = fedsam(model.apply, local_sgd, optax.sgd(server_lr), rho=RHO)
  (w0, b0), (w, b), _ = tiny.run(algorithm, ROUNDS, local_epochs=epochs)
  kwargs = dict(adaptive=adaptive, eta=ETA, lr_decay=lr_decay,
                weight_decay=weight_decay, server_lr=server_lr)
  want_w, want_b = _np_fedsam(w0, b0, epochs, **kwargs)
  np.testing.assert_allclose(w, want_w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(b, want_b, rtol=1e-5, atol=1e-6)
  # The ascent step mattered: plain FedAvg lands elsewhere ...
  fedavg_w, _ = _np_fedsam(w0, b0, epochs, rho=0.0, **kwargs)
  assert not np.allclose(w, fedavg_w, rtol=1e-3, atol=1e-4)
  # ... and so did the choice between SAM's and ASAM's ascent.
  other_w, _ = _np_fedsam(w0, b0, epochs,
                          **{**kwargs, 'adaptive': not adaptive})
  assert not np.allclose(w, other_w, rtol=1e-3, atol=1e-4)


def test_reports_update_norms():
  model = tiny.model()
  algorithm = fedsam(model.apply, LocalSGD(LR), optax.sgd(1.0), rho=RHO)
  (w0, b0), (w, b), sim = tiny.run(algorithm, 1)
  record = sim.history[0]
  np.testing.assert_allclose(
      record['server_update_norm'],
      np.sqrt(np.sum((w - w0)**2) + np.sum((b - b0)**2)), rtol=1e-5)
  assert record['delta_norm'] >= record['server_update_norm'] > 0


@pytest.mark.parametrize('factory, kwargs, name', [
    (fedsam, {'rho': 0.0}, 'rho'),
    (fedsam, {'rho': -0.1}, 'rho'),
    (fedasam, {'rho': 0.0}, 'rho'),
    (fedasam, {'eta': -0.01}, 'eta'),
])
def test_bad_hyperparameters_are_errors(factory, kwargs, name):
  with pytest.raises(ValueError, match=name):
    factory(tiny.model().apply, LocalSGD(0.1), optax.sgd(1.0), **kwargs)
