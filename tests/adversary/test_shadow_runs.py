"""Shadow runs: balanced inclusion, per-run datasets over one shared pool,
vmapped training that equals each run alone, and the membership attacks
of the issue on digits (LiRA and the loss threshold on an overfit model
and under strong client-level DP; a client's overfit update)."""

import dataclasses

import jax
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

import algorithms
from fedjax_core.adversary import membership
from fedjax_core.adversary import shadow_runs
from fedjax_core.channel.privacy import ClientDPSettings
from fedjax_core.data.datasets import load_digits
from fedjax_core.data.federated import FederatedDataset
from fedjax_core.engine.config import SimulationConfig
from fedjax_core.engine.simulation import Simulation
from fedjax_core.errors import SettingError
import models

POOL_SIZE = 100
NUM_RUNS = 16
# FedAvg over 2 clients with many local steps: each run memorizes its 50
# examples (test accuracy about 0.7, training loss near 0).
OVERFIT = SimulationConfig(num_rounds=4, clients_per_round=2, batch_size=16,
                           local_steps=50, eval_every=0,
                           checkpoint_every=1000, progress=False,
                           size_buckets=1)


@pytest.fixture(scope='module')
def pool():
  central = load_digits(0)
  return dataclasses.replace(central, train_x=central.train_x[:POOL_SIZE],
                             train_y=central.train_y[:POOL_SIZE])


def test_inclusion_masks_put_each_example_in_half_the_runs():
  masks = shadow_runs.inclusion_masks(7, 6, seed=0)
  assert masks.shape == (6, 7) and masks.dtype == bool
  np.testing.assert_array_equal(masks.sum(0), np.full(7, 3))
  np.testing.assert_array_equal(masks, shadow_runs.inclusion_masks(7, 6, 0))
  assert not np.array_equal(masks, shadow_runs.inclusion_masks(7, 6, 1))
  with pytest.raises(SettingError, match='even'):
    shadow_runs.inclusion_masks(7, 5, seed=0)


def test_run_datasets_hold_the_included_rows_over_a_shared_pool(pool):
  masks = shadow_runs.inclusion_masks(POOL_SIZE, 4, seed=0)
  datasets = shadow_runs.run_datasets(pool, masks, num_clients=3, seed=0)
  assert len(datasets) == 4
  for mask, dataset in zip(masks, datasets):
    assert dataset.train_x is pool.train_x
    assert dataset.test_x is pool.test_x
    assert dataset.num_clients == 3
    rows = np.concatenate(list(dataset.client_indices))
    np.testing.assert_array_equal(np.sort(rows), np.flatnonzero(mask))
  with pytest.raises(ValueError, match='one column per pool example'):
    shadow_runs.run_datasets(pool, masks[:, 1:], num_clients=3, seed=0)


def test_leave_one_out_pools_each_run_as_target():
  rng = np.random.default_rng(0)
  conf = rng.normal(size=(4, 3))
  masks = shadow_runs.inclusion_masks(3, 4, seed=0)
  pooled = shadow_runs.leave_one_out(conf, masks, membership.lira_offline)
  second = membership.lira_offline(conf[1], conf[[0, 2, 3]],
                                   masks[[0, 2, 3]])
  assert pooled.scores.shape == (12,)
  np.testing.assert_allclose(pooled.scores[3:6], second)
  np.testing.assert_array_equal(pooled.is_member[3:6], masks[1])

def _flat(tree):
  return np.asarray(ravel_pytree(jax.tree.map(np.asarray, tree))[0])


