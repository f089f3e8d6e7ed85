"""Compression of a client's message, as pure jittable JAX functions.

Each compressor takes one flat float32 vector x of static length d (one leaf
of the message, i.e. one layer, of one client; the engine vmaps over the
clients), builds the encoded message, and returns an `Encoded`: what the
server decodes and the encoded size in bytes, counted from the encoded
arrays and the bit widths stated in each docstring.

- `topk`: the k largest-magnitude coordinates, with their indices.
- `qsgd`: QSGD (Alistarh, Grubic, Li, Tomioka and Vojnovic, NeurIPS 2017,
  "QSGD: Communication-Efficient SGD via Gradient Quantization and
  Encoding"): unbiased stochastic rounding of |x_i| / ||x||_2 to s levels.
- `sign`: the scaled sign of EF-SignSGD (Karimireddy, Rebjock, Stich and
  Jaggi, ICML 2019, "Error Feedback Fixes SignSGD and other Gradient
  Compression Schemes"): (||x||_1 / d) sign(x).
- `with_error_feedback`: error feedback (Seide, Fu, Droppo, Li and Yu,
  Interspeech 2014, "1-Bit Stochastic Gradient Descent and its Application
  to Data-Parallel Distributed Training of Speech DNNs"; Karimireddy et al.
  2019): compress x + residual and keep what the compression lost.
- `fedzip`: FedZip (Malekijoo, Fonseca, Sadri, Cunha and Milani 2021,
  "FedZip: A Compression Framework for Communication-Efficient Federated
  Learning", arXiv 2102.01593): top-z sparsification, k-means clustering of
  the kept values, and the entropy-coded size of the result.

Hyperparameters (fraction, levels, clusters, iterations) are static Python
numbers read while tracing: close over them or mark them static in
`jax.jit`.
"""

import fractions
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

COMPRESSORS = ('none', 'topk', 'qsgd', 'sign', 'fedzip')
_FLOAT_BITS = 32


class Encoded(NamedTuple):
  """A compressed message.

  Attributes:
    decoded: [d] float32, what the server reconstructs.
    num_bytes: float32 scalar, the size of the encoded message.
  """
  decoded: jax.Array
  num_bytes: jax.Array


def _check_flat(x: jax.Array) -> None:
  if x.ndim != 1:
    raise ValueError(f'Compressors take a flat vector, got shape {x.shape}.')


def _num_kept(fraction: float, d: int) -> int:
  """k = ceil(fraction * d), at least 1 since fraction > 0, with `fraction`
  read as the decimal it prints as (0.07 of 100 is 7, not the 8 of float
  arithmetic, where 0.07 * 100 = 7.000000000000001)."""
  if not 0 < fraction <= 1:
    raise ValueError(f'fraction must be in (0, 1], got {fraction!r}.')
  return math.ceil(fractions.Fraction(repr(float(fraction))) * d)


def _index_bits(d: int) -> int:
  """ceil(log2 d): the bits of an index into d coordinates (0 for d = 1)."""
  return (d - 1).bit_length()


