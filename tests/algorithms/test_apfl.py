"""APFL through the whole engine against a float64 numpy re-statement of
Deng et al. 2020, Algorithm 1 with its adaptive mixing: per local step,
from the step's w, v and alpha, `w <- w - eta grad f(w)`, `v <- v - eta
alpha grad f(vbar)` and `alpha <- clip(alpha - alpha_lr <v - w,
grad f(vbar)>, 0, 1)`, with `vbar = alpha v + (1 - alpha) w`.

Models are flattened to one vector (kernel then bias) on the numpy side.
"""

import numpy as np
import optax
import pytest

from algorithms.apfl import apfl
from fedjax_core.errors import SettingError
from fedjax_core.toolkit.local_sgd import LocalSGD
import tiny_problem as tiny

LR = 0.4
ALPHA = 0.25
ROUNDS = 2
EPOCHS = 3  # K = 3 full-batch steps per client and round.
N = tiny.NUM_CLIENTS


def _np_apfl(x, alpha=ALPHA, alpha_lr=0.0, lr_decay=1.0, weight_decay=0.0,
             weighted=True, rounds=ROUNDS, cohort_size=N,
             participation='fixed'):
  """Returns the global models x^0 .. x^rounds, the clients' v (None for a
  client that never trained) and their alphas."""
  xs, v, a = [x], [None] * N, [alpha] * N
  for t in range(rounds):
    eta = LR * lr_decay**t
    deltas, weights = [], []
    for i in tiny.cohort(t, cohort_size, participation):
      w, p, al = x.copy(), (x if v[i] is None else v[i]).copy(), a[i]
      for _ in range(EPOCHS):
        g_mixed = tiny.flat_grad(al * p + (1 - al) * w, i)
        alpha_grad = (p - w) @ g_mixed
        w = w - eta * (tiny.flat_grad(w, i) + weight_decay * w)
        p = p - eta * (al * g_mixed + weight_decay * p)
        al = float(np.clip(al - alpha_lr * alpha_grad, 0.0, 1.0))
      v[i], a[i] = p, al
      deltas.append(w - x)
      weights.append(len(tiny.CLIENTS[i]) if weighted else 1.0)
    x = x + np.average(deltas, axis=0, weights=weights)
    xs.append(x)
  return xs, v, a


def _run(alpha=ALPHA, alpha_lr=0.0, lr_decay=1.0, weight_decay=0.0,
         weighted=True, rounds=ROUNDS, clients_per_round=N,
         participation='fixed'):
  """Runs APFL on the tiny problem, each client's training rows also its
  local test rows (a personalized run is scored on them at its end)."""
  algorithm = apfl(tiny.model().apply,
                   LocalSGD(LR, lr_decay=lr_decay, weight_decay=weight_decay),
                   optax.sgd(1.0), weighted=weighted, alpha=alpha,
                   alpha_lr=alpha_lr)
  x0, x, sim = tiny.run(algorithm, rounds, EPOCHS,
                        participation=participation,
                        clients_per_round=clients_per_round, local_test=True)
  return algorithm, tiny.flat(*x0), tiny.flat(*x), sim


def _check(got, want):
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('alpha, alpha_lr, lr_decay, weight_decay, weighted', [
    (ALPHA, 0.0, 1.0, 0.0, True),  # Fixed mixing.
    (0.75, 1.0, 0.5, 0.1, False),  # Adaptive mixing, inside (0, 1).
    (0.9, 1.0, 0.5, 0.1, False)])  # Adaptive mixing, clipped at 1.
def test_matches_numpy_restatement(alpha, alpha_lr, lr_decay, weight_decay,
                                   weighted):
  settings = dict(alpha=alpha, alpha_lr=alpha_lr, lr_decay=lr_decay,
                  weight_decay=weight_decay, weighted=weighted)
  algorithm, x0, x, sim = _run(**settings)
  xs, want_v, want_alpha = _np_apfl(x0, **settings)
  _check(x, xs[-1])
  state = sim.store.stacked
  np.testing.assert_array_equal(state.trained, np.ones(N))
  _check(state.alpha, want_alpha)
  for i in range(N):
    _check(tiny.per_client_flat(state.personal)[i], want_v[i])
    want = want_alpha[i] * want_v[i] + (1 - want_alpha[i]) * x
    _check(tiny.personal_flat(algorithm, sim, i), want)
    assert not np.allclose(want, x, rtol=1e-3)  # Personal != global.
  if alpha_lr == 0:
    np.testing.assert_array_equal(state.alpha, [alpha] * N)
  else:  # The adaptive mixing mattered.
    assert np.all(np.abs(state.alpha - alpha) > 1e-2)
  _check(tiny.personal_flat(algorithm, sim, None), x)


def test_first_round_of_a_client_starts_from_that_rounds_global_model():
  # Bernoulli(1/2) cohorts with seed 0: {1}, {1}, {0, 1}; client 0's v
  # starts from x^2, client 1's alpha ends clipped at 0.
  settings = dict(alpha=0.75, alpha_lr=1.0, rounds=3, clients_per_round=1,
                  participation='bernoulli')
  algorithm, x0, x, sim = _run(**settings)
  del settings['clients_per_round']
  xs, want_v, want_alpha = _np_apfl(x0, cohort_size=1, **settings)
  _check(x, xs[-1])
  assert want_alpha[1] == 0.0
  _check(sim.store.stacked.alpha, want_alpha)
  for i in range(N):
    want = want_alpha[i] * want_v[i] + (1 - want_alpha[i]) * x
    _check(tiny.personal_flat(algorithm, sim, i), want)


@pytest.mark.parametrize('alpha', [0.0, 1.0])
def test_global_model_is_fedavg_whatever_alpha(alpha):
  _, x0, x, _ = _run(alpha=alpha, alpha_lr=2.0, weighted=False)
  _check(x, tiny.np_fedavg(x0, lr=LR, rounds=ROUNDS, epochs=EPOCHS,
                           cohort_size=N))


@pytest.mark.parametrize('settings, name, match', [
    ({'alpha': -0.1}, 'alpha', r'alpha in \[0, 1\]'),
    ({'alpha': 1.5}, 'alpha', r'alpha in \[0, 1\]'),
    ({'alpha_lr': -1.0}, 'alpha_lr', 'alpha_lr >= 0')])
def test_bad_hyperparameters_are_setting_errors(settings, name, match):
  with pytest.raises(SettingError, match=match) as error:
    apfl(tiny.model().apply, LocalSGD(LR), optax.sgd(1.0), **settings)
  assert error.value.setting == name
