"""Byzantine attacks against numpy re-statements and hand-computed numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedjax_core.channel import attacks

# Slots 0..7 are clients, 8..9 padding; 1, 4 and 6 are Byzantine.
_IS_REAL = np.array([True] * 8 + [False] * 2)
_BYZANTINE = np.zeros(10, bool)
_BYZANTINE[[1, 4, 6]] = True


def _updates(n=10, d=6, seed=0):
  rng = np.random.default_rng(seed)
  updates = rng.normal(size=(n, d)).astype(np.float32)
  updates[~_IS_REAL[:n]] = 1e6  # Padding a leaky attack would show.
  return updates


def _bits(x):
  return np.asarray(x, np.float32).view(np.uint32)


def _real_mask(n, positions):
  is_real = np.zeros(n, bool)
  is_real[list(positions)] = True
  return is_real


# Compiling is most of this file's time, so tests share jitted functions; the
# masks are traced arguments, so one compile serves every mask.
_mask = jax.jit(attacks.byzantine_mask, static_argnums=2)


@pytest.mark.parametrize('fraction', [0.0, 0.25, 0.3, 0.99])
def test_byzantine_mask_count_is_pythons_round_and_never_padding(fraction):
  rng = np.random.default_rng(1)
  # 0.25 * 2 = 0.5 and 0.25 * 6 = 1.5 round to even; 0.3 * 5 = 1.5 to 2.
  for m in range(13):
    is_real = _real_mask(12, rng.choice(12, m, replace=False))
    mask = np.asarray(_mask(jax.random.key(m), jnp.asarray(is_real),
                            fraction))
    assert mask.sum() == round(fraction * m), (m, mask)
    assert not mask[~is_real].any()


def test_byzantine_mask_is_seeded():
  is_real = jnp.ones(12, bool)
  first = _mask(jax.random.key(3), is_real, 0.25)
  np.testing.assert_array_equal(first,
                                _mask(jax.random.key(3), is_real, 0.25))
  assert not np.array_equal(first, _mask(jax.random.key(4), is_real, 0.25))


def test_byzantine_mask_is_uniform_over_the_real_clients():
  is_real = _real_mask(12, [0, 2, 3, 5, 6, 7, 8, 9])  # m = 8, 2 Byzantine.
  masks = np.stack([
      np.asarray(_mask(jax.random.key(seed), jnp.asarray(is_real), 0.25))
      for seed in range(2000)])
  assert (masks.sum(axis=1) == 2).all()
  frequency = masks.mean(axis=0)
  np.testing.assert_array_equal(frequency[~is_real], 0.0)
  # Each real client: 1/4, std sqrt(1/4 * 3/4 / 2000) ~ 0.0097.
  np.testing.assert_allclose(frequency[is_real], 0.25, atol=0.04)
  # Each of the 28 pairs of real clients: 1/28, std ~ 0.0042.
  _, pair_counts = np.unique(masks @ (2**np.arange(12)), return_counts=True)
  assert len(pair_counts) == 28
  np.testing.assert_allclose(pair_counts / 2000, 1 / 28, atol=0.017)


def test_byzantine_mask_rejects_a_fraction_outside_zero_one():
  with pytest.raises(ValueError, match='fraction'):
    attacks.byzantine_mask(jax.random.key(0), jnp.ones(4, bool), 1.0)


_apply = jax.jit(attacks.apply_model_attack, static_argnums=0,
                 static_argnames=('scale', 'stddev', 'alie_z', 'ipm_epsilon'))


def _attack(name, updates, byzantine=_BYZANTINE, is_real=_IS_REAL,
            **kwargs):
  return _apply(name, jnp.asarray(updates), jnp.asarray(byzantine),
                jnp.asarray(is_real), jax.random.key(7), **kwargs)


@pytest.mark.parametrize('name', attacks.ATTACKS)
def test_honest_and_padding_rows_are_bit_identical(name):
  updates = _updates()
  updates[0, 0] = -0.0  # A sign bit a where-free rewrite could lose.
  out = np.asarray(_attack(name, updates))
  keep = ~_BYZANTINE
  np.testing.assert_array_equal(_bits(out[keep]), _bits(updates[keep]))
  if name in ('none', 'label_flip'):
    np.testing.assert_array_equal(_bits(out), _bits(updates))
  else:
    assert not np.allclose(out[_BYZANTINE], updates[_BYZANTINE])


def test_sign_flip_against_numpy():
  updates = _updates()
  out = np.asarray(_attack('sign_flip', updates, scale=3.0))
  want = updates.copy()
  want[_BYZANTINE] = -3.0 * updates[_BYZANTINE]
  np.testing.assert_array_equal(out, want)


def test_ipm_sends_minus_epsilon_times_the_honest_mean():
  updates = _updates()
  out = np.asarray(_attack('ipm', updates, ipm_epsilon=0.5))
  # The honest clients are rows 0, 2, 3, 5 and 7; padding is left out.
  honest_mean = updates[[0, 2, 3, 5, 7]].astype(np.float64).mean(axis=0)
  for row in np.flatnonzero(_BYZANTINE):
    np.testing.assert_allclose(out[row], -0.5 * honest_mean, rtol=1e-5,
                               atol=1e-7)


def test_ipm_without_honest_clients_sends_zero():
  updates = _updates()
  out = np.asarray(_attack('ipm', updates, byzantine=_IS_REAL,
                           ipm_epsilon=0.5))
  np.testing.assert_array_equal(out[_IS_REAL], 0.0)
  np.testing.assert_array_equal(out[~_IS_REAL], updates[~_IS_REAL])


def _numpy_alie(updates, byzantine, z):
  own = updates[byzantine].astype(np.float64)
  mean = own.sum(axis=0) / len(own)
  std = np.sqrt(((own - mean)**2).sum(axis=0) / len(own))
  want = updates.astype(np.float64)
  want[byzantine] = mean - z * std
  return want


def test_alie_uses_only_the_byzantine_clients_own_updates():
  updates = _updates()
  # The honest clients are far away; an attacker that used them would send
  # something near 1000, not near the Byzantine rows' N(0, 1).
  updates[_IS_REAL & ~_BYZANTINE] += 1000.0
  out = np.asarray(_attack('alie', updates, alie_z=1.5))
  np.testing.assert_allclose(out, _numpy_alie(updates, _BYZANTINE, 1.5),
                             rtol=1e-5, atol=1e-5)
  assert np.abs(out[_BYZANTINE]).max() < 20


def test_alie_default_z_is_the_papers_bound_for_the_real_count():
  updates = _updates()
  out = np.asarray(_attack('alie', updates))
  # 8 real clients, 3 Byzantine: s = floor(8 / 2 + 1) - 3 = 2, so
  # z = Phi^-1(6 / 8); the two padding slots do not count.
  z = stats.norm.ppf(6 / 8)
  np.testing.assert_allclose(out, _numpy_alie(updates, _BYZANTINE, z),
                             rtol=1e-5, atol=1e-5)


def test_alie_without_byzantine_clients_changes_nothing():
  updates = _updates()
  none = np.zeros(10, bool)
  out = _attack('alie', updates, byzantine=none)
  np.testing.assert_array_equal(_bits(out), _bits(updates))
  empty = _attack('alie', updates, byzantine=none, is_real=none)  # z NaN.
  np.testing.assert_array_equal(_bits(empty), _bits(updates))


_alie_z = jax.jit(attacks.alie_z)


@pytest.mark.parametrize('n, f, quantile', [
    (50, 24, 48 / 50),  # s = floor(26) - 24 = 2.
    (10, 2, 6 / 10),  # s = floor(6) - 2 = 4.
    (11, 3, 8 / 11),  # s = floor(6.5) - 3 = 3.
    (10, 0, 4 / 10),  # s = 6: z < 0, the paper's bound with no attacker.
])
def test_alie_z_of_traced_counts_against_scipy(n, f, quantile):
  traced = _alie_z(jnp.int32(n), jnp.int32(f))
  assert float(traced) == pytest.approx(stats.norm.ppf(quantile), rel=1e-5)


def test_alie_z_of_python_ints_by_hand():
  # Static arguments: alie_z sees the Python ints themselves (and compiles
  # once, where running eagerly compiles every primitive of ppf).
  alie_z = jax.jit(attacks.alie_z, static_argnums=(0, 1))
  # Phi(1.750686) = 0.96 and Phi(0.253347) = 0.6, from a normal table.
  assert float(alie_z(50, 24)) == pytest.approx(1.750686, abs=1e-5)
  assert float(alie_z(10, 2)) == pytest.approx(0.253347, abs=1e-5)


def test_gaussian_has_the_requested_scale_and_is_seeded():
  byzantine = jnp.array([True, False, True, False])
  updates = jnp.ones((4, 125_000))
  gaussian = jax.jit(attacks.gaussian, static_argnums=3)
  out = np.asarray(gaussian(updates, byzantine, jax.random.key(0), 0.5))
  draws = out[[0, 2]]
  assert abs(draws.mean()) < 0.5 * 0.01
  assert abs(draws.std() - 0.5) < 0.5 * 0.01
  assert abs(np.corrcoef(draws[0], draws[1])[0, 1]) < 0.01
  np.testing.assert_array_equal(out[[1, 3]], 1.0)
  # One draw for the whole array, of which the Byzantine rows are kept.
  whole = 0.5 * np.asarray(jax.random.normal(jax.random.key(0), (4, 125_000)))
  np.testing.assert_allclose(draws, whole[[0, 2]], rtol=1e-6, atol=1e-7)
  again = gaussian(updates, byzantine, jax.random.key(0), 0.5)
  np.testing.assert_array_equal(out, again)
  other = gaussian(updates, byzantine, jax.random.key(1), 0.5)
  assert not np.array_equal(out, other)


def test_flip_labels_by_hand():
  np.testing.assert_array_equal(
      attacks.flip_labels(jnp.array([0, 1, 4, 9]), 10), [9, 8, 5, 0])
  np.testing.assert_array_equal(
      attacks.flip_labels(jnp.array([0, 1]), 2), [1, 0])


def test_round_of_mask_then_attack_in_one_jit():
  @jax.jit
  def round_(key, updates, is_real):
    byzantine = attacks.byzantine_mask(key, is_real, 0.4)
    return byzantine, attacks.alie(updates, byzantine, is_real)

  updates = _updates()
  byzantine, out = round_(jax.random.key(2), jnp.asarray(updates),
                          jnp.asarray(_IS_REAL))
  byzantine = np.asarray(byzantine)
  assert byzantine.sum() == 3 and not byzantine[~_IS_REAL].any()  # 3.2 -> 3.
  z = stats.norm.ppf(6 / 8)
  np.testing.assert_allclose(out, _numpy_alie(updates, byzantine, z),
                             rtol=1e-5, atol=1e-5)


def test_unknown_attack_lists_the_known_ones():
  with pytest.raises(ValueError, match=r'sign_flip.*gaussian.*ipm'):
    _attack('krum', _updates())


@pytest.mark.parametrize('kwargs, setting, message', [
    (dict(name='krum'), 'attack.name', "Unknown attack 'krum'; valid: "
     'sign_flip, gaussian, label_flip, alie, ipm'),
    (dict(name='sign_flip', fraction=1.0), 'attack.fraction',
     r'Byzantine fraction .* must be in \[0, 1\), got 1.0'),
    (dict(name='alie', fraction=0.5), 'attack.alie_z',
     'Byzantine fraction below 0.5 .* got 0.5; set alie_z'),
    (dict(name='gaussian', stddev=0.0), 'attack.stddev',
     'stddev must be positive, got 0.0'),
])
def test_bad_attack_settings_name_their_setting(kwargs, setting, message):
  with pytest.raises(ValueError, match=message) as error:
    attacks.Attack(**kwargs)
  assert error.value.setting == setting
  assert '--' not in str(error.value)
