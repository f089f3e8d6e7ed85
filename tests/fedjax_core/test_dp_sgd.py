"""DP-SGD's per-example clipping and noise, against numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.toolkit import dp_sgd
from fedjax_core.algorithm import Batch
import models


def _problem():
  rng = np.random.default_rng(0)
  model = models.get_model('logreg', (5,), 3)
  params = model.init(jax.random.key(0))
  batch = Batch(x=jnp.asarray(rng.normal(size=(4, 5)), jnp.float32),
                y=jnp.array([0, 2, 1, 0]),
                mask=jnp.array([1.0, 1.0, 1.0, 0.0]))
  return model, params, batch


def _numpy_clipped_mean(params, batch, clip):
  dense = params['params']['Dense_0']
  w = np.asarray(dense['kernel'], np.float64)
  b = np.asarray(dense['bias'], np.float64)
  total_w, total_b = np.zeros_like(w), np.zeros_like(b)
  for x, y, m in zip(np.asarray(batch.x, np.float64), np.asarray(batch.y),
                     np.asarray(batch.mask)):
    z = x @ w + b
    p = np.exp(z - z.max())
    p /= p.sum()
    d = p - np.eye(3)[y]
    gw, gb = np.outer(x, d), d
    norm = np.sqrt(np.sum(gw**2) + np.sum(gb**2))
    factor = m * min(1.0, clip / norm)
    total_w += factor * gw
    total_b += factor * gb
  return total_w / 4, total_b / 4  # Divided by the padded batch, 4.


@pytest.mark.parametrize('clip', [0.1, 100.0])
def test_noiseless_step_is_the_clipped_per_example_mean(clip):
  model, params, batch = _problem()
  grad_fn = dp_sgd.private_loss_and_grad(model.apply,
                                         dp_sgd.DPSGDConfig(clip, 0.0))
  loss, grads = jax.jit(grad_fn)(params, batch, jax.random.key(0))
  want_w, want_b = _numpy_clipped_mean(params, batch, clip)
  np.testing.assert_allclose(grads['params']['Dense_0']['kernel'], want_w,
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(grads['params']['Dense_0']['bias'], want_b,
                             rtol=1e-5, atol=1e-7)
  assert np.isfinite(float(loss))


@pytest.mark.slow
def test_noise_has_std_z_c_over_b():
  """Noise on the summed gradient is N(0, (z C)^2); after dividing by
  B = 4 its std is z C / 4. Over many keys at one coordinate."""
  model, params, batch = _problem()
  clip, z = 0.5, 2.0
  noisy = dp_sgd.private_loss_and_grad(model.apply,
                                       dp_sgd.DPSGDConfig(clip, z))
  clean = dp_sgd.private_loss_and_grad(model.apply,
                                       dp_sgd.DPSGDConfig(clip, 0.0))
  keys = jax.random.split(jax.random.key(1), 4000)
  grads = jax.jit(jax.vmap(lambda k: noisy(params, batch, k)[1]))(keys)
  base = clean(params, batch, keys[0])[1]
  diffs = np.asarray(grads['params']['Dense_0']['kernel']
                     - base['params']['Dense_0']['kernel'])
  assert diffs.std() == pytest.approx(z * clip / 4, rel=0.03)
  assert abs(diffs.mean()) < 0.03 * z * clip / 4


def test_bad_dp_sgd_settings_name_their_flag():
  with pytest.raises(ValueError, match='DP-SGD clip_norm must be') as error:
    dp_sgd.DPSGDConfig(0.0, 1.0)
  assert error.value.setting == 'dp_sgd.clip_norm'
  with pytest.raises(ValueError,
                     match='DP-SGD noise_multiplier must be') as error:
    dp_sgd.DPSGDConfig(1.0, -0.5)
  assert error.value.setting == 'dp_sgd.noise_multiplier'
