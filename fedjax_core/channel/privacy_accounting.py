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

A run asks for epsilon after every round, so each mechanism's cost is
computed once and kept as an `EpsilonCurve` (epsilon after n compositions,
for any n) instead of a fresh accountant per question.
"""

import dataclasses
import functools
import logging
import math

import dp_accounting
import numpy as np
from dp_accounting import pld
from dp_accounting import rdp
from dp_accounting.pld import privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant

from fedjax_core.errors import SettingError

ACCOUNTANTS = ('rdp', 'pld')
SAMPLINGS = ('fixed', 'poisson')
MAX_SAMPLE_LEVEL_GROUPS = 64
# Below this, PLD's discretisation needs tens of GiB (measured at z = 1e-3).
_LOWEST_CALIBRATED_Z = 0.1
# The discretisation of the privacy loss of every PLD here, ten times
# `PLDAccountant`'s default of 1e-4: a 100-round curve costs about 1.5 s
# instead of 18 s, and epsilon stays an upper bound, about 1e-6 relative
# above the finer grid's (BUILD_NOTES.md).
_PLD_INTERVAL = 1e-3
_UNCONVERGED = '_compute_log_a_frac failed to converge'


class Unconverged(logging.Filter):
  """Counts and drops dp-accounting's "failed to converge" warnings.

  `dp_accounting.rdp.rdp_privacy_accountant._compute_log_a_frac` logs one
  absl warning for each fractional RDP order whose series does not
  converge, and leaves that order out of the minimum over orders that
  epsilon is: the epsilon stays an upper bound. Within `with unconverged:`
  (and only there) the filter sits on the absl logger and counts them;
  `note()` then says it once.
  """

  def __init__(self):
    super().__init__()
    self.count = 0

  def filter(self, record: logging.LogRecord) -> bool:
    if str(record.msg).startswith(_UNCONVERGED):
      self.count += 1
      return False
    return True

  def __enter__(self) -> 'Unconverged':
    logging.getLogger('absl').addFilter(self)
    return self

  def __exit__(self, *exc_info) -> None:
    logging.getLogger('absl').removeFilter(self)

  def note(self) -> str | None:
    """One line on the warnings counted, or None if there were none."""
    if not self.count:
      return None
    return (f'dp-accounting: {self.count} RDP order evaluations did not '
            'converge and were left out; each epsilon is the minimum over '
            'the remaining orders, still an upper bound.')


class _RdpCurve:
  """Epsilon after n compositions of `event` under RDP.

  The event's RDP vector is computed once (`RdpAccountant.rdp`); epsilon
  after n is `compute_epsilon` of n times it, which is what an
  `RdpAccountant` composed with the event n times holds: equal bit for bit.
  """

  def __init__(self, event: dp_accounting.DpEvent,
               neighbors: dp_accounting.NeighboringRelation, delta: float):
    accountant = rdp.RdpAccountant(neighboring_relation=neighbors)
    accountant.compose(event)
    self._orders, self._rdp, self._delta = (accountant.orders,
                                            accountant.rdp, delta)

  def __call__(self, n: int) -> float:
    return float(rdp_privacy_accountant.compute_epsilon(
        self._orders, n * self._rdp, self._delta)[0])


class _PldCurve:
  """Epsilon after n compositions of a Poisson-sampled Gaussian under PLD.

  The event's privacy loss distribution is built once, as `PLDAccountant`
  builds it. Asked for n right after n - 1 (a run's round-by-round
  questions), the curve composes it once more onto its running composition
  (`PrivacyLossDistribution.compose`); any other n is `self_compose(n)`,
  `PLDAccountant`'s own path. The running composition truncates the tails
  (mass 1e-15) at every step rather than once, which moves epsilon by about
  1e-11 relative (measured at q = 0.25, z = 1, n up to 100). Epsilons are
  cached; the first one computed for an n is the one kept.
  """

  def __init__(self, event: dp_accounting.PoissonSampledDpEvent,
               neighbors: dp_accounting.NeighboringRelation, delta: float):
    self._identity = privacy_loss_distribution.identity(
        value_discretization_interval=_PLD_INTERVAL)
    self._one = privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=event.event.noise_multiplier,
        value_discretization_interval=_PLD_INTERVAL,
        sampling_prob=event.sampling_probability,
        neighboring_relation=neighbors)
    self._delta = delta
    self._running = (0, self._identity)
    self._epsilons = {}

  def __call__(self, n: int) -> float:
    count, composed = self._running
    if n == count + 1:
      self._running = (n, composed.compose(self._one))
    if n not in self._epsilons:
      count, composed = self._running
      if n != count:
        composed = self._identity.compose(self._one.self_compose(n))
      self._epsilons[n] = float(composed.get_epsilon_for_delta(self._delta))
    return self._epsilons[n]


EpsilonCurve = _RdpCurve | _PldCurve


def epsilon_curve(event: dp_accounting.DpEvent, accountant: str,
                  neighbors: dp_accounting.NeighboringRelation,
                  delta: float) -> EpsilonCurve:
  """The function n -> epsilon at `delta` after n compositions of `event`
  under dp-accounting's `accountant` ('rdp'; 'pld' takes a
  `PoissonSampledDpEvent` of a `GaussianDpEvent`)."""
  if accountant == 'rdp':
    return _RdpCurve(event, neighbors, delta)
  if accountant == 'pld':
    return _PldCurve(event, neighbors, delta)
  raise _unknown_accountant(accountant)


def _unknown_accountant(name: str, setting: str = 'accountant'
                        ) -> SettingError:
  return SettingError(setting, f'Unknown accountant {name!r}; valid: '
                      f'{", ".join(ACCOUNTANTS)}.')


def _fresh_accountant(name: str, neighbors: dp_accounting.NeighboringRelation
                      ) -> dp_accounting.PrivacyAccountant:
  if name == 'rdp':
    return rdp.RdpAccountant(neighboring_relation=neighbors)
  if name == 'pld':
    return pld.PLDAccountant(neighboring_relation=neighbors,
                             value_discretization_interval=_PLD_INTERVAL)
  raise _unknown_accountant(name)


def _check_delta(delta: float, population: int, what: str,
                 setting: str) -> None:
  if not 0 < delta < 1.0 / population:
    raise SettingError(
        setting,
        f'DP delta must be in (0, 1/{what}) = (0, {1.0 / population:g}), '
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
    unconverged: counts dp-accounting's convergence warnings (shared with
      copies made by `dataclasses.replace`).

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
  unconverged: Unconverged = dataclasses.field(
      default_factory=Unconverged, compare=False, repr=False)

  def __post_init__(self):
    if self.sampling not in SAMPLINGS:
      raise SettingError('sampling', f'Unknown sampling {self.sampling!r}; '
                         f'valid: {", ".join(SAMPLINGS)}.')
    if self.accountant not in ACCOUNTANTS:
      raise _unknown_accountant(self.accountant, 'client_dp.accountant')
    if self.sampling == 'fixed' and self.accountant == 'pld':
      raise SettingError(
          'client_dp.accountant',
          'dp-accounting\'s PLD accountant does not support fixed-size '
          'sampling without replacement; use accountant \'rdp\' or Poisson '
          'sampling (participation \'bernoulli\').')
    _check_delta(self.delta, self.num_clients, 'clients', 'client_dp.delta')

  @property
  def neighbors(self) -> dp_accounting.NeighboringRelation:
    """Add-or-remove-one for Poisson sampling, replace-one for fixed."""
    return (dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
            if self.sampling == 'poisson' else
            dp_accounting.NeighboringRelation.REPLACE_ONE)

  def round_event(self, noise_multiplier: float | None = None
                  ) -> dp_accounting.DpEvent:
    """The DpEvent of one round at `noise_multiplier` (default z)."""
    z = self.noise_multiplier if noise_multiplier is None else noise_multiplier
    if self.sampling == 'poisson':
      return dp_accounting.PoissonSampledDpEvent(
          self.clients_per_round / self.num_clients,
          dp_accounting.GaussianDpEvent(z))
    return dp_accounting.SampledWithoutReplacementDpEvent(
        self.num_clients, self.clients_per_round,
        dp_accounting.GaussianDpEvent(z / 2))

  def event(self, rounds: int, noise_multiplier: float | None = None
            ) -> dp_accounting.DpEvent:
    """The DpEvent of `rounds` rounds at `noise_multiplier` (default z)."""
    return dp_accounting.SelfComposedDpEvent(
        self.round_event(noise_multiplier), rounds)

  def new_accountant(self) -> dp_accounting.PrivacyAccountant:
    return _fresh_accountant(self.accountant, self.neighbors)

  @functools.cached_property
  def curve(self) -> EpsilonCurve:
    """Epsilon after n rounds at z, built on first use."""
    with self.unconverged:
      return epsilon_curve(self.round_event(), self.accountant,
                           self.neighbors, self.delta)

  def epsilon(self, rounds: int) -> float:
    """Epsilon at `delta` after `rounds` rounds (0 for none, inf for z=0)."""
    if rounds == 0:
      return 0.0
    if self.noise_multiplier == 0:
      return math.inf
    return self.curve(rounds)

  def calibrate(self, target_epsilon: float, rounds: int) -> float:
    """The smallest noise multiplier whose `rounds` rounds spend at most
    `target_epsilon` (dp-accounting's `calibrate_dp_mechanism`)."""
    if not target_epsilon > 0:
      raise SettingError('client_dp.target_epsilon', f'DP target_epsilon '
                         f'must be positive, got {target_epsilon!r}.')
    with self.unconverged:
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
    unconverged: counts dp-accounting's convergence warnings.
  """

  noise_multiplier: float
  batch_size: int
  client_sizes: np.ndarray
  client_steps: np.ndarray
  delta: float
  accountant: str = 'rdp'
  unconverged: Unconverged = dataclasses.field(
      default_factory=Unconverged, compare=False, repr=False)

  def __post_init__(self):
    _check_delta(self.delta, int(np.max(self.client_sizes)), 'examples',
                 'sample_dp.delta')
    if len(self._groups()) > MAX_SAMPLE_LEVEL_GROUPS:
      raise SettingError(
          'sample_dp',
          f'Sample-level accounting is per client size, and this population '
          f'has {len(self._groups())} distinct (size, steps) pairs (at most '
          f'{MAX_SAMPLE_LEVEL_GROUPS}). DP-SGD is meant for cross-silo '
          'runs with few clients; use client-level DP (client_dp) for '
          'large populations.')

  def _groups(self) -> set[tuple[int, int]]:
    return set(zip(np.asarray(self.client_sizes).tolist(),
                   np.asarray(self.client_steps).tolist()))

  def _rate(self, size: int) -> float:
    return min(1.0, self.batch_size / size)

  @functools.cached_property
  def curves(self) -> dict[float, EpsilonCurve]:
    """Epsilon after n local steps, per sampling rate B / n_i."""
    rates = {self._rate(size) for size, steps in self._groups()
             if size and steps}
    with self.unconverged:
      return {q: epsilon_curve(
          dp_accounting.PoissonSampledDpEvent(
              q, dp_accounting.GaussianDpEvent(self.noise_multiplier)),
          self.accountant, dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE,
          self.delta) for q in rates}

  def epsilon(self, rounds: int) -> float:
    """The largest epsilon over clients after `rounds` rounds, each client
    assumed to take part in all of them."""
    if rounds == 0:
      return 0.0
    if self.noise_multiplier == 0:
      return math.inf
    return max((self.curves[self._rate(size)](steps * rounds)
                for size, steps in self._groups() if size and steps),
               default=0.0)
