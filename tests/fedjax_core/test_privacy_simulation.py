"""Secure aggregation and DP in the round loop: epsilon per round, budget
stops, calibration, dropouts, and resume of the adaptive clip."""

import dp_accounting
import jax
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest
from dp_accounting import rdp

import algorithms
from fedjax_core import Simulation, SimulationConfig
from fedjax_core.channel import aggregation
from fedjax_core.channel import privacy
from fedjax_core.channel import rqm
from fedjax_core.channel import secagg_protocol
from fedjax_core.data.datasets import load_dataset
import models


@pytest.fixture(scope='module')
def dataset():
  return load_dataset('digits', num_clients=8, seed=0)


def _simulation(dataset, algorithm='fedavg', **overrides):
  model = models.get_model('logreg', dataset.example_shape,
                           dataset.num_classes)
  built = algorithms.build_algorithm(algorithm, model.apply,
                                     num_clients=dataset.num_clients,
                                     client_lr=0.05)
  settings = dict(num_rounds=4, clients_per_round=4, batch_size=16,
                  local_epochs=1, eval_every=0, progress=False,
                  size_buckets=1)
  settings.update(overrides)
  return Simulation(built, model, dataset, SimulationConfig(**settings))


def _poisson_epsilon(q, z, rounds, delta):
  accountant = rdp.RdpAccountant()
  accountant.compose(dp_accounting.PoissonSampledDpEvent(
      q, dp_accounting.GaussianDpEvent(z)), rounds)
  return accountant.get_epsilon(delta)


@pytest.mark.slow
def test_every_round_reports_the_epsilon_dp_accounting_gives(dataset):
  settings = privacy.ClientDPSettings(clip_norm=0.5, noise_multiplier=1.2,
                                      delta=1e-3)
  sim = _simulation(dataset, participation='bernoulli', client_dp=settings)
  summary = sim.run()
  for record in sim.history:
    assert record['epsilon'] == pytest.approx(
        _poisson_epsilon(4 / 8, 1.2, record['round'], 1e-3), rel=1e-9)
  assert summary['epsilon'] == sim.history[-1]['epsilon']
  assert summary['dp_noise_multiplier'] == 1.2


@pytest.mark.slow
def test_target_epsilon_stops_before_overspending(dataset, tmp_path):
  settings = privacy.ClientDPSettings(clip_norm=0.5, noise_multiplier=1.2,
                                      delta=1e-3, target_epsilon=3.0)
  sim = _simulation(dataset, num_rounds=50, participation='bernoulli',
                    client_dp=settings, workdir=str(tmp_path))
  summary = sim.run()
  done = sim.completed_rounds
  assert 0 < done < 50
  assert _poisson_epsilon(0.5, 1.2, done, 1e-3) <= 3.0
  assert _poisson_epsilon(0.5, 1.2, done + 1, 1e-3) > 3.0
  assert f'stopped after round {done} of 50' in summary[
      'stopped_by_privacy_budget']
  assert 'final_test_accuracy' in summary  # The last round was evaluated.
  # A re-run of the same workdir resumes and trains nothing more.
  again = _simulation(dataset, num_rounds=50, participation='bernoulli',
                      client_dp=settings, workdir=str(tmp_path))
  again.run()
  assert again.completed_rounds == done and not again.history


@pytest.mark.slow
def test_noise_is_calibrated_to_spend_the_target_in_the_run(dataset):
  settings = privacy.ClientDPSettings(clip_norm=0.5, delta=1e-3,
                                      target_epsilon=2.0)
  sim = _simulation(dataset, num_rounds=3, participation='bernoulli',
                    client_dp=settings)
  z = sim.privacy.noise_multiplier
  assert _poisson_epsilon(0.5, z, 3, 1e-3) == pytest.approx(2.0, rel=1e-3)
  sim.run()
  assert sim.completed_rounds == 3