def _whole_bytes(bits: int) -> jax.Array:
  """The bytes holding `bits` bits, packed: ceil(bits / 8), as float32
  (computed on Python ints, so exact for any layer size)."""
  return jnp.float32(-(-bits // 8))


def _top_magnitudes(x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """The values and int32 indices of the k largest |x_i| (lax.top_k)."""
  _, indices = jax.lax.top_k(jnp.abs(x), k)
  return x[indices], indices


def _scatter(values: jax.Array, indices: jax.Array, d: int) -> jax.Array:
  return jnp.zeros((d,), jnp.float32).at[indices].set(values)


def identity(x: jax.Array) -> Encoded:
  """No compression: d float32 values, 4 d bytes.

  Examples:
    >>> identity(jnp.array([1.0, -2.0])).num_bytes
    Array(8., dtype=float32)
  """
  _check_flat(x)
  x = jnp.asarray(x, jnp.float32)
  return Encoded(x, _whole_bytes(x.size * _FLOAT_BITS))


def topk(x: jax.Array, fraction: float) -> Encoded:
  """Top-k sparsification: the k largest-magnitude coordinates, 0 elsewhere.

  k = ceil(fraction * d) (at least 1, as fraction > 0); ties go to the
  lower index (lax.top_k).
  Error feedback, if wanted, is the caller's (`with_error_feedback`).

  Encoding: k float32 values and k indices of ceil(log2 d) bits each,
  packed, rounded up to whole bytes: ceil((32 k + k ceil(log2 d)) / 8).

  Args:
    x: [d] float32.
    fraction: share of coordinates kept, in (0, 1] (static).

  Returns:
    The decoded [d] vector and the encoded size.

  Examples:
    >>> enc = topk(jnp.array([0.1, -5.0, 3.0, 0.2]), 0.5)
    >>> enc.decoded.tolist(), float(enc.num_bytes)
    ([0.0, -5.0, 3.0, 0.0], 9.0)
  """
  _check_flat(x)
  x = jnp.asarray(x, jnp.float32)
  d = x.size
  values, indices = _top_magnitudes(x, _num_kept(fraction, d))
  bits = values.size * _FLOAT_BITS + indices.size * _index_bits(d)
  return Encoded(_scatter(values, indices, d), _whole_bytes(bits))


def qsgd(x: jax.Array, key: jax.Array, levels: int) -> Encoded:
  """QSGD's unbiased stochastic quantization with s = `levels` levels.

  xi_i = floor(s |x_i| / ||x||_2), plus 1 with probability equal to the
  fractional part of s |x_i| / ||x||_2, so E[xi_i] = s |x_i| / ||x||_2; the
  server decodes ||x||_2 sign(x_i) xi_i / s, whose expectation is x. x = 0
  encodes as norm 0 and decodes to 0.

  Encoding: one float32 norm, then per coordinate one sign bit and the level
  xi_i in {0..s} as a fixed-length ceil(log2(s + 1))-bit word, packed,
  rounded up to whole bytes: ceil((32 + d (1 + ceil(log2(s + 1)))) / 8).
  Alistarh et al.'s Elias coding of the levels would be smaller when most
  levels are 0 (few levels, large d); this is the fixed-length size.

  Args:
    x: [d] float32.
    key: the PRNG key of the rounding.
    levels: s >= 1 (static).

  Returns:
    The decoded [d] vector and the encoded size.

  Examples:
    >>> enc = qsgd(jnp.array([3.0, -4.0]), jax.random.key(0), levels=5)
    >>> enc.decoded.tolist(), float(enc.num_bytes)
    ([3.0, -4.0], 5.0)
  """
  _check_flat(x)
  if levels < 1:
    raise ValueError(f'levels must be >= 1, got {levels}.')
  x = jnp.asarray(x, jnp.float32)
  norm = jnp.linalg.norm(x)
  safe_norm = jnp.where(norm > 0, norm, 1.0)
  # Rounding can put |x_i| / ||x|| a hair above 1; the top level is s.
  scaled = jnp.clip(levels * jnp.abs(x) / safe_norm, 0, levels)
  lower = jnp.floor(scaled)
  up = jax.random.bernoulli(key, scaled - lower)
  level_words = (lower + up).astype(jnp.int32)
  negative = x < 0
  magnitude = norm * level_words.astype(jnp.float32) / levels
  decoded = jnp.where(negative, -magnitude, magnitude)
  bits = (_FLOAT_BITS + negative.size
          + level_words.size * int(levels).bit_length())
  return Encoded(decoded, _whole_bytes(bits))


def sign(x: jax.Array) -> Encoded:
  """EF-SignSGD's scaled sign: (||x||_1 / d) sign(x), sign(0) taken as +1.

  Encoding: d sign bits and one float32 scale ||x||_1 / d, packed, rounded
  up to whole bytes: ceil((d + 32) / 8).

  Args:
    x: [d] float32.

  Returns:
    The decoded [d] vector and the encoded size.

  Examples:
    >>> enc = sign(jnp.array([1.0, -2.0, 0.0, 3.0]))
    >>> enc.decoded.tolist(), float(enc.num_bytes)
    ([1.5, -1.5, 1.5, 1.5], 5.0)
  """
  _check_flat(x)
  x = jnp.asarray(x, jnp.float32)
  scale = jnp.sum(jnp.abs(x)) / x.size
  negative = x < 0
  decoded = jnp.where(negative, -scale, scale)
  return Encoded(decoded, _whole_bytes(negative.size + _FLOAT_BITS))


def with_error_feedback(compress: Callable[[jax.Array], Encoded],
                        x: jax.Array, residual: jax.Array
                        ) -> tuple[Encoded, jax.Array]:
  """Error feedback: compresses x + residual and keeps what was lost.

  corrected = x + residual; enc = compress(corrected);
  new_residual = corrected - enc.decoded. Over rounds the decoded messages
  plus the last residual sum to the inputs' sum.

  Args:
    compress: a compressor of one [d] vector, e.g.
      `lambda v: topk(v, 0.01)`.
    x: [d] float32, this round's message.
    residual: [d] float32, the residual left by the previous round (zeros
      at first).

  Returns:
    The encoded corrected message and the new residual.

  Examples:
    >>> enc, res = with_error_feedback(sign, jnp.array([1.0, -3.0]),
    ...                                jnp.zeros(2))
    >>> enc.decoded.tolist(), res.tolist()
    ([2.0, -2.0], [-1.0, -1.0])
  """
  corrected = jnp.asarray(x, jnp.float32) + residual
  encoded = compress(corrected)
  return encoded, corrected - encoded.decoded


def _lloyd(values: jax.Array, num_clusters: int, num_iters: int
           ) -> tuple[jax.Array, jax.Array]:
  """1-D k-means of `values`: the centroids and each value's cluster.

  Init: the quantiles (2j + 1) / (2 num_clusters), j = 0..num_clusters-1, of
  `values` (jnp.quantile, linear interpolation). Then `num_iters` Lloyd
  steps: assign each value to its nearest centroid (the lowest index on a
  tie), move each centroid to the mean of its values; an empty cluster
  keeps its centroid. The returned assignment is to the final centroids.
  """
  probs = (2 * jnp.arange(num_clusters) + 1) / (2 * num_clusters)
  centroids = jnp.quantile(values, probs)

  def assign(c):
    return jnp.argmin(jnp.abs(values[:, None] - c[None, :]), axis=1)

  def step(_, c):
    # Segment sums, not a matmul with one-hot rows, which a GPU may round
    # to TF32.
    clusters = assign(c)
    sums = jax.ops.segment_sum(values, clusters, num_clusters)
    counts = jax.ops.segment_sum(jnp.ones_like(values), clusters,
                                 num_clusters)
    return jnp.where(counts > 0, sums / jnp.maximum(counts, 1), c)

  centroids = jax.lax.fori_loop(0, num_iters, step, centroids)
  return centroids, assign(centroids)


def fedzip(x: jax.Array, fraction: float, num_clusters: int,
           num_iters: int = 10) -> Encoded:
  """FedZip: top-z sparsification, k-means clustering, entropy coding.

  1. Keep the z = ceil(fraction * d) >= 1 largest-magnitude coordinates
     (as `topk`), zero the rest.
  2. Cluster the z kept values into k = `num_clusters` centroids by 1-D
     k-means: init at the evenly spaced quantiles (2j + 1) / (2k) of the
     kept values, then `num_iters` Lloyd iterations (an empty cluster keeps
     its centroid); each kept value becomes its centroid.
  3. Size: the d coordinates are d symbols over {zero, cluster 1..k} with
     empirical frequencies n_0 = d - z, n_j = |cluster j|, and cost d H
     bits, H = -sum_j (n_j / d) log2(n_j / d) the empirical Shannon entropy:
     the lower bound that a Huffman or arithmetic coder approaches (the
     symbol counts such a coder also sends are not counted). Plus the
     codebook of k float32 centroids; rounded up to whole bytes:
     ceil((d H + 32 k) / 8).

  Args:
    x: [d] float32.
    fraction: share of coordinates kept, in (0, 1] (static).
    num_clusters: k >= 1 (static).
    num_iters: Lloyd iterations, >= 0 (static).

  Returns:
    The decoded [d] vector (at most k distinct nonzero values, at most z
    nonzeros) and the encoded size.

  Examples:
    >>> enc = fedzip(jnp.array([0.0, 1.0, 1.2, 0.1, -2.0, -2.2, 0.0, 0.2]),
    ...              fraction=0.5, num_clusters=2)
    >>> enc.decoded.tolist(), float(enc.num_bytes)
    ([0.0, 1.100000023841858, 1.100000023841858, 0.0, -2.0999999046325684,
      -2.0999999046325684, 0.0, 0.0], 10.0)
  """
  _check_flat(x)
  if num_clusters < 1:
    raise ValueError(f'num_clusters must be >= 1, got {num_clusters}.')
  if num_iters < 0:
    raise ValueError(f'num_iters must be >= 0, got {num_iters}.')
  x = jnp.asarray(x, jnp.float32)
  d = x.size
  values, indices = _top_magnitudes(x, _num_kept(fraction, d))
  centroids, clusters = _lloyd(values, num_clusters, num_iters)
  decoded = _scatter(centroids[clusters], indices, d)
  counts = jnp.concatenate([
      jnp.full((1,), d - values.size, jnp.float32),
      jnp.bincount(clusters, length=num_clusters).astype(jnp.float32)])
  freqs = counts / d
  entropy = -jnp.sum(jnp.where(
      counts > 0, freqs * jnp.log2(jnp.where(counts > 0, freqs, 1.0)), 0.0))
  bits = d * entropy + centroids.size * _FLOAT_BITS
  return Encoded(decoded, jnp.ceil(bits / 8))


def compress(name: str, x: jax.Array, key: jax.Array, residual: jax.Array,
             *, fraction: float = 0.01, levels: int = 16,
             num_clusters: int = 3) -> tuple[Encoded, jax.Array]:
  """Compresses x with the named compressor of `COMPRESSORS`.

  'topk' and 'sign' run under error feedback with `residual`; 'none',
  'qsgd' and 'fedzip' ignore it and return it unchanged.

  Args:
    name: one of `COMPRESSORS` (static).
    x: [d] float32.
    key: PRNG key (read by 'qsgd' only).
    residual: [d] float32 error-feedback residual.
    fraction: share kept by 'topk' and 'fedzip' (static).
    levels: QSGD's s (static).
    num_clusters: FedZip's k (static).

  Returns:
    The encoded message and the new residual.

  Raises:
    ValueError: if `name` is not in `COMPRESSORS`.

  Examples:
    >>> enc, res = compress('topk', jnp.array([1.0, -3.0]), None,
    ...                     jnp.zeros(2), fraction=0.5)
    >>> enc.decoded.tolist(), res.tolist()
    ([0.0, -3.0], [1.0, 0.0])
  """
  if name == 'none':
    return identity(x), residual
  if name == 'topk':
    return with_error_feedback(lambda v: topk(v, fraction), x, residual)
  if name == 'qsgd':
    return qsgd(x, key, levels), residual
  if name == 'sign':
    return with_error_feedback(sign, x, residual)
  if name == 'fedzip':
    return fedzip(x, fraction, num_clusters), residual
  raise ValueError(f'Unknown compressor {name!r}; valid: '
                   f'{", ".join(COMPRESSORS)}.')
