"""The round loop: one compile per run, bit-identical resume, divergence
handling and checks of bad settings before any compile."""

import dataclasses
import json
import os
import shutil

import jax
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

import algorithms
import checkpoint_damage
from fedjax_core import CheckpointMismatchError
from fedjax_core import Simulation, SimulationConfig, TrainingDivergedError
from fedjax_core.engine.simulation import resolve_loop
from fedjax_core import Checkpointer, read_metrics, sample_clients
from fedjax_core.channel import attacks
from fedjax_core.data import sampling
from fedjax_core.data.datasets import load_dataset
from interruptions import fail_at_round
import models

NUM_ROUNDS = 6


@pytest.fixture(scope='module')
def dataset():
  return load_dataset('digits', num_clients=8, seed=0)


def _simulation(dataset, workdir=None, client_lr=0.05, algorithm='fedadam',
                **overrides):
  # FedAdam by default: its server moments must survive a resume too.
  model = models.get_model('logreg', dataset.example_shape,
                           dataset.num_classes)
  algorithm = algorithms.build_algorithm(algorithm, model.apply,
                                         num_clients=dataset.num_clients,
                                         client_lr=client_lr)
  settings = dict(num_rounds=NUM_ROUNDS, clients_per_round=3, batch_size=16,
                  local_epochs=1, eval_every=2, checkpoint_every=2,
                  workdir=workdir, progress=False)
  settings.update(overrides)
  return Simulation(algorithm, model, dataset, SimulationConfig(**settings))


def _params(sim):
  return jax.tree.map(np.asarray, sim.server_state.params)


def _flat_params(sim):
  return np.asarray(ravel_pytree(sim.server_state.params)[0])


def test_round_is_traced_once_per_run_with_one_bucket(dataset):
  sim = _simulation(dataset, size_buckets=1)
  sim.run()
  assert sim.completed_rounds == NUM_ROUNDS
  assert sim.round_fn.num_traces == 1


def test_bernoulli_participation_compiles_once_and_counts_its_cohort(
    dataset):
  """Cohorts of varying size are padded to one capacity; each round trains
  exactly the drawn clients' examples."""
  sim = _simulation(dataset, algorithm='fedavg', participation='bernoulli',
                    clients_per_round=2, local_epochs=1, size_buckets=1)
  sim.run()
  sizes = set()
  for record in sim.history:
    ids = sampling.sample_bernoulli(0, record['round'] - 1, 8, 2 / 8)
    sizes.add(len(ids))
    assert record['num_examples'] == sum(
        len(dataset.client_indices[i]) for i in ids)
  assert len(sizes) > 1  # The cohort size did vary.
  assert sim.round_fn.num_traces == 1


