"""Epsilons equal what dp-accounting gives when asked directly."""

import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld
from dp_accounting import rdp

from fedjax_core import privacy
from fedjax_core import privacy_accounting


def _direct_poisson(q, z, rounds, delta, accountant=rdp.RdpAccountant):
  acc = accountant()
  acc.compose(dp_accounting.PoissonSampledDpEvent(
      q, dp_accounting.GaussianDpEvent(z)), rounds)
  return acc.get_epsilon(delta)


@pytest.mark.parametrize('rounds', [1, 7, 40])
def test_poisson_rdp_epsilon_equals_dp_accounting(rounds):
  acc = privacy_accounting.ClientLevelAccounting(
      1.3, num_clients=100, clients_per_round=10, sampling='poisson',
      delta=1e-5)
  assert acc.epsilon(rounds) == pytest.approx(
      _direct_poisson(0.1, 1.3, rounds, 1e-5), rel=1e-12)


def test_poisson_pld_epsilon_equals_dp_accounting():
  acc = privacy_accounting.ClientLevelAccounting(
      2.0, num_clients=100, clients_per_round=10, sampling='poisson',
      delta=1e-5, accountant='pld')
  assert acc.epsilon(5) == pytest.approx(
      _direct_poisson(0.1, 2.0, 5, 1e-5, pld.PLDAccountant), rel=1e-9)


def test_fixed_size_sampling_is_replace_one_with_half_the_multiplier():
  """m of N without replacement: replacing one client moves the sum by up
  to 2S, so the Gaussian's multiplier for the accountant is z / 2."""
  acc = privacy_accounting.ClientLevelAccounting(
      2.0, num_clients=50, clients_per_round=5, sampling='fixed', delta=1e-5)
  direct = rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
  direct.compose(dp_accounting.SampledWithoutReplacementDpEvent(
      50, 5, dp_accounting.GaussianDpEvent(1.0)), 6)
  assert acc.epsilon(6) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12)


def test_no_rounds_spend_nothing_and_no_noise_is_not_private():
  acc = privacy_accounting.ClientLevelAccounting(
      0.0, num_clients=100, clients_per_round=10, sampling='poisson',
      delta=1e-5)
  assert acc.epsilon(0) == 0.0
  assert acc.epsilon(3) == math.inf


def test_calibration_spends_the_target_and_no_less_noise_would_do():
  acc = privacy_accounting.ClientLevelAccounting(
      1.0, num_clients=100, clients_per_round=10, sampling='poisson',
      delta=1e-5)
  z = acc.calibrate(target_epsilon=3.0, rounds=30)
  assert _direct_poisson(0.1, z, 30, 1e-5) <= 3.0 * (1 + 1e-6)
  assert _direct_poisson(0.1, z * 0.99, 30, 1e-5) > 3.0


@pytest.mark.parametrize('kwargs, message', [
    (dict(delta=0.5), 'dp_delta'),
    (dict(sampling='stratified'), 'dp_sampling'),
    (dict(accountant='moments'), 'dp_accountant'),
    (dict(sampling='fixed', accountant='pld'), 'PLD'),
])
def test_bad_accounting_settings_are_named(kwargs, message):
  settings = dict(noise_multiplier=1.0, num_clients=100, clients_per_round=10,
                  sampling='poisson', delta=1e-5)
  settings.update(kwargs)
  with pytest.raises(ValueError, match=message):
    privacy_accounting.ClientLevelAccounting(**settings)


def test_sample_level_epsilon_is_the_most_exposed_clients():
  """Clients of 20 and 100 examples, batch 10: the small one samples with
  q = 0.5 for 2 steps a round, the large one q = 0.1 for 10 steps."""
  acc = privacy_accounting.SampleLevelAccounting(
      1.1, batch_size=10, client_sizes=np.array([20, 100, 100]),
      client_steps=np.array([2, 10, 10]), delta=1e-5)
  small = _direct_poisson(0.5, 1.1, 2 * 4, 1e-5)
  large = _direct_poisson(0.1, 1.1, 10 * 4, 1e-5)
  assert acc.epsilon(4) == pytest.approx(max(small, large), rel=1e-12)


def test_sample_level_accounting_refuses_cross_device_populations():
  sizes = np.arange(1, 200) + 10
  with pytest.raises(ValueError, match='cross-silo'):
    privacy_accounting.SampleLevelAccounting(
        1.0, batch_size=10, client_sizes=sizes, client_steps=sizes // 10,
        delta=1e-5)


def test_affordable_rounds_is_the_last_round_within_the_target():
  settings = privacy.ClientDPSettings(clip_norm=1.0, noise_multiplier=1.0,
                                      target_epsilon=4.0)
  budget = privacy.ClientLevelPrivacy(settings, num_clients=100,
                                      clients_per_round=10,
                                      participation='bernoulli',
                                      num_rounds=500)
  rounds = budget.affordable_rounds(500)
  assert 0 < rounds < 500
  assert _direct_poisson(0.1, 1.0, rounds, 1e-5) <= 4.0
  assert _direct_poisson(0.1, 1.0, rounds + 1, 1e-5) > 4.0


def test_privacy_without_noise_or_target_is_refused():
  with pytest.raises(ValueError, match='dp_noise_multiplier or'):
    privacy.ClientLevelPrivacy(privacy.ClientDPSettings(clip_norm=1.0),
                               num_clients=100, clients_per_round=10,
                               participation='fixed', num_rounds=5)