@pytest.mark.slow
def test_adaptive_clip_resumes_bit_identically(dataset, tmp_path):
  settings = privacy.ClientDPSettings(
      clip_norm=1.0, noise_multiplier=0.5, delta=1e-3, target_quantile=0.5,
      count_stddev=0.5)
  straight = _simulation(dataset, client_dp=settings)
  straight.run()
  first = _simulation(dataset, client_dp=settings, num_rounds=2,
                      workdir=str(tmp_path), checkpoint_every=1)
  first.run()
  resumed = _simulation(dataset, client_dp=settings, workdir=str(tmp_path),
                        checkpoint_every=1)
  resumed.run()
  np.testing.assert_array_equal(
      ravel_pytree(resumed.server_state.params)[0],
      ravel_pytree(straight.server_state.params)[0])
  clips = [r['dp_clip_norm'] for r in straight.history]
  assert len(set(clips)) == 4  # The clip moved every round.
  (resumed_dp,) = resumed.aggregator_state.values()  # The DP stage's.
  (straight_dp,) = straight.aggregator_state.values()
  assert float(resumed_dp['clip_norm']) == float(straight_dp['clip_norm'])


@pytest.mark.slow
def test_secure_aggregation_trains_as_the_plain_mean_does(dataset):
  plain = _simulation(dataset)
  plain.run()
  secure = _simulation(dataset, secure_aggregation=(
      aggregation.SecureAggregation(bits=32, clip=1.0)))
  secure.run()
  np.testing.assert_allclose(ravel_pytree(secure.server_state.params)[0],
                             ravel_pytree(plain.server_state.params)[0],
                             atol=1e-5)
  assert all(r['secagg_dropped'] == 0 for r in secure.history)
  assert all('secagg_setup_s' in r for r in secure.history)


@pytest.mark.slow
def test_dropped_clients_keep_their_state_and_leave_the_mean(dataset):
  """SCAFFOLD with a quarter of each cohort dropping after masking: the
  dropped clients' control variates stay as they were."""
  sim = _simulation(dataset, algorithm='scaffold',
                    secure_aggregation=aggregation.SecureAggregation(
                        clip=4.0, dropout_fraction=0.25))
  before = jax.tree.map(np.copy, sim.store.stacked)
  ids, inputs = sim._round_inputs(0)
  inputs = sim._with_secagg(0, inputs)
  sim.run_round()
  assert sim.history == [] and inputs.secagg.arrived.sum() == 3
  dropped = ids[~inputs.secagg.arrived[:len(ids)]]
  kept = ids[inputs.secagg.arrived[:len(ids)]]
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(sim.store.stacked)):
    np.testing.assert_array_equal(a[dropped], b[dropped])
    assert not np.array_equal(a[kept], b[kept])


def test_too_many_dropouts_is_an_error_not_a_wrong_model(dataset):
  """A fixed cohort of 4 with half dropping leaves 2 < t = 3 survivors:
  refused when the run is built, before any round (a Bernoulli cohort's
  size is known only in its round: `round_setup` refuses it there)."""
  with pytest.raises(secagg_protocol.SecAggThresholdError,
                     match='Lower dropout_fraction') as error:
    _simulation(dataset, secure_aggregation=(
        aggregation.SecureAggregation(dropout_fraction=0.5, threshold=3)))
  assert error.value.setting == 'secure_aggregation.dropout_fraction'


@pytest.mark.slow
def test_rqm_run_reports_its_epsilon_alone_and_under_secure_aggregation(
    dataset):
  """RQM as a client stage: every round's epsilon is the RDP of that many
  quantized messages (d coordinates each), with or without secure
  aggregation; the two runs quantize the same messages, so their models
  agree within secure aggregation's fixed point."""
  settings = rqm.RQMSettings(clip=0.05, num_levels=8, keep_probability=0.5,
                             extension=0.05, delta=1e-5)
  plain = _simulation(dataset, rqm=settings, num_rounds=2)
  summary = plain.run()
  d = plain.message_bytes // 4
  for record in plain.history:
    want, _ = rqm.rqm_epsilon(num_compositions=record['round'],
                              target_delta=1e-5, num_coordinates=d,
                              **settings.mechanism())
    assert record['epsilon'] == pytest.approx(want, rel=1e-9)
  assert summary['epsilon'] == plain.history[-1]['epsilon']
  assert summary['privacy_mechanism'] == 'rqm'
  secure = _simulation(dataset, rqm=settings, num_rounds=2,
                       secure_aggregation=aggregation.SecureAggregation(
                           clip=0.2))
  secure.run()
  assert [r['epsilon'] for r in secure.history] == [
      r['epsilon'] for r in plain.history]
  np.testing.assert_allclose(ravel_pytree(secure.server_state.params)[0],
                             ravel_pytree(plain.server_state.params)[0],
                             atol=1e-5)
