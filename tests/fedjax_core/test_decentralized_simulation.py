"""Tests of decentralized runs (`fedjax_core.DecentralizedSimulation`): the
equivalences with FedAvg, gossip's effect on consensus, node sampling,
failures, Byzantine nodes, bit-identical resume and bad settings."""

import os

import jax
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

import algorithms
import eight_devices
from fedjax_core import DecentralizedSimulation, GossipConfig
from fedjax_core import Simulation, SimulationConfig
from fedjax_core import SecureAggregation
from fedjax_core.data import sampling
from fedjax_core.data.datasets import load_dataset
from fedjax_core.errors import SettingError
from interruptions import fail_at_round
import models

NUM_NODES = 6


@pytest.fixture(scope='module')
def dataset():
  return load_dataset('digits', num_clients=NUM_NODES, seed=0)


def _model(dataset):
  return models.get_model('logreg', dataset.example_shape,
                          dataset.num_classes)


def _config(**overrides):
  settings = dict(num_rounds=3, clients_per_round=1, batch_size=16,
                  local_steps=2, eval_every=0, checkpoint_every=2,
                  progress=False)
  settings.update(overrides)
  return SimulationConfig(**settings)


def _decentralized(dataset, name='dfedavg', gossip=None, client_lr=0.1,
                   **overrides):
  model = _model(dataset)
  algorithm = algorithms.build_algorithm(
      name, model.apply, num_clients=dataset.num_clients, client_lr=client_lr)
  return DecentralizedSimulation(algorithm, model, dataset,
                                 _config(**overrides),
                                 gossip or GossipConfig())


def _node_rows(sim):
  """`[N, d]` flat node models."""
  params = jax.device_get(sim.node_params())
  return np.stack([ravel_pytree(jax.tree.map(lambda p: p[i], params))[0]
                   for i in range(sim.topology.num_nodes)])


def _run_rounds(sim, rounds):
  for _ in range(rounds):
    sim.complete_record(sim.run_round())


def test_dfedavg_on_a_complete_graph_is_fedavg_with_everyone(dataset):
  # Metropolis weights of the complete graph are all 1/N: every node ends
  # each round at the mean of the nodes' local models, FedAvg's uniform
  # average of its whole population with server learning rate 1.
  sim = _decentralized(dataset, gossip=GossipConfig(topology='complete'))
  _run_rounds(sim, 3)
  model = _model(dataset)
  fedavg = Simulation(
      algorithms.build_algorithm('fedavg', model.apply,
                                 num_clients=NUM_NODES, client_lr=0.1,
                                 weighted=False),
      model, dataset, _config(clients_per_round=NUM_NODES))
  for _ in range(3):
    fedavg.run_round()
  expected = ravel_pytree(jax.device_get(fedavg.server_state.params))[0]
  nodes = _node_rows(sim)
  np.testing.assert_allclose(nodes, np.tile(expected, (NUM_NODES, 1)),
                             atol=1e-5)
  assert sim.history[-1]['consensus_distance'] < 1e-10


def test_dpsgd_on_a_complete_graph_averages_to_fedavgs_first_round(
    dataset):
  # Lian et al.'s D-PSGD mixes before its step: after one round from a
  # common start, node i holds x - eta g_i(x) (its own step, unmixed), and
  # the nodes' mean is FedAvg's model after one round of one local step.
  sim = _decentralized(dataset, name='dpsgd', local_steps=1,
                       gossip=GossipConfig(topology='complete'))
  start = _node_rows(sim)[0]
  _run_rounds(sim, 1)
  model = _model(dataset)
  fedavg = Simulation(
      algorithms.build_algorithm('fedavg', model.apply,
                                 num_clients=NUM_NODES, client_lr=0.1,
                                 weighted=False),
      model, dataset, _config(clients_per_round=NUM_NODES, local_steps=1))
  fedavg.run_round()
  nodes = _node_rows(sim)
  expected = ravel_pytree(jax.device_get(fedavg.server_state.params))[0]
  np.testing.assert_allclose(nodes.mean(axis=0), expected, atol=1e-6)
  assert np.abs(nodes - start).max() > 1e-4  # Each moved by its own step.
  assert sim.history[-1]['consensus_distance'] > 1e-8


def test_more_gossip_steps_bring_a_ring_closer_to_consensus(dataset):
  distances = []
  for steps in (1, 4):
    sim = _decentralized(dataset,
                         gossip=GossipConfig(topology='ring',
                                             gossip_steps=steps))
    _run_rounds(sim, 3)
    distances.append(sim.history[-1]['consensus_distance'])
  assert distances[1] < 0.5 * distances[0]


def test_variance_correction_keeps_independent_kernels_variance(dataset):
  # Six independently initialized nodes on a complete graph: the plain
  # average (1/6 each) of uncorrelated kernels has about 1/6 of their
  # variance; the corrected average keeps their mean variance.
  def kernel_variances(correct):
    sim = _decentralized(dataset, client_lr=1e-6, local_steps=1,
                         gossip=GossipConfig(topology='complete',
                                             independent_init=True,
                                             variance_correction=correct))
    before = np.asarray(sim.node_params()['params']['Dense_0']['kernel'])
    _run_rounds(sim, 1)
    after = np.asarray(sim.node_params()['params']['Dense_0']['kernel'])
    return before.reshape(NUM_NODES, -1).var(1), after.reshape(
        NUM_NODES, -1).var(1)

  before, plain = kernel_variances(False)
  assert np.all(before > 0) and np.ptp(before) > 0  # Independent inits.
  np.testing.assert_allclose(plain, before.mean() / NUM_NODES, rtol=0.2)
  _, corrected = kernel_variances(True)
  np.testing.assert_allclose(corrected, before.mean(), rtol=1e-3)


