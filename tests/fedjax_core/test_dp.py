"""Client-level DP pieces against numpy and hand-computed numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.channel import dp


def _update(scale):
  rng = np.random.default_rng(0)
  return {'w': (scale * rng.normal(size=(3, 4))).astype(np.float32),
          'b': (scale * rng.normal(size=(4,))).astype(np.float32)}


def _norm(tree):
  return np.sqrt(sum(np.sum(np.asarray(x, np.float64)**2)
                     for x in jax.tree.leaves(tree)))


@pytest.mark.parametrize('scale', [0.01, 10.0])
def test_flat_clip_scales_to_the_bound_or_leaves_alone(scale):
  update = _update(scale)
  clipped, norm = dp.clip_update(jax.tree.map(jnp.asarray, update), 1.5)
  original = _norm(update)
  np.testing.assert_allclose(norm, original, rtol=1e-6)
  factor = min(1.0, 1.5 / original)
  for key in update:
    np.testing.assert_allclose(clipped[key], update[key] * factor, rtol=1e-5)
  assert _norm(clipped) <= 1.5 * (1 + 1e-6)


def test_per_layer_clip_bounds_each_layer_by_s_over_sqrt_layers():
  update = _update(1.0)
  update['b'] = update['b'] * 0.01  # A small layer stays as it is.
  clipped, _ = dp.clip_update(jax.tree.map(jnp.asarray, update), 1.0,
                              per_layer=True)
  bound = 1.0 / np.sqrt(2)
  for key in update:
    layer_norm = np.linalg.norm(update[key])
    want = update[key] * min(1.0, bound / layer_norm)
    np.testing.assert_allclose(clipped[key], want, rtol=1e-5)
  np.testing.assert_allclose(clipped['b'], update['b'], rtol=1e-6)
  assert np.linalg.norm(clipped['w']) == pytest.approx(bound, rel=1e-5)


def test_gaussian_noise_has_the_requested_scale_and_is_seeded():
  zeros = {'a': jnp.zeros((200, 250)), 'b': jnp.zeros((10000,))}
  noised = dp.add_gaussian_noise(zeros, jax.random.key(0), 0.3)
  values = np.concatenate([np.ravel(x) for x in jax.tree.leaves(noised)])
  assert abs(values.std() - 0.3) < 0.3 * 0.01
  assert abs(values.mean()) < 0.3 * 0.01
  again = dp.add_gaussian_noise(zeros, jax.random.key(0), 0.3)
  np.testing.assert_array_equal(noised['a'], again['a'])
  other = dp.add_gaussian_noise(zeros, jax.random.key(1), 0.3)
  assert not np.array_equal(noised['a'], other['a'])


def test_update_noise_multiplier_of_adaptive_clipping_by_hand():
  """z = 1, sigma_b = 1: z_Delta = (1 - 1/4)^(-1/2) = 1.1547."""
  config = dp.DPConfig(clip_norm=1.0, noise_multiplier=1.0,
                       expected_clients=20, target_quantile=0.5,
                       count_stddev=1.0)
  assert config.update_noise_multiplier() == pytest.approx(
      1 / np.sqrt(0.75), rel=1e-12)
  fixed = dp.DPConfig(clip_norm=1.0, noise_multiplier=1.0,
                      expected_clients=20)
  assert fixed.update_noise_multiplier() == 1.0
  # Andrew et al.'s default sigma_b = m / 20 = 1 here as well.
  default = dp.DPConfig(clip_norm=1.0, noise_multiplier=1.0,
                        expected_clients=20, target_quantile=0.5)
  assert default.clipped_count_stddev == 1.0


def test_adaptive_clipping_refuses_a_count_noise_that_leaves_no_budget():
  with pytest.raises(ValueError, match='2 \\* sigma_b > z') as error:
    dp.DPConfig(clip_norm=1.0, noise_multiplier=2.0, expected_clients=20,
                target_quantile=0.5, count_stddev=1.0)
  assert error.value.setting == 'client_dp.count_stddev'


def test_noisy_unclipped_fraction_and_geometric_update_by_hand():
  config = dp.DPConfig(clip_norm=1.0, noise_multiplier=0.0,
                       expected_clients=4.0, target_quantile=0.5,
                       clip_learning_rate=0.2, count_stddev=0.5)
  key = jax.random.key(3)
  noise = 0.5 * float(jax.random.normal(key, ()))
  # 3 of 4 counted clients unclipped: (3 - 4/2 + noise) / 4 + 1/2.
  got = dp.noisy_unclipped_fraction(jnp.float32(3.0), jnp.float32(4.0), key,
                                    config)
  want = (3 - 2 + noise) / 4 + 0.5
  assert float(got) == pytest.approx(want, rel=1e-6)
  new_clip = dp.next_clip_norm(jnp.float32(2.0), jnp.float32(0.75), config)
  assert float(new_clip) == pytest.approx(2.0 * np.exp(-0.2 * 0.25),
                                          rel=1e-6)


@pytest.mark.parametrize('kwargs, setting, message', [
    (dict(clip_norm=0.0), 'client_dp.clip_norm',
     'clip_norm must be positive, got 0.0'),
    (dict(noise_multiplier=-1.0), 'client_dp.noise_multiplier',
     'noise_multiplier must be >= 0, got -1.0'),
    (dict(target_quantile=1.5), 'client_dp.target_quantile',
     r'target_quantile must be in \(0, 1\), got 1.5'),
    (dict(target_quantile=0.5, clip_learning_rate=0.0),
     'client_dp.clip_learning_rate', 'clip_learning_rate must be positive'),
])
def test_bad_settings_name_their_setting(kwargs, setting, message):
  settings = dict(clip_norm=1.0, noise_multiplier=1.0, expected_clients=10)
  settings.update(kwargs)
  with pytest.raises(ValueError, match=message) as error:
    dp.DPConfig(**settings)
  assert error.value.setting == setting
  assert '--' not in str(error.value)
