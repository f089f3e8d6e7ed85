"""Privacy accounting of DP-FedAvg and DP-SGD through `dp-accounting`.

Every epsilon here comes from Google's `dp_accounting` library (RDP or PLD
accountant of the sampled Gaussian mechanism); nothing is re-derived.

- Client level, Poisson sampling (each client takes part with probability
  q = m / N): `PoissonSampledDpEvent(q, GaussianDpEvent(z))` per round under
  add-or-remove-one neighbours, as McMahan et al. (ICLR 2018) account it.
- Client level, fixed-size sampling (m of N without replacement):
  `SampledWithoutReplacementDpEvent(N, m, GaussianDpEvent(z / 2))` under
  replace-one neighbours (Wang, Balle and Kasiviswanathan, AISTATS 2019),
  RDP only. Replacing one client moves the clipped sum by up to 2S, so the
  noise std z S is z / 2 times that sensitivity.
- Sample level (DP-SGD on each client, Abadi et al. 2016): per client,
  `PoissonSampledDpEvent(B / n_i, GaussianDpEvent(z))` once per local step,
  the client assumed to take part in every round (an upper bound). The
  engine's batches are shuffled epochs, not Poisson samples; the accounting
  is the usual approximation of DP-SGD practice.
"""

import dataclasses
import math

import dp_accounting
import numpy as np
from dp_accounting import pld
from dp_accounting import rdp

ACCOUNTANTS = ('rdp', 'pld')
SAMPLINGS = ('fixed', 'poisson')
MAX_SAMPLE_LEVEL_GROUPS = 64
# Below this, PLD's discretisation needs tens of GiB (measured at z = 1e-3).
_LOWEST_CALIBRATED_Z = 0.1


def _fresh_accountant(name: str, neighbors: dp_accounting.NeighboringRelation
                      ) -> dp_accounting.PrivacyAccountant:
  if name == 'rdp':
    return rdp.RdpAccountant(neighboring_relation=neighbors)
  if name == 'pld':
    return pld.PLDAccountant(neighboring_relation=neighbors)
  raise ValueError(f'Unknown --dp_accountant {name!r}; valid: '
                   f'{", ".join(ACCOUNTANTS)}.')


def _check_delta(delta: float, population: int, what: str) -> None:
  if not 0 < delta < 1.0 / population:
    raise ValueError(
        f'--dp_delta must be in (0, 1/{what}) = (0, {1.0 / population:g}), '
        f'got {delta!r}: a delta of 1/{what} or more allows releasing one '
        f'{what[:-1]}\'s data outright. Try 1e-5.')