@pytest.mark.slow
def test_size_buckets_bound_compiles_and_leave_the_model_unchanged(dataset):
  """Each round pads to the smallest bucket that fits its largest client;
  the masked steps are no-ops, so the model equals the one-bucket run's."""
  one = _simulation(dataset, algorithm='fedavg', size_buckets=1)
  one.run()
  four = _simulation(dataset, algorithm='fedavg', size_buckets=4)
  four.run()
  steps = -(-dataset.client_sizes // 16)  # ceil(n_i / B), one epoch.
  used = set()
  for record in four.history:
    ids = sample_clients(0, record['round'] - 1, 8, 3)
    assert record['local_steps'] >= steps[ids].max()
    assert record['local_steps'] in four.step_buckets
    used.add(record['local_steps'])
  assert len(used) > 1 and four.round_fn.num_traces == len(used) <= 4
  assert {r['local_steps'] for r in one.history} == {steps.max()}
  np.testing.assert_allclose(
      _flat_params(four), _flat_params(one),
      rtol=1e-6, atol=1e-7)
  waste = [np.mean([r['padding_fraction'] for r in sim.history])
           for sim in (one, four)]
  assert waste[1] < waste[0]


def test_local_test_metrics_match_numpy():
  """Per-client accuracy of the global model on each client's held-out
  rows, its mean and 10th percentile, recomputed in numpy."""
  data = load_dataset('digits', num_clients=8, seed=0,
                      local_test_fraction=0.3)
  sim = _simulation(data, algorithm='fedavg', num_rounds=1)
  summary = sim.run()
  metrics = sim.history[-1]
  model = models.get_model('logreg', data.example_shape, data.num_classes)
  params = sim.server_state.params
  accuracy = []
  for rows in data.local_test_indices:
    logits = np.asarray(model.apply(params, data.train_x[rows]))
    accuracy.append(np.mean(logits.argmax(-1) == data.train_y[rows]))
  assert metrics['local_test_accuracy_mean'] == pytest.approx(
      np.mean(accuracy))
  assert metrics['local_test_accuracy_p10'] == pytest.approx(
      np.percentile(accuracy, 10))
  assert np.min(accuracy) < np.max(accuracy)  # The two statistics differ.
  assert summary['final_local_test_accuracy_p10'] == metrics[
      'local_test_accuracy_p10']


@pytest.mark.slow
def test_uint8_images_train_as_their_float_values(dataset):
  """uint8 pixels p train exactly like float inputs p / 255."""
  pixels = np.round(dataset.train_x * 255).astype(np.uint8)
  as_uint8 = dataclasses.replace(dataset, train_x=pixels)
  as_float = dataclasses.replace(
      dataset, train_x=pixels.astype(np.float32) * np.float32(1 / 255))
  runs = []
  for data in (as_uint8, as_float):
    sim = _simulation(data, algorithm='fedavg', num_rounds=2)
    sim.run()
    runs.append(_flat_params(sim))
  np.testing.assert_allclose(runs[0], runs[1], rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_augmentation_is_seeded_and_changes_training(dataset):
  def final(augment, seed=0):
    sim = _simulation(dataset, algorithm='fedavg', num_rounds=2,
                      augment=augment, seed=seed)
    sim.run()
    return _flat_params(sim)

  augmented = final(True)
  np.testing.assert_array_equal(augmented, final(True))
  assert np.abs(augmented - final(False)).max() > 1e-3


def test_server_state_is_donated(dataset):
  sim = _simulation(dataset)
  before = jax.tree.leaves(sim.server_state)
  sim.run_round()
  assert all(leaf.is_deleted() for leaf in before)


@pytest.fixture(scope='module')
def uninterrupted(dataset, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('uninterrupted'))
  sim = _simulation(dataset, workdir)
  summary = sim.run()
  return _params(sim), read_metrics(os.path.join(workdir, 'metrics.jsonl')), \
      summary


@pytest.mark.slow
@pytest.mark.parametrize('error, resumes_from', [
    (KeyboardInterrupt(), 3),        # Ctrl-C saves the state it has.
    (RuntimeError('killed'), 2),     # A crash leaves the periodic checkpoint.
])
def test_resumed_run_is_bit_identical(dataset, tmp_path, uninterrupted,
                                      error, resumes_from):
  want_params, want_metrics, want_summary = uninterrupted
  workdir = str(tmp_path)
  first = _simulation(dataset, workdir)
  fail_at_round(first, 4, error)
  with pytest.raises(type(error)):
    first.run()
  assert Checkpointer(os.path.join(workdir, 'checkpoints')).latest_round() \
      == resumes_from

  second = _simulation(dataset, workdir)
  summary = second.run()
  same = jax.tree.map(np.array_equal, _params(second), want_params)
  assert all(jax.tree.leaves(same)), 'resumed model differs'
  metrics = read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  # One compile per local-step bucket the resumed rounds meet.
  assert second.round_fn.num_traces == len(
      {m['local_steps'] for m in metrics[resumes_from:]})
  assert [m['round'] for m in metrics] == list(range(1, NUM_ROUNDS + 1))
  for got, want in zip(metrics, want_metrics, strict=True):
    assert got['train_loss'] == want['train_loss']
    assert got.get('test_accuracy') == want.get('test_accuracy')
  assert summary['final_test_accuracy'] == want_summary['final_test_accuracy']


@pytest.mark.slow
def test_rerun_of_a_finished_run_trains_nothing(dataset, tmp_path):
  workdir = str(tmp_path)
  _simulation(dataset, workdir).run()
  again = _simulation(dataset, workdir)
  summary = again.run()
  assert again.round_fn.num_traces == 0
  assert summary['rounds'] == NUM_ROUNDS


def test_outputs_follow_the_documented_interface(uninterrupted):
  _, metrics, summary = uninterrupted
  for record in metrics:
    assert {'round', 'train_loss', 'wall_s', 'compiled',
            'examples_per_s'} <= set(record)
  assert metrics[0]['compiled']  # The first round traces and compiles.
  steady = [m['wall_s'] for m in metrics if not m['compiled']]
  assert steady and summary['s_per_round'] == pytest.approx(
      sum(steady) / len(steady))
  assert summary['wall_s'] == pytest.approx(sum(m['wall_s'] for m in metrics))
  evaluated = [m['round'] for m in metrics if 'test_accuracy' in m]
  assert evaluated == [2, 4, 6]
  assert all('test_loss' in m for m in metrics if 'test_accuracy' in m)
  best = max(m['test_accuracy'] for m in metrics if 'test_accuracy' in m)
  assert summary['best_test_accuracy'] == best
  assert summary['final_test_accuracy'] == metrics[-1]['test_accuracy']
  assert metrics[-1]['train_loss'] < metrics[0]['train_loss']


def test_divergence_stops_with_the_round_and_keeps_last_checkpoint(
    dataset, tmp_path):
  # Poison one client's inputs so the loss overflows in the first round that
  # samples it, and not before.
  cohorts = [sample_clients(0, r, dataset.num_clients, 3) for r in range(50)]
  poisoned = next(c for c in range(dataset.num_clients) if c not in cohorts[0])
  bad_round = 1 + next(r for r, ids in enumerate(cohorts) if poisoned in ids)
  train_x = dataset.train_x.copy()
  train_x[dataset.client_indices[poisoned]] = 1e30
  workdir = str(tmp_path)
  sim = _simulation(dataclasses.replace(dataset, train_x=train_x), workdir,
                    algorithm='fedavg', num_rounds=50, checkpoint_every=1)
  with pytest.raises(TrainingDivergedError,
                     match=f'round {bad_round}.*after round {bad_round - 1}'
                     ) as raised:
    sim.run()
  assert raised.value.round_num == bad_round
  assert sim.completed_rounds == bad_round - 1
  checkpointer = Checkpointer(os.path.join(workdir, 'checkpoints'))
  assert checkpointer.latest_round() == bad_round - 1
  server, _, _ = checkpointer.restore(bad_round - 1, sim.server_state,
                                   sim.store.stacked)
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(server))
  assert len(read_metrics(os.path.join(workdir, 'metrics.jsonl'))) == \
      bad_round - 1


@pytest.mark.parametrize('overrides, setting, message', [
    (dict(clients_per_round=9), 'clients_per_round',
     'exceeds the population of 8'),
    (dict(batch_size=10_000), 'batch_size', 'larger than every client'),
    (dict(num_rounds=0), 'num_rounds', 'num_rounds must be positive'),
    (dict(local_epochs=1, local_steps=5), 'local_epochs',
     'local_epochs or local_steps, not both'),
    (dict(eval_every=-1), 'eval_every', 'eval_every must be >= 0'),
    (dict(loop='fast'), 'loop', "Unknown loop 'fast'; valid: auto"),
    (dict(state_store='disk'), 'state_store',
     "Unknown state_store 'disk'; valid: auto"),
    (dict(clients_in_parallel=0), 'clients_in_parallel',
     'clients_in_parallel must be positive'),
    (dict(participation='poisson'), 'participation',
     "Unknown participation 'poisson'; valid: fixed, bernoulli"),
])
def test_bad_settings_fail_before_compiling(dataset, overrides, setting,
                                            message):
  with pytest.raises(ValueError, match=message) as error:
    _simulation(dataset, **overrides)
  assert error.value.setting == setting
  assert '--' not in str(error.value)


def test_summary_file_is_written(dataset, tmp_path):
  workdir = str(tmp_path)
  _simulation(dataset, workdir, num_rounds=2).run()
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['rounds'] == 2
  assert 0.0 <= summary['final_test_accuracy'] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize('model_name, shape, want', [
    ('mlp', (8, 8, 1), ('scan', None)),
    ('cnn', (8, 8, 1), ('unroll', 1)),
])
def test_auto_loop_runs_convolutions_one_client_at_a_time_unrolled_on_cpu(
    model_name, shape, want):
  model = models.get_model(model_name, shape, 10)
  params = model.init(jax.random.key(0))
  assert jax.default_backend() == 'cpu'
  assert resolve_loop('auto', None, model.apply, params, shape) == want
  assert resolve_loop('scan', 4, model.apply, params, shape) == ('scan', 4)
  assert resolve_loop('scan', None, model.apply, params, shape)[0] == 'scan'


@pytest.mark.slow
def test_interrupt_during_evaluation_keeps_the_round_in_the_log(dataset,
                                                                tmp_path):
  workdir = str(tmp_path)
  first = _simulation(dataset, workdir, checkpoint_every=5)
  evaluate = first.evaluate

  def interrupted_evaluate():
    if first.completed_rounds == 4:
      raise KeyboardInterrupt
    return evaluate()

  first.evaluate = interrupted_evaluate
  with pytest.raises(KeyboardInterrupt):
    first.run()
  assert Checkpointer(os.path.join(workdir, 'checkpoints')).latest_round() == 4
  logged = [m['round'] for m in read_metrics(
      os.path.join(workdir, 'metrics.jsonl'))]
  assert logged == [1, 2, 3, 4]
  _simulation(dataset, workdir, checkpoint_every=5).run()
  logged = [m['round'] for m in read_metrics(
      os.path.join(workdir, 'metrics.jsonl'))]
  assert logged == list(range(1, NUM_ROUNDS + 1))


@pytest.fixture(scope='module')
def crashed_in_round_5(dataset, tmp_path_factory):
  """A workdir whose run crashed in round 5: checkpoints of rounds 2 and 4,
  metrics of rounds 1 to 4."""
  workdir = str(tmp_path_factory.mktemp('crashed'))
  sim = _simulation(dataset, workdir)
  fail_at_round(sim, 5, RuntimeError('killed'))
  with pytest.raises(RuntimeError):
    sim.run()
  return workdir


def _copy(workdir, tmp_path):
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  return copy, os.path.join(copy, 'checkpoints')


def _assert_uninterrupted_metrics(workdir, uninterrupted):
  """metrics.jsonl holds each round once, in order, as the uninterrupted
  run wrote it."""
  metrics = read_metrics(os.path.join(workdir, 'metrics.jsonl'))
  assert [m['round'] for m in metrics] == list(range(1, NUM_ROUNDS + 1))
  for got, want in zip(metrics, uninterrupted[1], strict=True):
    assert got['train_loss'] == want['train_loss']
    assert got.get('test_accuracy') == want.get('test_accuracy')


@pytest.mark.slow
@pytest.mark.parametrize('damage', checkpoint_damage.DAMAGES,
                         ids=lambda f: f.__name__)
def test_resume_falls_back_past_a_damaged_checkpoint(
    dataset, tmp_path, capsys, crashed_in_round_5, uninterrupted, damage):
  """The damaged round 4 is reported in one line and deleted; the run
  resumes from round 2, ends as the uninterrupted run, saves round 4 anew,
  and a third run resumes from its end."""
  workdir, checkpoints = _copy(crashed_in_round_5, tmp_path)
  damage(os.path.join(checkpoints, '4'))
  capsys.readouterr()

  second = _simulation(dataset, workdir)
  summary = second.run()
  notes = checkpoint_damage.printed_notes(capsys)
  assert len(notes) == 1, notes
  assert notes[0].startswith(
      f'Checkpoint of round 4 in {checkpoints} is unreadable (')
  assert notes[0].endswith('); deleted it, trying round 2.')
  assert summary['resumed_from_round'] == 2
  _assert_uninterrupted_metrics(workdir, uninterrupted)
  same = jax.tree.map(np.array_equal, _params(second), uninterrupted[0])
  assert all(jax.tree.leaves(same)), 'resumed model differs'

  third = _simulation(dataset, workdir)
  assert third.run()['resumed_from_round'] == NUM_ROUNDS
  assert checkpoint_damage.printed_notes(capsys) == []
  assert sorted(os.listdir(checkpoints)) == ['4', '6']
  server, _, _ = Checkpointer(checkpoints).restore(  # Round 4 is readable.
      4, third.server_state, third.store.stacked, third.aggregator_state)
  assert int(server.round_num) == 4


@pytest.mark.slow
def test_resume_without_a_readable_checkpoint_starts_clean(
    dataset, tmp_path, capsys, crashed_in_round_5, uninterrupted):
  workdir, checkpoints = _copy(crashed_in_round_5, tmp_path)
  checkpoint_damage.truncate(os.path.join(checkpoints, '4'))
  checkpoint_damage.empty(os.path.join(checkpoints, '2'))
  capsys.readouterr()

  summary = _simulation(dataset, workdir).run()
  notes = checkpoint_damage.printed_notes(capsys)
  assert len(notes) == 2, notes
  assert notes[0].endswith('; deleted it, trying round 2.')
  assert notes[1].endswith('; deleted it, no readable checkpoint is left, '
                           'so the run starts from round 0.')
  assert 'resumed_from_round' not in summary
  _assert_uninterrupted_metrics(workdir, uninterrupted)


def test_resume_with_another_algorithm_is_refused_and_keeps_the_workdir(
    dataset, tmp_path, capsys, crashed_in_round_5):
  """FedAvg's server state has no Adam moments: a mismatch, reported with
  the ways out, that deletes no checkpoint and no metrics."""
  workdir, checkpoints = _copy(crashed_in_round_5, tmp_path)
  capsys.readouterr()
  with pytest.raises(CheckpointMismatchError) as raised:
    _simulation(dataset, workdir, algorithm='fedavg').run()
  message = str(raised.value)
  assert message.startswith(
      f'The checkpoint of round 4 in {checkpoints} was written by a run with '
      'a different model or algorithm state (server/opt_state/')
  assert 'is only in the checkpoint' in message
  assert message.endswith(f'Use a new workdir, or delete {checkpoints} '
                          'to start over.')
  assert checkpoint_damage.printed_notes(capsys) == []
  assert sorted(os.listdir(checkpoints)) == ['2', '4']
  assert [m['round'] for m in read_metrics(
      os.path.join(workdir, 'metrics.jsonl'))] == [1, 2, 3, 4]


def test_label_flipping_refuses_labels_that_are_not_classes(dataset):
  sets = dataclasses.replace(dataset, train_y=np.zeros(
      (len(dataset.train_y), dataset.num_classes), np.uint8))
  with pytest.raises(ValueError, match='flips class labels: it needs one '
                     'class label per example'):
    _simulation(sets, attack=attacks.Attack('label_flip', fraction=0.3))
