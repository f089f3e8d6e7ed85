"""Cohort sampling as a pure function of the run seed and the round."""

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