def test_sampled_nodes_train_and_the_others_keep_their_models(dataset):
  sim = _decentralized(
      dataset, gossip=GossipConfig(topology='complete', active_nodes=3))
  _run_rounds(sim, 1)
  before = _node_rows(sim)
  _run_rounds(sim, 1)
  after = _node_rows(sim)
  active = sampling.sample_clients(0, 1, NUM_NODES, 3)
  idle = np.setdiff1d(np.arange(NUM_NODES), active)
  np.testing.assert_array_equal(after[idle], before[idle])
  assert np.abs(after[active] - before[active]).max() > 1e-4
  # The active nodes average among themselves (MoDeST on a complete graph).
  np.testing.assert_allclose(after[active], np.tile(after[active].mean(0),
                                                    (3, 1)), atol=1e-6)
  assert sim.history[-1]['live_nodes'] == 3


def test_round_compiles_once_with_failures_and_a_time_varying_graph(
    dataset):
  sim = _decentralized(
      dataset, gossip=GossipConfig(topology='random_matching',
                                   node_failure_rate=0.3,
                                   link_failure_rate=0.3))
  _run_rounds(sim, 3)
  assert sim.round_fn.num_traces == 1
  live = [r['live_nodes'] for r in sim.history]
  assert min(live) < NUM_NODES  # Some node was down.


def test_byzantine_nodes_break_the_mean_but_not_the_median(dataset):
  gaps = {}
  for rule in ('mean', 'median'):
    sim = _decentralized(
        dataset, gossip=GossipConfig(
            topology='complete', rule=rule, num_byzantine=1,
            byzantine_fraction=0.2, attack='gaussian', attack_scale=100.0))
    _run_rounds(sim, 2)
    honest = _node_rows(sim)[~sim.byzantine]
    gaps[rule] = np.abs(honest).max()
  assert sim.byzantine.sum() == 1
  assert gaps['median'] < 5.0 < gaps['mean']


def test_evaluation_scores_every_honest_node_and_the_average(dataset):
  sim = _decentralized(dataset, gossip=GossipConfig(topology='ring'))
  _run_rounds(sim, 2)
  metrics = sim.evaluate()
  params = jax.device_get(sim.node_params())
  model = _model(dataset)
  accuracies = []
  for i in range(NUM_NODES):
    logits = model.apply(jax.tree.map(lambda p: p[i], params),
                         dataset.test_x.astype(np.float32))
    accuracies.append(float(np.mean(np.argmax(logits, -1)
                                    == dataset.test_y)))
  assert metrics['test_accuracy'] == pytest.approx(np.mean(accuracies),
                                                   abs=1e-6)
  assert metrics['test_accuracy_p10'] == pytest.approx(
      np.percentile(accuracies, 10), abs=1e-6)
  average = jax.tree.map(lambda p: p.mean(axis=0), params)
  logits = model.apply(average, dataset.test_x.astype(np.float32))
  assert metrics['average_model_test_accuracy'] == pytest.approx(
      float(np.mean(np.argmax(logits, -1) == dataset.test_y)), abs=1e-6)


@pytest.mark.slow
def test_resumed_run_is_bit_identical(dataset, tmp_path):
  gossip = GossipConfig(topology='random_matching', active_nodes=4,
                        node_failure_rate=0.2, link_failure_rate=0.2)
  whole = _decentralized(dataset, gossip=gossip, num_rounds=4)
  whole.run()
  interrupted = _decentralized(dataset, gossip=gossip, num_rounds=4,
                               workdir=str(tmp_path))
  fail_at_round(interrupted, 4, KeyboardInterrupt())
  with pytest.raises(KeyboardInterrupt):
    interrupted.run()
  resumed = _decentralized(dataset, gossip=gossip, num_rounds=4,
                           workdir=str(tmp_path))
  summary = resumed.run()
  assert summary['resumed_from_round'] == 3
  np.testing.assert_array_equal(_node_rows(resumed), _node_rows(whole))


@pytest.mark.slow
def test_runs_on_eight_devices_equal_their_one_device_runs():
  """Sharded node states, ppermute gossip on a ring, and a padded sample of
  active nodes (`decentralized_sharded.py`, 8 forced CPU devices)."""
  proc = eight_devices.run(
      os.path.join(os.path.dirname(__file__), 'decentralized_sharded.py'))
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert 'ring_all_active: gossip by ring' in proc.stdout
  assert 'decentralized sharded: ok' in proc.stdout


@pytest.mark.parametrize('config, setting', [
    (dict(secure_aggregation=SecureAggregation()), 'secure_aggregation'),
    (dict(participation='bernoulli'), 'participation'),
])
def test_server_settings_are_refused(dataset, config, setting):
  with pytest.raises(SettingError) as error:
    _decentralized(dataset, **config)
  assert error.value.setting == setting


@pytest.mark.parametrize('gossip, setting', [
    (GossipConfig(active_nodes=NUM_NODES + 1), 'gossip.active_nodes'),
    (GossipConfig(gossip_steps=0), 'gossip.gossip_steps'),
    (GossipConfig(attack='gaussian'), 'gossip.attack'),
    (GossipConfig(topology='hypercube'), 'topology'),
    (GossipConfig(topology='ring', rule='median', num_byzantine=2),
     'gossip.num_byzantine'),
    (GossipConfig(mixing='max_degree'), 'gossip.mixing'),
    (GossipConfig(rule='median', variance_correction=True),
     'gossip.variance_correction'),
])
def test_bad_gossip_settings_name_the_setting(dataset, gossip, setting):
  with pytest.raises(SettingError) as error:
    _decentralized(dataset, gossip=gossip)
  assert error.value.setting == setting
