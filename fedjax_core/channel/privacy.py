"""A run's privacy settings and budget: what the round loop asks about DP.

`ClientLevelPrivacy` turns the user's DP-FedAvg settings into the
aggregator's `dp.DPConfig` (calibrating the noise multiplier to a target
epsilon when none is given) and answers, before every round, whether one
more round would overspend the target. `SampleLevelPrivacy` reports what
client-side DP-SGD spends. All epsilons come from `dp-accounting`
(`fedjax_core.channel.privacy_accounting`), computed once per mechanism and cached;
dp-accounting's convergence warnings are collected into one logged line.
"""

import dataclasses

from absl import logging
import numpy as np

from fedjax_core.channel import dp
from fedjax_core.channel import privacy_accounting
from fedjax_core.errors import SettingError


@dataclasses.dataclass(frozen=True)
class ClientDPSettings:
  """DP-FedAvg as the user asks for it.

  Attributes:
    clip_norm: S, each client update's L2 bound (initial bound if adaptive).
    noise_multiplier: z; None calibrates it so that the run's rounds spend
      exactly `target_epsilon`.
    delta: epsilon is reported at this delta.
    target_epsilon: the run stops before a round that would spend more; with
      no noise multiplier, the budget the noise is calibrated to.
    accountant: 'rdp' or 'pld' (dp-accounting's accountants).
    per_layer: clip each layer to S / sqrt(L) instead of the whole update.
    target_quantile: adaptive clipping's gamma (Andrew et al. 2021), None to
      keep S fixed.
    clip_learning_rate: adaptive clipping's eta.
    count_stddev: adaptive clipping's sigma_b (default m / 20).
  """

  clip_norm: float
  noise_multiplier: float | None = None
  delta: float = 1e-5
  target_epsilon: float | None = None
  accountant: str = 'rdp'
  per_layer: bool = False
  target_quantile: float | None = None
  clip_learning_rate: float = 0.2
  count_stddev: float | None = None


class ClientLevelPrivacy:
  """The DP configuration and privacy budget of one DP-FedAvg run.

  Examples:
    >>> privacy = ClientLevelPrivacy(ClientDPSettings(1.0, 1.1),
    ...                              num_clients=100, clients_per_round=10,
    ...                              participation='bernoulli', num_rounds=50)
    >>> privacy.epsilon(10)
  """

  def __init__(self, settings: ClientDPSettings, *, num_clients: int,
               clients_per_round: int, participation: str, num_rounds: int):
    self.settings = settings
    sampling = 'poisson' if participation == 'bernoulli' else 'fixed'
    z = settings.noise_multiplier
    if z is None and settings.target_epsilon is None:
      raise SettingError('client_dp.noise_multiplier', 'Client-level DP '
                         'needs a noise_multiplier or a target_epsilon (to '
                         'calibrate the noise to); set one.')
    self.accounting = privacy_accounting.ClientLevelAccounting(
        1.0 if z is None else z, num_clients, clients_per_round, sampling,
        settings.delta, settings.accountant)
    if z is None:
      z = self.accounting.calibrate(settings.target_epsilon, num_rounds)
      self.accounting = dataclasses.replace(self.accounting,
                                            noise_multiplier=z)
    self.noise_multiplier = z
    self.dp_config = dp.DPConfig(
        clip_norm=settings.clip_norm, noise_multiplier=z,
        expected_clients=float(clients_per_round),
        per_layer=settings.per_layer,
        target_quantile=settings.target_quantile,
        clip_learning_rate=settings.clip_learning_rate,
        count_stddev=settings.count_stddev)
    if z > 0:
      _ = self.accounting.curve  # Built now, so its warnings are noted now.
    _log_note(self.accounting.unconverged)

  def epsilon(self, rounds: int) -> float:
    """Epsilon at the settings' delta after `rounds` rounds."""
    return self.accounting.epsilon(rounds)

  def summary(self, rounds: int) -> dict[str, float]:
    """The run summary's privacy entries after `rounds` rounds."""
    return {'epsilon': self.epsilon(rounds), 'dp_delta': self.settings.delta,
            'dp_noise_multiplier': self.noise_multiplier}

  def describe(self, rounds: int) -> str:
    """One line on how the run is accounted: the sampling and its
    neighbouring relation, the accountant, and what `rounds` rounds spend.

    Returns:
      E.g. "client-level DP: Poisson sampling (each of 20 clients with
      probability q = 5/20 = 0.25) under add-or-remove-one neighbours;
      dp-accounting RDP; noise multiplier 1: 100 rounds spend epsilon 20.24
      at delta 1e-05". Fixed-size sampling reads "fixed-size sampling (5 of
      20 clients without replacement) under replace-one neighbours (...)".
    """
    acc = self.accounting
    n, m = acc.num_clients, acc.clients_per_round
    if acc.sampling == 'poisson':
      sampling = (f'Poisson sampling (each of {n} clients with probability '
                  f'q = {m}/{n} = {m / n:.3g}) under add-or-remove-one '
                  'neighbours')
    else:
      sampling = (f'fixed-size sampling ({m} of {n} clients without '
                  'replacement) under replace-one neighbours (about 10x '
                  'the epsilon of Poisson sampling at the same rate)')
    return (f'client-level DP: {sampling}; dp-accounting '
            f'{acc.accountant.upper()}; noise multiplier '
            f'{self.noise_multiplier:.4g}: {rounds} rounds spend epsilon '
            f'{self.epsilon(rounds):.4g} at delta {acc.delta:g}')

  def exceeds_budget(self, rounds: int) -> bool:
    """Whether `rounds` rounds would spend more than the target epsilon."""
    target = self.settings.target_epsilon
    # The calibration's own tolerance may land a hair above the target.
    return target is not None and self.epsilon(rounds) > target * (1 + 1e-6)

  def affordable_rounds(self, max_rounds: int) -> int:
    """The most rounds, up to `max_rounds`, within the target epsilon
    (epsilon grows with the rounds, so a bisection)."""
    if not self.exceeds_budget(max_rounds):
      return max_rounds
    low, high = 0, max_rounds  # low is affordable, high is not.
    while high - low > 1:
      middle = (low + high) // 2
      low, high = (low, middle) if self.exceeds_budget(middle) else (
          middle, high)
    return low


class SampleLevelPrivacy:
  """What client-side DP-SGD spends, for the most exposed client."""

  def __init__(self, noise_multiplier: float, *, delta: float,
               accountant: str, batch_size: int, client_sizes: np.ndarray,
               client_steps: np.ndarray):
    self.accounting = privacy_accounting.SampleLevelAccounting(
        noise_multiplier, batch_size, np.asarray(client_sizes),
        np.asarray(client_steps), delta, accountant)
    if noise_multiplier > 0:
      _ = self.accounting.curves  # Built now, so warnings are noted now.
    _log_note(self.accounting.unconverged)

  def epsilon(self, rounds: int) -> float:
    """The most exposed client's epsilon after `rounds` rounds."""
    return self.accounting.epsilon(rounds)


def _log_note(unconverged: privacy_accounting.Unconverged) -> None:
  note = unconverged.note()
  if note:
    logging.warning(note)


@dataclasses.dataclass(frozen=True)
class SampleDPSettings:
  """How to account client-side DP-SGD (`fedjax_core.toolkit.dp_sgd`): its noise
  multiplier, the delta to report epsilon at, and the accountant."""

  noise_multiplier: float
  delta: float = 1e-5
  accountant: str = 'rdp'