def test_vmapped_runs_over_different_clients_equal_their_single_runs(pool):
  # Different included rows give clients of different sizes, so the runs'
  # local epochs take different step counts and the group pads them.
  masks = shadow_runs.inclusion_masks(POOL_SIZE, 2, seed=1)
  datasets = shadow_runs.run_datasets(pool, masks, num_clients=3, seed=0)
  config = dataclasses.replace(OVERFIT, num_rounds=2, local_steps=None,
                               local_epochs=1, batch_size=8, seed=5)
  model = models.get_model('logreg', (8, 8, 1), 10)
  algorithm = algorithms.build_algorithm('fedavg', model.apply,
                                         num_clients=3, client_lr=0.1)
  runs = shadow_runs.train_runs(algorithm, model, datasets, config)
  for k, dataset in enumerate(datasets):
    single = Simulation(algorithm, model, dataset,
                        dataclasses.replace(config, seed=5 + k))
    single.run()
    np.testing.assert_allclose(
        _flat(jax.tree.map(lambda a: a[k], runs.params)),
        _flat(algorithm.server_params(single.server_state)), rtol=1e-6,
        atol=1e-7)
  assert not np.allclose(*(_flat(jax.tree.map(lambda a: a[k], runs.params))
                           for k in (0, 1)))


def _attacks(pool, config):
  """Trains NUM_RUNS runs on balanced halves of the pool and returns the
  pooled leave-one-out AUCs of LiRA (online with a fixed variance, and
  offline) and of the loss threshold."""
  masks = shadow_runs.inclusion_masks(POOL_SIZE, NUM_RUNS, seed=0)
  datasets = shadow_runs.run_datasets(pool, masks, num_clients=2, seed=0)
  model = models.get_model('mlp', (8, 8, 1), 10)
  algorithm = algorithms.build_algorithm('fedavg', model.apply,
                                         num_clients=2, client_lr=0.1)
  runs = shadow_runs.train_runs(algorithm, model, datasets, config)
  conf = membership.run_confidences(model.apply, runs.params, pool.train_x,
                                    pool.train_y)
  online = shadow_runs.leave_one_out(conf.scaled, masks, fix_variance=True)
  offline = shadow_runs.leave_one_out(conf.scaled, masks,
                                      membership.lira_offline)
  loss = membership.MembershipScores(
      membership.loss_threshold_scores(conf.loss).reshape(-1),
      masks.reshape(-1))
  return {name: membership.roc_metrics(*scores)['auc']
          for name, scores in (('online', online), ('offline', offline),
                               ('loss', loss))}


def test_lira_and_loss_threshold_find_members_of_an_overfit_model(pool):
  aucs = _attacks(pool, OVERFIT)
  # Measured: online 0.770, offline 0.777, loss 0.732.
  assert aucs['online'] > 0.7
  assert aucs['offline'] > 0.7
  assert aucs['loss'] > 0.6


def test_lira_is_near_chance_under_strong_client_level_dp(pool):
  dp = dataclasses.replace(
      OVERFIT, num_rounds=2, local_steps=20,
      client_dp=ClientDPSettings(clip_norm=1.0, noise_multiplier=5.0))
  aucs = _attacks(pool, dp)
  for auc in aucs.values():
    assert abs(auc - 0.5) < 0.1


def test_client_update_reveals_the_clients_examples(pool):
  # One client holds 8 of the pool's examples and trains on them alone for
  # one round: with FedAvg's server SGD at rate 1 the new global model is
  # params + delta, what the server saw.
  client = FederatedDataset(
      name='digits', train_x=pool.train_x, train_y=pool.train_y,
      client_indices=[np.arange(8)], test_x=pool.test_x,
      test_y=pool.test_y, num_classes=10)
  model = models.get_model('mlp', (8, 8, 1), 10)
  algorithm = algorithms.build_algorithm('fedavg', model.apply,
                                         num_clients=1, client_lr=0.1)
  sim = Simulation(algorithm, model, client, dataclasses.replace(
      OVERFIT, num_rounds=1, clients_per_round=1, batch_size=8,
      local_steps=50))
  params = jax.device_get(algorithm.server_params(sim.server_state))
  sim.run()
  delta = jax.tree.map(lambda new, old: np.asarray(new) - old,
                       jax.device_get(algorithm.server_params(
                           sim.server_state)), params)
  scores = shadow_runs.client_update_membership(
      model.apply, params, delta, pool.train_x[:8], pool.train_y[:8],
      pool.test_x[:64], pool.test_y[:64])
  assert scores.is_member.sum() == 8 and len(scores.scores) == 72
  assert membership.roc_metrics(*scores)['auc'] > 0.7
