"""t-of-n Shamir secret sharing over the prime field of p = 2**127 - 1.

Shamir 1979, "How to Share a Secret" (CACM): the secret is f(0) of a random
polynomial f of degree t - 1 over GF(p); a share is a point (x, f(x)), any t
shares determine f (Lagrange interpolation) and t - 1 shares reveal nothing
of f(0). Bonawitz et al. 2017 (CCS) use it to let the server recover the
masks of dropped clients in secure aggregation (`secagg_protocol`).

Host side, Python integers. The random coefficients come from a numpy
Generator: fine for a simulator, not for real cryptography.
"""

import functools
from typing import Sequence

import numpy as np

PRIME = 2**127 - 1


def _random_element(rng: np.random.Generator) -> int:
  """A uniform element of [0, PRIME) from 32-bit draws (rejection)."""
  while True:
    words = rng.integers(0, 2**32, size=4, dtype=np.uint64)
    value = 0
    for w in words:
      value = (value << 32) | int(w)
    value >>= 1  # 127 bits
    if value < PRIME:
      return value


def split(secret: int, xs: Sequence[int], threshold: int,
          rng: np.random.Generator) -> list[tuple[int, int]]:
  """Shares `secret` so that any `threshold` of the shares reconstruct it.

  Draws f(x) = secret + a_1 x + ... + a_{t-1} x^{t-1} mod PRIME with
  uniform a_k and returns (x, f(x)) for each x in `xs`. The shares of a
  t-of-n sharing are the evaluations at n points; a caller that knows which
  shares will be read may pass only those points (the other shares would
  be computed and never used), so `len(xs)` may be below `threshold`.

  Args:
    secret: the secret, in [0, PRIME).
    xs: distinct nonzero evaluation points in [1, PRIME).
    threshold: t >= 1, the number of shares needed to reconstruct.
    rng: source of the polynomial's coefficients.

  Returns:
    [(x, f(x)) for x in xs].

  Raises:
    ValueError: on a secret out of range, a threshold < 1, or points that
      are zero, out of range or repeated.

  Examples:
    >>> rng = np.random.default_rng(0)
    >>> shares = split(42, [1, 2, 3], 2, rng)
    >>> reconstruct(shares[1:])
    42
  """
  if not 0 <= secret < PRIME:
    raise ValueError(f'secret must be in [0, 2**127 - 1), got {secret}.')
  if threshold < 1:
    raise ValueError(f'threshold must be >= 1, got {threshold}.')
  _check_points(xs)
  coefficients = [secret] + [_random_element(rng)
                             for _ in range(threshold - 1)]
  shares = []
  for x in xs:
    y = 0
    for c in reversed(coefficients):  # Horner's rule.
      y = (y * x + c) % PRIME
    shares.append((int(x), y))
  return shares


def _check_points(xs: Sequence[int]) -> None:
  points = [int(x) for x in xs]
  if any(not 0 < x < PRIME for x in points):
    raise ValueError(f'share points must be in [1, 2**127 - 1), got {xs}.')
  if len(set(points)) != len(points):
    raise ValueError(f'share points must be distinct, got {xs}.')


@functools.lru_cache(maxsize=64)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
  """Weights w_k = prod_{m != k} x_m / (x_m - x_k) mod PRIME, so that
  f(0) = sum_k w_k f(x_k). Cached: a server that reconstructs many secrets
  from the same holders' shares computes them once."""
  weights = []
  for k, xk in enumerate(xs):
    num, den = 1, 1
    for m, xm in enumerate(xs):
      if m != k:
        num = num * xm % PRIME
        den = den * (xm - xk) % PRIME
    weights.append(num * pow(den, -1, PRIME) % PRIME)
  return tuple(weights)


def reconstruct(shares: Sequence[tuple[int, int]]) -> int:
  """f(0) from shares (x, f(x)) by Lagrange interpolation mod PRIME.

  With at least `threshold` shares of one `split` this is the secret; with
  fewer it is (almost surely) some other field element: nothing here can
  tell, so callers check that they hold enough shares.

  Args:
    shares: (x, y) pairs with distinct nonzero x.

  Returns:
    sum_k y_k prod_{m != k} x_m / (x_m - x_k) mod PRIME.

  Raises:
    ValueError: on no shares or bad points.
  """
  if not shares:
    raise ValueError('reconstruct needs at least one share.')
  xs = tuple(int(x) for x, _ in shares)
  _check_points(xs)
  weights = _lagrange_at_zero(xs)
  return sum(w * int(y) for w, (_, y) in zip(weights, shares)) % PRIME
