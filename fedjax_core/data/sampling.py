"""Cohort sampling as a pure function of the run seed and the round."""

import itertools
import math

import numpy as np


def sample_clients(seed: int, round_num: int, num_clients: int,
                   clients_per_round: int) -> np.ndarray:
  """Uniformly samples a cohort without replacement.

  The cohort depends only on `(seed, round_num)`, so a resumed run samples
  the same clients as an uninterrupted one.

  Args:
    seed: the run seed.
    round_num: the round, counted from 0.
    num_clients: population size.
    clients_per_round: cohort size, at most `num_clients`.

  Returns:
    `[clients_per_round]` sorted int64 client ids, all distinct.

  Examples:
    >>> sample_clients(seed=0, round_num=3, num_clients=100,
    ...                clients_per_round=4).shape
    (4,)
  """
  if not 1 <= clients_per_round <= num_clients:
    raise ValueError(
        f'clients_per_round must be between 1 and the population size '
        f'{num_clients}, got {clients_per_round}.')
  rng = np.random.default_rng((seed, round_num))
  return np.sort(rng.choice(num_clients, clients_per_round, replace=False))


def sample_bernoulli(seed: int, round_num: int, num_clients: int,
                     rate: float, allow_empty: bool = False) -> np.ndarray:
  """Each client takes part independently with probability `rate`.

  As FL-Simulator's `_activate_clients_`, an empty draw is redrawn, so every
  round has at least one client, unless `allow_empty`: DP accounting of
  Poisson sampling needs the draw exactly as it fell. A pure function of
  `(seed, round_num)`.

  Returns:
    Sorted int64 ids of the participating clients (at least one unless
    `allow_empty`).

  Examples:
    >>> ids = sample_bernoulli(seed=0, round_num=3, num_clients=100, rate=0.1)
  """
  if not 0 < rate <= 1:
    raise ValueError(f'The participation rate must be in (0, 1], got {rate}.')
  for attempt in itertools.count():
    rng = np.random.default_rng((seed, round_num, attempt))
    ids = np.flatnonzero(rng.random(num_clients) < rate)
    if len(ids) or allow_empty:
      return ids


def bernoulli_capacity(num_clients: int, rate: float) -> int:
  """A cohort size that Bernoulli participation rarely exceeds.

  The mean plus 6.1 standard deviations of Binomial(num_clients, rate), plus
  one, within [1, num_clients]: exceeded with probability about 2e-8 for a
  mean cohort of 5 and less for larger ones. Cohorts are padded to it so the
  round compiles once; a larger draw is padded to its own size (one more
  compile), never cut.
  """
  mean = num_clients * rate
  std = math.sqrt(num_clients * rate * (1 - rate))
  return max(1, min(num_clients, math.ceil(mean + 6.1 * std) + 1))
