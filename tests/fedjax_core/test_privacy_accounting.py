"""Epsilons equal what dp-accounting gives when asked directly."""

import math
import re

from absl import logging as absl_logging
import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld
from dp_accounting import rdp

from fedjax_core.channel import privacy
from fedjax_core.channel import privacy_accounting


def _direct_poisson(q, z, rounds, delta, accountant=rdp.RdpAccountant):
  acc = accountant()
  acc.compose(dp_accounting.PoissonSampledDpEvent(
      q, dp_accounting.GaussianDpEvent(z)), rounds)
  return acc.get_epsilon(delta)


def _coarse_pld():
  """dp-accounting's PLD accountant on the grid the simulator uses."""
  return pld.PLDAccountant(value_discretization_interval=1e-3)


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
      _direct_poisson(0.1, 2.0, 5, 1e-5, _coarse_pld), rel=1e-9)


@pytest.mark.parametrize('q, z, rounds', [(0.1, 2.0, 5), (0.25, 1.0, 100)])
def test_coarse_pld_grid_is_a_tight_upper_bound(q, z, rounds):
  """The 1e-3 grid overestimates dp-accounting's default 1e-4 grid's
  epsilon, by less than 1e-4 relative."""
  acc = privacy_accounting.ClientLevelAccounting(
      z, num_clients=100, clients_per_round=round(100 * q),
      sampling='poisson', delta=1e-5, accountant='pld')
  fine = _direct_poisson(q, z, rounds, 1e-5, pld.PLDAccountant)
  assert fine <= acc.epsilon(rounds) <= fine * (1 + 1e-4)


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


@pytest.mark.slow
def test_calibration_spends_the_target_and_no_less_noise_would_do():
  acc = privacy_accounting.ClientLevelAccounting(
      1.0, num_clients=100, clients_per_round=10, sampling='poisson',
      delta=1e-5)
  z = acc.calibrate(target_epsilon=3.0, rounds=30)
  assert _direct_poisson(0.1, z, 30, 1e-5) <= 3.0 * (1 + 1e-6)
  assert _direct_poisson(0.1, z * 0.99, 30, 1e-5) > 3.0


@pytest.mark.parametrize('kwargs, message, setting', [
    (dict(delta=0.5), r'DP delta must be in \(0, 1/clients\)',
     'client_dp.delta'),
    (dict(sampling='stratified'), "Unknown sampling 'stratified'", 'sampling'),
    (dict(accountant='moments'), "Unknown accountant 'moments'",
     'client_dp.accountant'),
    (dict(sampling='fixed', accountant='pld'), 'PLD',
     'client_dp.accountant'),
])
def test_bad_accounting_settings_are_named(kwargs, message, setting):
  settings = dict(noise_multiplier=1.0, num_clients=100, clients_per_round=10,
                  sampling='poisson', delta=1e-5)
  settings.update(kwargs)
  with pytest.raises(ValueError, match=message) as error:
    privacy_accounting.ClientLevelAccounting(**settings)
  assert error.value.setting == setting


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
  with pytest.raises(ValueError, match='needs a noise_multiplier or a '
                     'target_epsilon') as error:
    privacy.ClientLevelPrivacy(privacy.ClientDPSettings(clip_norm=1.0),
                               num_clients=100, clients_per_round=10,
                               participation='fixed', num_rounds=5)
  assert error.value.setting == 'client_dp.noise_multiplier'


def _poisson(q, z, sampling='poisson', accountant='rdp', **kwargs):
  settings = dict(num_clients=100, clients_per_round=round(q * 100),
                  sampling=sampling, delta=1e-5, accountant=accountant)
  settings.update(kwargs)
  return privacy_accounting.ClientLevelAccounting(z, **settings)


