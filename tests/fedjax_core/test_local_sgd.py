"""LocalSGD's step (clip, weight decay, lr decay) and the stateless local-SGD
algorithm's server step, against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fedjax_core.toolkit import server_model
from fedjax_core.toolkit.local_sgd import LocalSGD

PARAMS = {'w': np.array([[1.0, -2.0], [0.5, 3.0]], np.float32),
          'b': np.array([0.25, -1.0], np.float32)}
GRADS = {'w': np.array([[3.0, 0.0], [-4.0, 1.0]], np.float32),
         'b': np.array([2.0, -2.0], np.float32)}


def _np_step(lr, weight_decay, max_norm):
  norm = np.sqrt(sum(np.sum(g.astype(np.float64)**2) for g in GRADS.values()))
  scale = min(1.0, max_norm / norm) if max_norm else 1.0
  return {k: PARAMS[k] - lr * (scale * GRADS[k] + weight_decay * PARAMS[k])
          for k in PARAMS}


@pytest.mark.parametrize('weight_decay, max_norm', [
    (0.0, None), (0.1, None), (0.0, 2.0), (0.1, 2.0), (0.0, 100.0)])
def test_step_clips_then_adds_weight_decay(weight_decay, max_norm):
  sgd = LocalSGD(0.3, weight_decay=weight_decay, max_grad_norm=max_norm)
  got = jax.jit(sgd.step)(PARAMS, GRADS, jnp.float32(0.3))
  want = _np_step(0.3, weight_decay, max_norm)
  for k in PARAMS:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6)


def test_learning_rate_decays_per_round():
  sgd = LocalSGD(0.5, lr_decay=0.9)
  np.testing.assert_allclose(sgd.learning_rate_at(jnp.int32(3)),
                             0.5 * 0.9**3, rtol=1e-6)
  assert LocalSGD(0.5).learning_rate_at(jnp.int32(100)) == 0.5


@pytest.mark.parametrize('kwargs, message', [
    ({'learning_rate': 0.0}, 'client_lr must be a positive'),
    ({'learning_rate': float('nan')}, 'client_lr must be a positive'),
    ({'learning_rate': 0.1, 'lr_decay': 0.0}, 'client_lr_decay'),
    ({'learning_rate': 0.1, 'weight_decay': -0.1}, 'weight_decay'),
    ({'learning_rate': 0.1, 'max_grad_norm': -1.0}, 'max_grad_norm'),
])
def test_bad_settings_name_the_flag(kwargs, message):
  with pytest.raises(ValueError, match=message):
    LocalSGD(**kwargs)


@pytest.mark.parametrize('lr', [1.0, 0.5])
def test_server_model_moves_by_the_delta_through_the_optimizer(lr):
  model = server_model.init(optax.sgd(lr), PARAMS)
  model, norm = server_model.apply_delta(optax.sgd(lr), model, GRADS)
  for k in PARAMS:
    np.testing.assert_allclose(model.params[k], PARAMS[k] + lr * GRADS[k],
                               rtol=1e-6)
  assert int(model.round_num) == 1
  np.testing.assert_allclose(
      norm, lr * np.sqrt(sum(np.sum(g**2) for g in GRADS.values())),
      rtol=1e-6)
