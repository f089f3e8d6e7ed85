"""Tests of fedjax_core.channel.compression against numpy and hand computations."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.channel import compression as cp
from fedjax_core.channel import uplink

# Jitted once per shape and setting: eager op-by-op dispatch is slower.
_topk = jax.jit(cp.topk, static_argnums=1)
_qsgd = jax.jit(cp.qsgd, static_argnums=2)
_sign = jax.jit(cp.sign)
_fedzip = jax.jit(cp.fedzip, static_argnums=(1, 2, 3))
_compress = jax.jit(cp.compress, static_argnums=0,
                    static_argnames=('fraction', 'levels', 'num_clusters'))


def _normal(d, seed=0, n=None):
  shape = (d,) if n is None else (n, d)
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _np_topk(x, k):
  """Independent top-k: the k largest |x_i|, lower index first on ties."""
  kept = np.argsort(-np.abs(x), kind='stable')[:k]
  out = np.zeros_like(x)
  out[kept] = x[kept]
  return out


def _np_fedzip(x, z, num_clusters, num_iters):
  """FedZip in float64 numpy: top-z, quantile init, Lloyd, entropy bytes."""
  d = x.size
  kept = np.argsort(-np.abs(x), kind='stable')[:z]
  values = x[kept].astype(np.float64)
  probs = (2 * np.arange(num_clusters) + 1) / (2 * num_clusters)
  c = np.quantile(values, probs)
  for _ in range(num_iters):
    assign = np.argmin(np.abs(values[:, None] - c[None, :]), axis=1)
    for j in range(num_clusters):
      if np.any(assign == j):
        c[j] = values[assign == j].mean()
  assign = np.argmin(np.abs(values[:, None] - c[None, :]), axis=1)
  decoded = np.zeros(d)
  decoded[kept] = c[assign]
  counts = np.array([d - z] + [np.sum(assign == j)
                               for j in range(num_clusters)], np.float64)
  p = counts[counts > 0] / d
  entropy = -np.sum(p * np.log2(p))
  return decoded, math.ceil((d * entropy + 32 * num_clusters) / 8)


# Identity and top-k.


def test_identity_is_lossless_at_four_bytes_a_float():
  x = _normal(7)
  enc = jax.jit(cp.identity)(x)
  np.testing.assert_array_equal(enc.decoded, x)
  assert float(enc.num_bytes) == 28


def test_topk_by_hand():
  """k = ceil(0.5 * 6) = 3; 3 float32 values and 3 indices of
  ceil(log2 6) = 3 bits: 96 + 9 = 105 bits -> 14 bytes."""
  x = jnp.array([0.1, -5.0, 3.0, 0.2, -4.0, 1.0])
  enc = _topk(x, 0.5)
  np.testing.assert_array_equal(enc.decoded, [0, -5, 3, 0, -4, 0])
  assert float(enc.num_bytes) == 14
  assert enc.num_bytes.dtype == jnp.float32


@pytest.mark.parametrize('fraction, d, k, num_bytes', [
    # 10 values, 10-bit indices: 320 + 100 = 420 bits -> 52.5 -> 53.
    (0.01, 1000, 10, 53),
    # 0.07 * 100 is 7.000000000000001 in floats; k is 7. 7-bit indices:
    # 224 + 49 = 273 bits -> 34.125 -> 35.
    (0.07, 100, 7, 35),
    # Never fewer than one: 32 + 3 bits -> 5 bytes.
    (0.01, 6, 1, 5),
    # Keep all: 5 * 32 + 5 * 3 = 175 bits -> 22 bytes.
    (1.0, 5, 5, 22),
    # d = 1: an index needs 0 bits; one float32.
    (0.5, 1, 1, 4),
])
def test_topk_matches_numpy_and_counts_bytes(fraction, d, k, num_bytes):
  x = _normal(d, seed=d)
  enc = _topk(jnp.asarray(x), fraction)
  np.testing.assert_array_equal(enc.decoded, _np_topk(x, k))
  assert np.count_nonzero(enc.decoded) == k
  assert float(enc.num_bytes) == num_bytes


# QSGD.


def test_qsgd_on_levels_exactly_by_hand():
  """x = (3, -4, 0), ||x|| = 5, s = 5: s|x|/||x|| = (3, 4, 0) are levels,
  so nothing is random. 32 + 3 * (1 + ceil(log2 6) = 3) = 44 bits -> 6."""
  enc = _qsgd(jnp.array([3.0, -4.0, 0.0]), jax.random.key(0), 5)
  np.testing.assert_array_equal(enc.decoded, [3.0, -4.0, 0.0])
  assert float(enc.num_bytes) == 6


def test_qsgd_rounds_to_the_two_neighbouring_levels():
  """x = (1, 2, -2), ||x|| = 3, s = 4: s|x|/||x|| = (4/3, 8/3, 8/3), so
  the levels are {1, 2}, {2, 3}, {2, 3} and ||x|| / s = 0.75."""
  x = jnp.array([1.0, 2.0, -2.0])
  keys = jax.random.split(jax.random.key(1), 400)
  decoded = np.asarray(jax.vmap(lambda k: _qsgd(x, k, 4).decoded)(keys))
  allowed = [{0.75, 1.5}, {1.5, 2.25}, {-1.5, -2.25}]
  for i, values in enumerate(allowed):
    seen = set(np.round(decoded[:, i], 5).tolist())
    assert seen == values


@pytest.mark.parametrize('d, levels, num_bytes', [
    (10, 16, 12),  # 5-bit levels: 32 + 10 * 6 = 92 bits -> 11.5 -> 12.
    (10, 15, 11),  # 4-bit levels: 32 + 10 * 5 = 82 bits -> 10.25 -> 11.
    (1, 1, 5),  # 1-bit level: 32 + 2 = 34 bits -> 5.
    (100, 256, 129),  # 9 bits: 32 + 1000 = 1032 bits -> 129.
])
def test_qsgd_bytes_by_hand(d, levels, num_bytes):
  enc = _qsgd(jnp.asarray(_normal(d)), jax.random.key(0), levels)
  assert float(enc.num_bytes) == num_bytes


def test_qsgd_level_never_exceeds_s(monkeypatch):
  """In float32, 3 * 1.7 / ||(1.7,)|| = 3 + 2^-22: rounding can put
  s |x_i| / ||x|| above s, where a level s + 1 would not fit its bits.
  Even with a Bernoulli that rounds up wherever it can, the level is s."""
  a = np.float32(1.7)
  assert np.float32(3) * a / np.sqrt(a * a) > 3
  monkeypatch.setattr(jax.random, 'bernoulli', lambda key, p: p > 0)
  enc = cp.qsgd(jnp.array([a]), jax.random.key(0), 3)
  np.testing.assert_allclose(enc.decoded, [a], rtol=1e-6)  # Not 4a / 3.


def test_qsgd_is_unbiased():
  """Mean of n draws vs x, coordinate by coordinate, within 5 standard
  errors: decoded_i = (||x|| / s) sign(x_i) (floor(r_i) + Bernoulli(p_i)),
  r_i = s |x_i| / ||x||, p_i = r_i - floor(r_i), so its variance is
  (||x|| / s)^2 p_i (1 - p_i). s = 2 makes rounding coarse: a biased
  rounding would be off by up to ||x|| / 2."""
  x = _normal(16, seed=3)
  s, n = 2, 20000
  keys = jax.random.split(jax.random.key(7), n)
  draws = jax.jit(jax.vmap(lambda k: cp.qsgd(jnp.asarray(x), k, s).decoded))(
      keys)
  mean = np.asarray(draws, np.float64).mean(axis=0)
  norm = np.linalg.norm(x.astype(np.float64))
  r = s * np.abs(x) / norm
  p = r - np.floor(r)
  stderr = norm / s * np.sqrt(p * (1 - p) / n)
  assert np.all(np.abs(mean - x) <= 5 * stderr + 1e-5 * norm)
  assert np.any(p > 0.1)  # The test does exercise random rounding.


def test_qsgd_of_zero_is_zero_without_nan():
  enc = _qsgd(jnp.zeros(10), jax.random.key(0), 16)
  np.testing.assert_array_equal(enc.decoded, np.zeros(10))
  assert float(enc.num_bytes) == 12  # As for any x of d = 10, s = 16.
  # Not even inside: eagerly, debug_nans checks every operation's output.
  with jax.debug_nans(True):
    cp.qsgd(jnp.zeros(3), jax.random.key(0), 4)


# Sign.


def test_sign_by_hand():
  """||x||_1 / d = 6 / 4 = 1.5, sign(0) = +1; 4 + 32 bits -> 5 bytes."""
  enc = _sign(jnp.array([1.0, -2.0, 0.0, 3.0]))
  np.testing.assert_array_equal(enc.decoded, [1.5, -1.5, 1.5, 1.5])
  assert float(enc.num_bytes) == 5


def test_sign_matches_numpy():
  x = _normal(37)
  enc = _sign(jnp.asarray(x))
  want = np.mean(np.abs(x.astype(np.float64))) * np.where(x < 0, -1, 1)
  np.testing.assert_allclose(enc.decoded, want, rtol=1e-6)
  assert float(enc.num_bytes) == math.ceil((37 + 32) / 8)


# Error feedback.


@pytest.mark.parametrize('name', ['topk', 'sign'])
def test_error_feedback_bookkeeping_over_rounds(name):
  """Each round compresses x_t + r_{t-1} and keeps r_t = x_t + r_{t-1} -
  decoded_t, so sum_t decoded_t + r_T = sum_t x_t."""
  rounds, d = 6, 40
  xs = _normal(d, seed=11, n=rounds)
  residual = np.zeros(d, np.float32)
  total = np.zeros(d)
  for t in range(rounds):
    enc, new_residual = _compress(name, xs[t], jax.random.key(t), residual,
                                  fraction=0.1)
    corrected = xs[t].astype(np.float64) + residual
    if name == 'topk':
      want = _np_topk(corrected, 4)
    else:
      want = np.mean(np.abs(corrected)) * np.where(corrected < 0, -1, 1)
    np.testing.assert_allclose(enc.decoded, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_residual, corrected - want, rtol=1e-5,
                               atol=1e-5)
    residual = np.asarray(new_residual)
    total += np.asarray(enc.decoded, np.float64)
  assert np.abs(residual).max() > 0.1  # Something was carried over.
  np.testing.assert_allclose(total + residual, xs.sum(axis=0), atol=1e-5)


def test_with_error_feedback_compresses_the_corrected_vector():
  x = jnp.array([1.0, -3.0, 0.5])
  residual = jnp.array([0.0, 2.5, 0.0])
  enc, new = cp.with_error_feedback(lambda v: _topk(v, 0.34), x, residual)
  # corrected = (1, -0.5, 0.5); k = ceil(1.02) = 2 keeps 1 and -0.5.
  np.testing.assert_array_equal(enc.decoded, [1.0, -0.5, 0.0])
  np.testing.assert_array_equal(new, [0.0, 0.0, 0.5])


# FedZip.


def test_fedzip_by_hand():
  """z = 4 of d = 8 kept: -2.2, -2, 1.2, 1. Init at the quantiles 1/4 and
  3/4: -2.05 and 1.05; Lloyd gives -2.1 and 1.1. Symbols: 4 zeros, 2 + 2
  clustered: H = 1/2 + 2 (1/4) 2 = 1.5 bits; 8 * 1.5 + 2 * 32 = 76 bits
  -> 9.5 -> 10 bytes."""
  x = jnp.array([0.0, 1.0, 1.2, 0.1, -2.0, -2.2, 0.0, 0.2])
  enc = _fedzip(x, 0.5, 2)
  np.testing.assert_allclose(enc.decoded,
                             [0, 1.1, 1.1, 0, -2.1, -2.1, 0, 0], rtol=1e-6)
  assert float(enc.num_bytes) == 10


def test_fedzip_empty_cluster_keeps_its_centroid():
  """All 8 values kept: 0.5, six 1s, 9; 3 clusters. The quantiles 1/6, 1/2,
  5/6 are all 1, every value ties to cluster 0, and step 1 gives centroids
  (15.5 / 8, 1, 1): clusters 1 and 2 were empty and kept their 1. Step 2:
  0.5 and the 1s go to cluster 1, 9 to cluster 0: (9, 6.5 / 7, 1), cluster
  2 empty again. Step 3: the 1s move to cluster 2: (9, 0.5, 1), a fixed
  point, so the decoded vector is x. (Had empty clusters moved to 0, the
  1s would have gone to cluster 0 in step 2 and ended at 6.5 / 7.)
  Symbols 1, 1 and 6 of 8: H = 2 (3 / 8) + (6 / 8) log2(8 / 6) = 1.0613;
  8 H + 96 = 104.49 bits -> 14 bytes."""
  x = jnp.array([1.0, 1.0, 0.5, 1.0, 1.0, 9.0, 1.0, 1.0])
  enc = _fedzip(x, 1.0, 3)
  np.testing.assert_allclose(enc.decoded, x, rtol=1e-6)
  assert float(enc.num_bytes) == 14


@pytest.mark.parametrize('d, fraction, z, num_clusters, num_iters', [
    (500, 0.1, 50, 4, 10),
    (300, 0.2, 60, 1, 10),
    (300, 0.2, 60, 8, 0),
    (50, 0.01, 1, 3, 10),  # More clusters than values.
])
def test_fedzip_matches_a_numpy_lloyd_loop(d, fraction, z, num_clusters,
                                          num_iters):
  x = _normal(d, seed=d + num_clusters)
  enc = _fedzip(jnp.asarray(x), fraction, num_clusters, num_iters)
  want, want_bytes = _np_fedzip(x, z, num_clusters, num_iters)
  np.testing.assert_allclose(enc.decoded, want, rtol=1e-5, atol=1e-6)
  assert float(enc.num_bytes) == want_bytes
  decoded = np.asarray(enc.decoded)
  nonzero = np.flatnonzero(decoded)
  assert len(np.unique(decoded[nonzero])) <= num_clusters
  assert set(nonzero) <= set(np.argsort(-np.abs(x), kind='stable')[:z])


def test_fedzip_of_zero_is_zero():
  """Of the d = 10 symbols, 9 are the sparsifier's zeros and 1 is the kept
  0, in cluster 0: H = -(0.9 log2 0.9 + 0.1 log2 0.1) = 0.469 bits."""
  enc = _fedzip(jnp.zeros(10), 0.1, 3)
  np.testing.assert_array_equal(enc.decoded, np.zeros(10))
  h = -(0.9 * math.log2(0.9) + 0.1 * math.log2(0.1))
  assert float(enc.num_bytes) == math.ceil((10 * h + 96) / 8)


# The dispatcher, under jit and vmap.


def _np_expected(name, x, residual):
  """What `compress(name, ...)` with fraction 0.1, s = 8 and 3 clusters
  should give for d = 64: (decoded or None, bytes, new residual)."""
  if name == 'none':
    return x, 4 * 64, residual
  if name == 'qsgd':  # Random: its decoded value is checked against qsgd.
    return None, 44, residual  # 4-bit levels: 32 + 64 * 5 bits.
  if name == 'fedzip':
    decoded, num_bytes = _np_fedzip(x, 7, 3, 10)
    return decoded, num_bytes, residual
  corrected = x.astype(np.float64) + residual
  if name == 'topk':  # k = 7: 7 * 32 + 7 * 6 = 266 bits -> 34 bytes.
    decoded, num_bytes = _np_topk(corrected, 7), 34
  else:  # sign: 64 + 32 bits.
    scale = np.mean(np.abs(corrected))
    decoded, num_bytes = scale * np.where(corrected < 0, -1, 1), 12
  return decoded, num_bytes, corrected - decoded


@pytest.mark.parametrize('name', cp.COMPRESSORS)
def test_compress_dispatches_under_jit_and_vmap(name):
  """A batch of clients through jit(vmap(compress)): each row is what the
  named compressor gives that client alone; top-k and sign run on x +
  residual and return the new residual, the others return it unchanged."""
  clients, d = 4, 64
  xs = _normal(d, seed=5, n=clients)
  residuals = 0.5 * _normal(d, seed=6, n=clients)
  keys = jax.random.split(jax.random.key(2), clients)
  batched = jax.jit(jax.vmap(functools.partial(
      cp.compress, name, fraction=0.1, levels=8, num_clusters=3)))
  enc, new = batched(jnp.asarray(xs), keys, jnp.asarray(residuals))
  assert enc.decoded.shape == (clients, d)
  assert enc.num_bytes.shape == (clients,)
  assert enc.num_bytes.dtype == jnp.float32
  for i in range(clients):
    decoded, num_bytes, residual = _np_expected(name, xs[i], residuals[i])
    if decoded is None:
      decoded = _qsgd(jnp.asarray(xs[i]), keys[i], 8).decoded
    np.testing.assert_allclose(enc.decoded[i], decoded, rtol=1e-5,
                               atol=1e-6)
    assert float(enc.num_bytes[i]) == num_bytes
    np.testing.assert_allclose(new[i], residual, rtol=1e-5, atol=1e-6)


def test_unknown_compressor_lists_the_valid_ones():
  with pytest.raises(ValueError, match='none, topk, qsgd, sign, fedzip'):
    cp.compress('gzip', jnp.zeros(3), jax.random.key(0), jnp.zeros(3))


@pytest.mark.parametrize('call', [
    lambda: cp.topk(jnp.zeros(3), 0.0),
    lambda: cp.topk(jnp.zeros(3), 1.5),
    lambda: cp.qsgd(jnp.zeros(3), jax.random.key(0), 0),
    lambda: cp.fedzip(jnp.zeros(3), 0.5, 0),
    lambda: cp.sign(jnp.zeros((2, 3))),
])
def test_bad_hyperparameters_are_refused(call):
  with pytest.raises(ValueError):
    call()


@pytest.mark.parametrize('kwargs, setting, message', [
    (dict(compressor='gzip'), 'uplink.compressor',
     "Unknown compressor 'gzip'; valid: none, topk, qsgd, sign, fedzip"),
    (dict(compressor='topk', fraction=0.0), 'uplink.fraction',
     r'fraction .* must be in \(0, 1\], got 0.0'),
    (dict(compressor='qsgd', levels=0), 'uplink.levels',
     'levels must be >= 1, got 0'),
    (dict(compressor='fedzip', num_clusters=0), 'uplink.num_clusters',
     'clusters per layer must be >= 1, got 0'),
    (dict(momentum=1.0), 'uplink.momentum',
     r'momentum beta must be in \[0, 1\)'),
])
def test_bad_uplink_settings_name_their_setting(kwargs, setting, message):
  with pytest.raises(ValueError, match=message) as error:
    uplink.Uplink(**kwargs)
  assert error.value.setting == setting
  assert '--' not in str(error.value)
