"""Tests of fedjax_core.channel.secure_aggregation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedjax_core.channel import secagg_protocol
from fedjax_core.channel import secure_aggregation as sa

# 8 cohort slots: 7 participants with non-contiguous ids, padding at 5.
_IDS = np.array([40, 3, 17, 1000, 8, 0, 61, 9], np.int32)
_PART = np.array([1, 1, 1, 1, 1, 0, 1, 1], bool)
_D = 64
# One encoding for the masking tests, so they share compiled programs.
_CONFIG = sa.SecAggConfig(bits=12, clip=1.0, scale=sa.max_scale(8, 1.0, 12))


def _vectors(n=8, d=_D, seed=0, scale=0.3):
  x = np.random.default_rng(seed).normal(scale=scale, size=(n, d))
  return x.astype(np.float32)


def _inputs(dropout_fraction, seed=0, round_num=1, ids=_IDS, part=_PART):
  setup = secagg_protocol.round_setup(seed, round_num, ids, part,
                                      dropout_fraction, None)
  return jax.tree.map(jnp.asarray, setup)


def _expected_words(x, config):
  """encode restated in numpy int64 (for in-range, integer clip * scale)."""
  c = np.clip(x.astype(np.float64), -config.clip, config.clip)
  return (np.round(c * config.scale).astype(np.int64)
          % 2**config.bits).astype(np.uint32)


# Encoding.


@pytest.mark.parametrize('bits, scale', [(8, 16.0), (16, 1024.0),
                                         (31, 2.0**20), (32, 2.0**24)])
def test_encode_decode_round_trip(bits, scale):
  """Words are round(x * scale) mod 2**bits; decoding is within
  1 / (2 scale) of x, negative values included."""
  config = sa.SecAggConfig(bits=bits, clip=4.0, scale=scale)
  x = np.random.default_rng(1).uniform(-3.9, 3.9, size=500).astype(
      np.float32)
  x[:4] = [-3.5, -1 / scale, 0.0, 3.5]
  words = sa.encode(jnp.asarray(x), config)
  assert words.dtype == jnp.uint32
  np.testing.assert_array_equal(words, _expected_words(x, config))
  assert int(jnp.max(words)) < 2**bits
  back = np.asarray(sa.decode(words, config))
  assert back.dtype == np.float32
  np.testing.assert_array_less(np.abs(back - x), 0.5 / scale + 1e-7)
  assert back[0] == -3.5 and back[1] == -1 / scale and back[2] == 0.0
  assert np.all(np.sign(back[np.abs(x) > 1 / scale])
                == np.sign(x[np.abs(x) > 1 / scale]))


def test_encode_negative_numbers_are_twos_complement():
  config = sa.SecAggConfig(bits=8, clip=1.0, scale=16.0)
  words = sa.encode(jnp.array([0.5, -0.5, -1.0, -1 / 16]), config)
  np.testing.assert_array_equal(words, [8, 256 - 8, 256 - 16, 255])
  config32 = sa.SecAggConfig(bits=32, clip=1.0, scale=2.0**30)
  np.testing.assert_array_equal(
      sa.encode(jnp.array([-1.0, 1.0]), config32), [2**32 - 2**30, 2**30])
  # The most negative word decodes to -2**(bits-1) / scale.
  np.testing.assert_array_equal(
      sa.decode(jnp.array([2**31, 2**31 - 1], jnp.uint32), config32),
      np.array([-2.0, (2**31 - 1) / 2**30], np.float32))
  np.testing.assert_array_equal(
      sa.decode(jnp.array([128, 127], jnp.uint32), config),
      [-8.0, 127 / 16])


def test_encode_clips_beyond_clip_and_reports_the_fraction():
  config = sa.SecAggConfig(bits=16, clip=0.5, scale=64.0)
  x = jnp.array([-3.0, -0.5, 0.2, 0.5, 0.75, 100.0, -0.51, 0.0])
  np.testing.assert_array_equal(
      sa.decode(sa.encode(x, config), config),
      [-0.5, -0.5, 13 / 64, 0.5, 0.5, 0.5, -0.5, 0.0])
  np.testing.assert_allclose(sa.clipped_fraction(x, config), 4 / 8)
  assert sa.clipped_fraction(x, config).dtype == jnp.float32


def test_encode_caps_the_magnitude_at_floor_of_clip_times_scale():
  """2 clients * 1.0 * 63.5 = 127 passes check_overflow in 8 bits; rounding
  63.5 up to 64 would make 1.0 + 1.0 wrap to -128. Capped at 63 it sums
  to 126."""
  config = sa.SecAggConfig(bits=8, clip=1.0, scale=63.5)
  sa.check_overflow(2, config)
  np.testing.assert_array_equal(sa.encode(jnp.array([1.0, -1.0]), config),
                                [63, 256 - 63])
  total = sa.quantized_sum(jnp.ones((2, 1)), jnp.ones(2, bool), config)
  np.testing.assert_array_equal(total, np.array([126 / 63.5], np.float32))


@pytest.mark.parametrize('bits', [2, 8, 31, 32])
def test_modular_sum_wraps_like_numpy(bits):
  rng = np.random.default_rng(bits)
  words = rng.integers(0, 2**bits, size=(6, 40), dtype=np.uint64)
  include = np.array([1, 0, 1, 1, 0, 1], bool)
  expected = words[include].sum(axis=0) % 2**bits
  got = sa.modular_sum(jnp.asarray(words.astype(np.uint32)),
                       jnp.asarray(include), bits)
  assert got.dtype == jnp.uint32
  np.testing.assert_array_equal(got, expected.astype(np.uint32))
  # Float inclusion weights: nonzero rows count.
  got_float = sa.modular_sum(jnp.asarray(words.astype(np.uint32)),
                             jnp.asarray(include * 0.5), bits)
  np.testing.assert_array_equal(got_float, expected.astype(np.uint32))
  assert words[include].sum(axis=0).max() >= 2**bits  # it did wrap


def test_prg_words_are_below_the_modulus_and_keyed():
  key = jax.random.key(0)
  w = sa.prg_words(key, 1000, 5)
  assert w.shape == (1000,) and w.dtype == jnp.uint32
  assert int(w.max()) == 31 and int(w.min()) == 0
  np.testing.assert_array_equal(w, sa.prg_words(key, 1000, 5))
  assert not np.array_equal(w, sa.prg_words(jax.random.key(1), 1000, 5))


# Overflow checks.


def test_check_overflow_accepts_the_boundary_and_refuses_beyond():
  """3 clients in 8 bits: 3 * 1 * s <= 127 holds up to s = 127 / 3."""
  sa.check_overflow(3, sa.SecAggConfig(bits=8, clip=1.0, scale=127 / 3))
  with pytest.raises(ValueError, match=r'3 clients .* > 2\*\*7 - 1 = 127.*'
                     r'Lower scale or clip, raise bits') as error:
    sa.check_overflow(3, sa.SecAggConfig(bits=8, clip=1.0, scale=42.5))
  assert error.value.setting == 'secure_aggregation.scale'
  # The weights in [0, 1] bound it when clip < 1.
  sa.check_overflow(3, sa.SecAggConfig(bits=8, clip=0.25, scale=42.0))
  with pytest.raises(ValueError, match='overflow'):
    sa.check_overflow(3, sa.SecAggConfig(bits=8, clip=0.25, scale=43.0))
  # And clip does when clip > 1: 3 * 2 * 21 = 126 <= 127 < 3 * 2 * 22.
  sa.check_overflow(3, sa.SecAggConfig(bits=8, clip=2.0, scale=21.0))
  with pytest.raises(ValueError, match='overflow'):
    sa.check_overflow(3, sa.SecAggConfig(bits=8, clip=2.0, scale=22.0))


@pytest.mark.parametrize('bits', [1, 33])
def test_check_overflow_refuses_bits_out_of_range(bits):
  with pytest.raises(ValueError, match=r'bits must be in \[2, 32\]') as error:
    sa.check_overflow(1, sa.SecAggConfig(bits=bits, clip=1.0, scale=1.0))
  assert error.value.setting == 'secure_aggregation.bits'


@pytest.mark.parametrize('num_clients, clip, bits, expected', [
    (10, 1.0, 16, 2048.0),   # 32767 / 10 = 3276.7
    (3, 1.0, 8, 32.0),       # 127 / 3 = 42.3
    (1, 1.0, 32, 2.0**30),   # 2**31 - 1
    (100, 0.1, 32, 2.0**24),  # max(clip, 1) = 1
    (7, 5.0, 32, 2.0**25),   # 2**31 / 35 = 6.1e7
    (127, 1.0, 8, 1.0),
])
def test_max_scale_passes_check_overflow_and_twice_it_fails(
    num_clients, clip, bits, expected):
  scale = sa.max_scale(num_clients, clip, bits)
  assert scale == expected
  sa.check_overflow(num_clients, sa.SecAggConfig(bits, clip, scale))
  with pytest.raises(ValueError, match='overflow'):
    sa.check_overflow(num_clients, sa.SecAggConfig(bits, clip, 2 * scale))


def test_max_scale_refuses_when_no_scale_of_one_fits():
  with pytest.raises(ValueError, match=r'clip=1.0 in bits=8.*Raise bits .*'
                     'lower clip') as error:
    sa.max_scale(128, 1.0, 8)
  assert error.value.setting == 'secure_aggregation.bits'
  with pytest.raises(ValueError, match='clip=20.0'):
    sa.max_scale(10, 20.0, 8)


def test_mask_words_counts_clients_and_server():
  """3 participants, 2 arrived, 10 words: clients 3 * (1 + 2) masks, the
  server 2 self masks and 2 * 1 pairs with the dropped client."""
  assert sa.mask_words(3, 2, 10) == (9 + 2 + 2) * 10
  assert sa.mask_words(5, 5, 7) == (25 + 5) * 7


# Masking.


def test_mask_follows_the_documented_formula():
  """y_i = x_i + PRG(self_i) + sum_j s(i, j) PRG(pair_ij), restated with the
  documented key derivation in numpy uint64 arithmetic."""
  bits = _CONFIG.bits
  ids = _IDS
  part = np.array([1, 1, 0, 1, 1, 0, 0, 1], bool)
  rng = np.random.default_rng(5)
  pair = rng.integers(0, 2**32, size=(8, 8, 2), dtype=np.uint32)
  pair = np.where(np.arange(8)[:, None, None] < np.arange(8)[None, :, None],
                  pair, pair.transpose(1, 0, 2))
  own = rng.integers(0, 2**32, size=(8, 2), dtype=np.uint32)
  words = rng.integers(0, 2**bits, size=(8, _D), dtype=np.uint32)
  key = jax.random.key(3)
  got = sa.mask(jnp.asarray(words), jnp.asarray(ids), jnp.asarray(part),
                jnp.asarray(pair), jnp.asarray(own), key, bits)

  def prg(*data):
    k = key
    for x in data:
      k = jax.random.fold_in(k, int(x))
    bits32 = jax.random.bits(k, (_D,), jnp.uint32)
    return np.asarray(bits32).astype(np.uint64) % 2**bits

  expected = np.zeros((8, _D), np.uint64)
  for i in np.flatnonzero(part):
    y = words[i].astype(np.uint64) + prg(0x5e1f, ids[i], *own[i])
    for j in np.flatnonzero(part):
      if j != i:
        lo, hi = sorted((ids[i], ids[j]))
        m = prg(0x9a17, lo, hi, *pair[i, j])
        y = y + m if ids[i] < ids[j] else y + 2**bits - m
    expected[i] = y % 2**bits
  np.testing.assert_array_equal(got, expected.astype(np.uint32))


def test_masks_cancel_without_dropouts_and_padding_is_excluded():
  """No dropouts: the modular sum of the masked rows, less the self masks,
  is the modular sum of the encoded rows of the participants; the padding
  row (here huge) is zeroed and left out."""
  config = _CONFIG
  inputs = _inputs(0.0)
  key = jax.random.key(11)
  x = _vectors()
  x[5] = 1e6
  words = sa.encode(jnp.asarray(x), config)
  masked = sa.mask(words, _IDS, _PART, inputs.pair_seeds, inputs.self_seeds,
                   key, config.bits)
  np.testing.assert_array_equal(masked[5], 0)
  total = sa.modular_sum(masked, _PART, config.bits)
  plain = sa.modular_sum(words, _PART, config.bits)
  assert not np.array_equal(total, plain)  # self masks still on
  unmasked = sa.unmask(total, _IDS, _PART, jnp.asarray(_PART),
                       inputs.recovered_pair_seeds,
                       inputs.recovered_self_seeds, key, config.bits)
  np.testing.assert_array_equal(unmasked, plain)
  np.testing.assert_array_equal(
      plain, _expected_words(x[_PART], config).astype(np.uint64).sum(0)
      % 2**config.bits)
  # Pairwise masks alone cancel: zero self seeds, no unmasking needed.
  no_self = sa.mask(words, _IDS, _PART, inputs.pair_seeds,
                    jnp.zeros_like(inputs.self_seeds), key, config.bits)
  self_only = sa.mask(words, _IDS, _PART,
                      jnp.zeros_like(inputs.pair_seeds),
                      jnp.zeros_like(inputs.self_seeds), key, config.bits)
  np.testing.assert_array_equal(
      sa.modular_sum(no_self, _PART, config.bits),
      sa.modular_sum(self_only, _PART, config.bits))


@pytest.mark.parametrize('bits, seed, padding', [(12, 0, 5.0),
                                                 (32, 1, np.nan)])
def test_secure_sum_equals_quantized_sum_with_dropouts(bits, seed, padding):
  """0.3 of 7 clients drop after masking; the recovered seeds unmask the sum
  of the 5 arrived clients exactly. The padding row counts nowhere."""
  config = sa.SecAggConfig(bits=bits, clip=1.0,
                           scale=sa.max_scale(8, 1.0, bits))
  inputs = _inputs(0.3, seed=seed)
  arrived = inputs.arrived
  assert int(arrived.sum()) == 5
  x = _vectors(seed=seed, scale=0.6)
  x[5] = padding
  key = jax.random.key(seed)
  got, metrics = sa.secure_sum(jnp.asarray(x), _IDS, _PART, arrived, inputs,
                               key, config)
  want = sa.quantized_sum(jnp.asarray(x), arrived, config)
  assert got.dtype == jnp.float32 and got.shape == (_D,)
  np.testing.assert_array_equal(got, want)
  # Within the 5 roundings of 1 / (2 scale) and float32's rounding.
  reference = np.clip(x[np.asarray(arrived)].astype(np.float64), -1,
                      1).sum(axis=0)
  np.testing.assert_allclose(got, reference, rtol=0,
                             atol=5 * 0.5 / config.scale + 1e-6)
  expected_clipped = np.mean(np.abs(x[_PART]) > 1.0)
  assert expected_clipped > 0
  np.testing.assert_allclose(metrics['secagg_clipped_fraction'],
                             expected_clipped, rtol=1e-6)


@pytest.mark.parametrize('field', ['recovered_pair_seeds',
                                   'recovered_self_seeds'])
def test_secure_sum_with_corrupted_recovered_seeds_is_wrong(field):
  config = _CONFIG
  inputs = _inputs(0.3)
  x = jnp.asarray(_vectors())
  key = jax.random.key(0)
  seeds = np.array(getattr(inputs, field))
  nonzero = np.argwhere(np.any(seeds != 0, axis=-1))[0]
  seeds[tuple(nonzero)] ^= np.uint32(1)
  corrupted = inputs._replace(**{field: jnp.asarray(seeds)})
  got, _ = sa.secure_sum(x, _IDS, _PART, inputs.arrived, corrupted, key,
                         config)
  want = sa.quantized_sum(x, inputs.arrived, config)
  assert np.mean(np.asarray(got) != np.asarray(want)) > 0.9


@pytest.mark.slow
def test_a_masked_update_looks_uniform():
  """Chi-square over 256 bins: one masked row (8-bit words, and the top 8
  bits of 32-bit words) is uniform; the encoded row it hides is not."""
  d = 20000
  ids = np.array([4, 9, 2], np.int32)
  part = np.ones(3, bool)
  inputs = _inputs(0.0, ids=ids, part=part)
  x = _vectors(n=3, d=d, seed=3, scale=0.05)
  for bits, shift in [(8, 0), (32, 24)]:
    config = sa.SecAggConfig(bits=bits, clip=1.0,
                             scale=sa.max_scale(3, 1.0, bits))
    words = sa.encode(jnp.asarray(x), config)
    masked = sa.mask(words, ids, part, inputs.pair_seeds, inputs.self_seeds,
                     jax.random.key(bits), bits)
    masked_counts = np.bincount(np.asarray(masked[0]) >> shift,
                                minlength=256)
    plain_counts = np.bincount(np.asarray(words[0]) >> shift, minlength=256)
    assert stats.chisquare(masked_counts).pvalue > 1e-3
    assert stats.chisquare(plain_counts).pvalue < 1e-3


def test_secure_sum_under_jit_equals_eager():
  config = _CONFIG
  inputs = _inputs(0.3, seed=4)
  x = jnp.asarray(_vectors(seed=4))
  key = jax.random.key(4)
  eager, eager_metrics = sa.secure_sum(x, _IDS, _PART, inputs.arrived,
                                       inputs, key, config)
  jitted = jax.jit(lambda *a: sa.secure_sum(*a, config))
  got, metrics = jitted(x, jnp.asarray(_IDS), jnp.asarray(_PART),
                        inputs.arrived, inputs, key)
  np.testing.assert_array_equal(got, eager)
  np.testing.assert_array_equal(metrics['secagg_clipped_fraction'],
                                eager_metrics['secagg_clipped_fraction'])
  np.testing.assert_array_equal(
      got, sa.quantized_sum(x, inputs.arrived, config))