@dataclasses.dataclass(frozen=True)
class ClientLevelAccounting:
  """The privacy spent by DP-FedAvg's rounds.

  Attributes:
    noise_multiplier: z, the noise std of the update sum over the clip norm.
    num_clients: the population N.
    clients_per_round: m, the (expected) cohort size.
    sampling: 'poisson' or 'fixed'.
    delta: the delta epsilon is reported at.
    accountant: 'rdp' or 'pld'.

  Examples:
    >>> acc = ClientLevelAccounting(1.0, num_clients=100,
    ...                             clients_per_round=10, sampling='poisson',
    ...                             delta=1e-5)
    >>> eps = acc.epsilon(50)
  """

  noise_multiplier: float
  num_clients: int
  clients_per_round: int
  sampling: str
  delta: float
  accountant: str = 'rdp'

  def __post_init__(self):
    if self.sampling not in SAMPLINGS:
      raise ValueError(f'Unknown --dp_sampling {self.sampling!r}; valid: '
                       f'{", ".join(SAMPLINGS)}.')
    if self.accountant not in ACCOUNTANTS:
      raise ValueError(f'Unknown --dp_accountant {self.accountant!r}; valid: '
                       f'{", ".join(ACCOUNTANTS)}.')
    if self.sampling == 'fixed' and self.accountant == 'pld':
      raise ValueError(
          'dp-accounting\'s PLD accountant does not support fixed-size '
          'sampling without replacement; use --dp_accountant=rdp or '
          '--dp_sampling=poisson.')
    _check_delta(self.delta, self.num_clients, 'clients')

  def event(self, rounds: int, noise_multiplier: float | None = None
            ) -> dp_accounting.DpEvent:
    """The DpEvent of `rounds` rounds at `noise_multiplier` (default z)."""
    z = self.noise_multiplier if noise_multiplier is None else noise_multiplier
    if self.sampling == 'poisson':
      one = dp_accounting.PoissonSampledDpEvent(
          self.clients_per_round / self.num_clients,
          dp_accounting.GaussianDpEvent(z))
    else:
      one = dp_accounting.SampledWithoutReplacementDpEvent(
          self.num_clients, self.clients_per_round,
          dp_accounting.GaussianDpEvent(z / 2))
    return dp_accounting.SelfComposedDpEvent(one, rounds)

  def new_accountant(self) -> dp_accounting.PrivacyAccountant:
    neighbors = (dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
                 if self.sampling == 'poisson' else
                 dp_accounting.NeighboringRelation.REPLACE_ONE)
    return _fresh_accountant(self.accountant, neighbors)

  def epsilon(self, rounds: int) -> float:
    """Epsilon at `delta` after `rounds` rounds (0 for none, inf for z=0)."""
    if rounds == 0:
      return 0.0
    if self.noise_multiplier == 0:
      return math.inf
    accountant = self.new_accountant()
    accountant.compose(self.event(rounds))
    return float(accountant.get_epsilon(self.delta))

  def calibrate(self, target_epsilon: float, rounds: int) -> float:
    """The smallest noise multiplier whose `rounds` rounds spend at most
    `target_epsilon` (dp-accounting's `calibrate_dp_mechanism`)."""
    if not target_epsilon > 0:
      raise ValueError(f'--dp_target_epsilon must be positive, got '
                       f'{target_epsilon!r}.')
    return float(dp_accounting.calibrate_dp_mechanism(
        self.new_accountant, lambda z: self.event(rounds, z),
        target_epsilon, self.delta,
        dp_accounting.LowerEndpointAndGuess(_LOWEST_CALIBRATED_Z, 1.0)))


@dataclasses.dataclass(frozen=True)
class SampleLevelAccounting:
  """The privacy DP-SGD spends on the examples of the most exposed client.

  Attributes:
    noise_multiplier: z of each local step's noise.
    batch_size: B, the expected batch.
    client_sizes: `[num_clients]` examples per client.
    client_steps: `[num_clients]` local steps per round of each client.
    delta: the delta epsilon is reported at.
    accountant: 'rdp' or 'pld'.
  """

  noise_multiplier: float
  batch_size: int
  client_sizes: np.ndarray
  client_steps: np.ndarray
  delta: float
  accountant: str = 'rdp'

  def __post_init__(self):
    _check_delta(self.delta, int(np.max(self.client_sizes)), 'examples')
    if len(self._groups()) > MAX_SAMPLE_LEVEL_GROUPS:
      raise ValueError(
          f'Sample-level accounting is per client size, and this population '
          f'has {len(self._groups())} distinct (size, steps) pairs (at most '
          f'{MAX_SAMPLE_LEVEL_GROUPS}). DP-SGD is meant for cross-silo '
          'runs with few clients; use client-level DP (--dp_clip_norm) for '
          'large populations.')

  def _groups(self) -> set[tuple[int, int]]:
    return set(zip(np.asarray(self.client_sizes).tolist(),
                   np.asarray(self.client_steps).tolist()))

  def epsilon(self, rounds: int) -> float:
    """The largest epsilon over clients after `rounds` rounds, each client
    assumed to take part in all of them."""
    if rounds == 0:
      return 0.0
    if self.noise_multiplier == 0:
      return math.inf
    worst = 0.0
    for size, steps in self._groups():
      if size == 0 or steps == 0:
        continue
      event = dp_accounting.SelfComposedDpEvent(
          dp_accounting.PoissonSampledDpEvent(
              min(1.0, self.batch_size / size),
              dp_accounting.GaussianDpEvent(self.noise_multiplier)),
          steps * rounds)
      accountant = _fresh_accountant(
          self.accountant, dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
      accountant.compose(event)
      worst = max(worst, float(accountant.get_epsilon(self.delta)))
    return worst