def test_rdp_curve_equals_a_fresh_accountant_exactly_round_by_round():
  poisson, fixed = _poisson(0.1, 1.3), _poisson(0.1, 2.0, 'fixed')
  direct = rdp.RdpAccountant(
      neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
  direct.compose(fixed.event(25))
  curve = [poisson.epsilon(rounds) for rounds in range(1, 26)]
  for rounds in (1, 7, 25):
    assert curve[rounds - 1] == _direct_poisson(0.1, 1.3, rounds, 1e-5)
  assert fixed.epsilon(25) == direct.get_epsilon(1e-5)


def test_pld_curve_round_by_round_is_within_1e_9_of_a_fresh_accountant():
  """The running composition truncates tails every round, not once."""
  acc = _poisson(0.1, 2.0, accountant='pld')
  curve = [acc.epsilon(rounds) for rounds in range(1, 13)]
  for rounds in (1, 5, 12):
    assert curve[rounds - 1] == pytest.approx(
        _direct_poisson(0.1, 2.0, rounds, 1e-5, _coarse_pld), rel=1e-9)


def test_pld_out_of_order_epsilon_is_the_fresh_accountants_exactly():
  acc = _poisson(0.1, 2.0, accountant='pld')
  assert acc.epsilon(30) == _direct_poisson(0.1, 2.0, 30, 1e-5,
                                            _coarse_pld)


def test_pld_curve_builds_one_rounds_distribution_once(monkeypatch):
  built = []
  plds = privacy_accounting.privacy_loss_distribution
  original = plds.from_gaussian_mechanism
  monkeypatch.setattr(
      plds, 'from_gaussian_mechanism',
      lambda *args, **kwargs: built.append(1) or original(*args, **kwargs))
  acc = _poisson(0.1, 2.0, accountant='pld')
  epsilons = [acc.epsilon(rounds) for rounds in (1, 2, 3, 2, 8)]
  assert epsilons[1] == epsilons[3] and len(built) == 1


def test_sample_level_curves_equal_a_fresh_accountant_exactly():
  acc = privacy_accounting.SampleLevelAccounting(
      1.1, batch_size=10, client_sizes=np.array([20, 100, 40]),
      client_steps=np.array([2, 10, 4]), delta=1e-5)
  for rounds in (1, 9):
    assert acc.epsilon(rounds) == max(
        _direct_poisson(0.5, 1.1, 2 * rounds, 1e-5),
        _direct_poisson(0.1, 1.1, 10 * rounds, 1e-5),
        _direct_poisson(0.25, 1.1, 4 * rounds, 1e-5))
  assert len(acc.curves) == 3


@pytest.mark.parametrize('noise_multiplier, target_epsilon', [
    (1.0, 15.0), (None, 5.0)])
def test_convergence_warnings_become_one_line_per_run(
    caplog, noise_multiplier, target_epsilon):
  """At q = 0.25, z near 1 dp-accounting's RDP logs 7 "failed to converge"
  warnings per composition (fractional orders 1.1 to 1.7): here per round,
  per bisection step and per calibration step, before the change."""
  settings = privacy.ClientDPSettings(clip_norm=1.0,
                                      noise_multiplier=noise_multiplier,
                                      target_epsilon=target_epsilon)
  with caplog.at_level('WARNING'):
    budget = privacy.ClientLevelPrivacy(settings, num_clients=20,
                                        clients_per_round=5,
                                        participation='bernoulli',
                                        num_rounds=30)
    budget.affordable_rounds(30)
    for rounds in range(1, 31):
      budget.epsilon(rounds)
  messages = [record.getMessage() for record in caplog.records]
  assert len(messages) == 1
  assert re.fullmatch(
      r'dp-accounting: \d+ RDP order evaluations did not converge and were '
      r'left out; each epsilon is the minimum over the remaining orders, '
      r'still an upper bound\.', messages[0])
  if noise_multiplier is not None:
    assert messages[0].startswith('dp-accounting: 7 ')


def test_only_accounting_calls_are_quiet(caplog):
  """The filter leaves the absl logger when the accounting is done."""
  _poisson(0.25, 1.0).epsilon(3)
  caplog.clear()
  with caplog.at_level('WARNING'):
    absl_logging.warning('_compute_log_a_frac failed to converge (test)')
  assert len(caplog.records) == 1


@pytest.mark.parametrize('participation, names', [
    ('bernoulli', ['Poisson sampling', 'q = 5/20 = 0.25',
                   'add-or-remove-one neighbours', 'RDP', 'epsilon 20.24',
                   'delta 1e-05']),
    ('fixed', ['fixed-size sampling', '5 of 20 clients without replacement',
               'replace-one neighbours', 'RDP', 'epsilon 215.9']),
])
def test_describe_names_the_sampling_neighbours_and_epsilon(participation,
                                                            names):
  budget = privacy.ClientLevelPrivacy(
      privacy.ClientDPSettings(clip_norm=1.0, noise_multiplier=1.0),
      num_clients=20, clients_per_round=5, participation=participation,
      num_rounds=100)
  line = budget.describe(100)
  assert '\n' not in line
  for name in names:
    assert name in line
