"""Tests of fedjax_core.data.sampling."""

import numpy as np
import pytest

from fedjax_core.data import sampling


def test_same_seed_and_round_give_the_same_cohort():
  """The cohort is a pure function of (seed, round)."""
  a = sampling.sample_clients(seed=3, round_num=7, num_clients=50,
                              clients_per_round=5)
  b = sampling.sample_clients(seed=3, round_num=7, num_clients=50,
                              clients_per_round=5)
  np.testing.assert_array_equal(a, b)


def test_different_round_or_seed_gives_a_different_cohort():
  """Changing the round or the seed changes the cohort."""
  base = sampling.sample_clients(0, 0, 100, 10)
  other_round = sampling.sample_clients(0, 1, 100, 10)
  other_seed = sampling.sample_clients(1, 0, 100, 10)
  assert not np.array_equal(base, other_round)
  assert not np.array_equal(base, other_seed)


@pytest.mark.parametrize('seed,round_num', [(0, 0), (1, 5), (42, 1000)])
def test_cohort_is_sorted_distinct_in_range_and_sized(seed, round_num):
  """Ids are strictly increasing (sorted, distinct) int64s in [0, N)."""
  ids = sampling.sample_clients(seed, round_num, num_clients=20,
                                clients_per_round=7)
  assert ids.shape == (7,)
  assert ids.dtype == np.int64
  assert np.all(np.diff(ids) > 0)
  assert ids.min() >= 0 and ids.max() < 20


def test_full_cohort_returns_every_client():
  """A cohort as large as the population is the whole population."""
  ids = sampling.sample_clients(5, 2, num_clients=6, clients_per_round=6)
  np.testing.assert_array_equal(ids, np.arange(6))


@pytest.mark.parametrize('clients_per_round', [0, -1, 11])
def test_invalid_cohort_size_raises_naming_the_population(clients_per_round):
  """A cohort outside [1, N] raises, and the message names N."""
  with pytest.raises(ValueError, match=r'population size 10, got '
                     + str(clients_per_round)):
    sampling.sample_clients(0, 0, num_clients=10,
                            clients_per_round=clients_per_round)


def test_inclusion_frequency_is_approximately_uniform():
  """Over 2000 rounds of 3-of-10 each client is in ~30% of the cohorts."""
  rounds, n, k = 2000, 10, 3
  counts = np.zeros(n)
  for r in range(rounds):
    counts[sampling.sample_clients(11, r, n, k)] += 1
  p = k / n
  expected = rounds * p
  sd = np.sqrt(rounds * p * (1 - p))  # ~20.5 under Binomial(2000, 0.3).
  assert np.all(np.abs(counts - expected) < 5 * sd), counts
  # Chi-square with the (1 - p) correction for sampling without replacement;
  # ~chi2(9), whose 99.99% quantile is ~33.7.
  chi2 = np.sum((counts - expected) ** 2) / (expected * (1 - p))
  assert chi2 < 34.0, (chi2, counts)


def test_bernoulli_is_a_pure_function_of_seed_and_round():
  a = sampling.sample_bernoulli(3, 7, 1000, 0.05)
  np.testing.assert_array_equal(a, sampling.sample_bernoulli(3, 7, 1000, 0.05))
  assert not np.array_equal(a, sampling.sample_bernoulli(3, 8, 1000, 0.05))
  assert np.all(np.diff(a) > 0) and 0 <= a[0] and a[-1] < 1000


def test_bernoulli_cohort_sizes_follow_the_binomial():
  sizes = [len(sampling.sample_bernoulli(0, r, 400, 0.05))
           for r in range(400)]
  assert abs(np.mean(sizes) - 20) < 1.0  # sd of the mean: sqrt(19)/20.
  assert abs(np.var(sizes) - 19) < 5.0


def test_bernoulli_never_returns_an_empty_cohort():
  for r in range(50):  # P(empty) = 0.9**10 = 0.35 a draw.
    assert len(sampling.sample_bernoulli(1, r, 10, 0.1)) >= 1


def test_bernoulli_capacity_bounds_the_cohort():
  capacity = sampling.bernoulli_capacity(400, 0.05)
  assert 20 < capacity <= 400
  assert max(len(sampling.sample_bernoulli(0, r, 400, 0.05))
             for r in range(400)) <= capacity
  assert sampling.bernoulli_capacity(10, 1.0) == 10
  with pytest.raises(ValueError, match='participation rate'):
    sampling.sample_bernoulli(0, 0, 10, 0.0)
