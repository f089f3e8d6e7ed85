"""Tests of fedjax_core.channel.shamir."""

import itertools

import numpy as np
import pytest

from fedjax_core.channel import shamir

PRIME = 2**127 - 1


def test_prime_is_the_mersenne_prime():
  assert shamir.PRIME == PRIME


def test_reconstruct_interpolates_a_hand_written_polynomial():
  """f(x) = 5 + 7 x + 2 x^2 gives f(1) = 14, f(2) = 27, f(4) = 65; and a
  polynomial whose values wrap the field still interpolates to f(0)."""
  assert shamir.reconstruct([(1, 14), (2, 27), (4, 65)]) == 5
  assert shamir.reconstruct([(4, 65), (1, 14), (2, 27)]) == 5
  # f(x) = (PRIME - 1) + 3 x mod PRIME: f(1) = 2, f(5) = 14.
  assert shamir.reconstruct([(1, 2), (5, 14)]) == PRIME - 1


def test_split_evaluates_a_polynomial_with_the_secret_at_zero():
  """Shares of a 3-of-n split lie on one quadratic: the finite differences
  of f at x = 1..5 have a constant second difference mod PRIME, and
  threshold 1 gives the secret at every point."""
  rng = np.random.default_rng(0)
  secret = 123456789
  ys = [y for _, y in shamir.split(secret, [1, 2, 3, 4, 5], 3, rng)]
  second = [(ys[k + 2] - 2 * ys[k + 1] + ys[k]) % PRIME for k in range(3)]
  assert len(set(second)) == 1
  # f(0) by extrapolation of a quadratic: f(0) = 3 f(1) - 3 f(2) + f(3).
  assert (3 * ys[0] - 3 * ys[1] + ys[2]) % PRIME == secret
  constant = shamir.split(secret, [1, 7, 9], 1, rng)
  assert constant == [(1, secret), (7, secret), (9, secret)]


@pytest.mark.parametrize('secret', [0, 1, 2**64 + 12345, PRIME - 1])
def test_any_t_of_n_shares_reconstruct_the_secret(secret):
  rng = np.random.default_rng(1)
  n, t = 6, 3
  shares = shamir.split(secret, [3, 1, 8, 2, 10, 6], t, rng)
  assert len(shares) == n
  for size in range(t, n + 1):
    for subset in itertools.combinations(shares, size):
      assert shamir.reconstruct(subset) == secret


def test_fewer_than_t_shares_give_another_value():
  """t - 1 shares of a t-of-n split interpolate a lower-degree polynomial,
  whose value at 0 is (almost surely) not the secret."""
  rng = np.random.default_rng(2)
  secret = 2**100 + 7
  t = 4
  shares = shamir.split(secret, range(1, 8), t, rng)
  for subset in itertools.combinations(shares, t - 1):
    assert shamir.reconstruct(subset) != secret
  assert shamir.reconstruct(shares[:t]) == secret


def test_split_of_only_the_points_read_matches_the_full_split():
  """Evaluating only some points draws the same polynomial (the rng is
  consumed by the coefficients, not by the points)."""
  full = shamir.split(99, [1, 2, 3, 4, 5], 3, np.random.default_rng(3))
  part = shamir.split(99, [2, 5], 3, np.random.default_rng(3))
  assert part == [full[1], full[4]]


def test_split_is_deterministic_in_the_rng_and_coefficients_are_random():
  a = shamir.split(5, [1, 2], 2, np.random.default_rng(4))
  b = shamir.split(5, [1, 2], 2, np.random.default_rng(4))
  c = shamir.split(5, [1, 2], 2, np.random.default_rng(5))
  assert a == b
  assert a != c
  assert all(0 <= y < PRIME for _, y in a + c)


@pytest.mark.parametrize('kwargs, match', [
    ({'secret': PRIME}, 'secret'),
    ({'secret': -1}, 'secret'),
    ({'threshold': 0}, 'threshold'),
    ({'xs': [1, 0, 2]}, 'points'),
    ({'xs': [1, 2, 2]}, 'distinct'),
    ({'xs': [1, PRIME]}, 'points'),
])
def test_split_refuses_bad_arguments(kwargs, match):
  args = {'secret': 3, 'xs': [1, 2, 3], 'threshold': 2,
          'rng': np.random.default_rng(0)}
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    shamir.split(**args)


def test_reconstruct_refuses_no_shares_and_repeated_points():
  with pytest.raises(ValueError, match='at least one'):
    shamir.reconstruct([])
  with pytest.raises(ValueError, match='distinct'):
    shamir.reconstruct([(1, 2), (1, 3)])
