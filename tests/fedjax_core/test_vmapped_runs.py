"""Runs along a vmapped run axis: each run equals its single run (seeds,
learning rates, rho), one compile, resume, divergence of one run, and the
errors on runs that cannot share a program."""

import dataclasses
import json
import os

import jax
from jax.flatten_util import ravel_pytree
import numpy as np
import pytest

import algorithms
from fedjax_core import Run, Simulation, SimulationConfig, VmappedRuns
from fedjax_core import Checkpointer, read_metrics
from fedjax_core.data.datasets import load_dataset
from interruptions import fail_at_round
import models

CONFIG = SimulationConfig(num_rounds=3, clients_per_round=3, batch_size=16,
                          local_epochs=1, eval_every=2, checkpoint_every=1,
                          progress=False, size_buckets=1)
# Host timings, which differ between any two runs.
TIMINGS = ('wall_s', 'examples_per_s', 'compiled')


@pytest.fixture(scope='module')
def datasets():
  # Each seed draws its own split, so the runs' clients differ in size.
  return {seed: load_dataset('digits', num_clients=8, seed=seed)
          for seed in (0, 1)}


def _model(dataset):
  return models.get_model('logreg', dataset.example_shape,
                          dataset.num_classes)


def _simulation(dataset, seed, name='scaffold', client_lr=0.05, hparams=None,
                **overrides):
  model = _model(dataset)
  algorithm = algorithms.build_algorithm(
      name, model.apply, num_clients=dataset.num_clients,
      client_lr=client_lr, hparams=hparams)
  config = dataclasses.replace(CONFIG, seed=seed, **overrides)
  return Simulation(algorithm, model, dataset, config)


def _flat(tree):
  return np.asarray(ravel_pytree(jax.tree.map(np.asarray, tree))[0])


def _run_state(group, k):
  return jax.tree.map(lambda a: np.asarray(a)[k], group.server_state)


def _without_timings(records):
  return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


def _assert_equal_runs(single, group, k, exact=True):
  """Run k of `group` holds what the finished single run holds: exactly,
  or where a hyperparameter became a traced array instead of a constant
  the compiler folds, to float32 rounding. The group's records are its
  metrics file's if it has one (a resumed run's history is partial)."""
  pairs = [(_flat(_run_state(group, k)), _flat(single.server_state)),
           (_flat(group.runs[k].simulation.store.stacked),
            _flat(single.store.stacked))]
  history = group.runs[k].simulation.history
  if group.runs[k].workdir:
    history = read_metrics(os.path.join(group.runs[k].workdir,
                                        'metrics.jsonl'))
  records = [_without_timings(history), _without_timings(single.history)]
  if exact:
    for got, want in pairs:
      np.testing.assert_array_equal(got, want)
    assert records[0] == records[1]
    return
  for got, want in pairs:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert [r.keys() for r in records[0]] == [r.keys() for r in records[1]]
  for got, want in zip(*records):
    assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.slow
def test_two_seeds_equal_their_single_runs_in_one_compile(datasets):
  # Augmentation draws from each round's key, so the keys must match too.
  singles = [_simulation(datasets[s], s, augment=True) for s in (0, 1)]
  for single in singles:
    single.run()
  group = VmappedRuns(
      [Run(_simulation(datasets[s], s, augment=True)) for s in (0, 1)],
      progress=False)
  summaries = group.run()
  # The seeds' clients differ in size, so the runs padded their local steps
  # to different counts; the group pads both to the larger.
  steps = [{r['local_steps'] for r in s.history} for s in singles]
  assert steps[0] != steps[1]
  for k, single in enumerate(singles):
    _assert_equal_runs(single, group, k)
    assert summaries[k]['final_test_accuracy'] \
        == single.history[-1]['test_accuracy']
    assert summaries[k]['seed'] == k
  assert group.num_traces == 1
  # SCAFFOLD's control variates differ between the seeds' stores.
  assert not np.array_equal(_flat(group.runs[0].simulation.store.stacked),
                            _flat(group.runs[1].simulation.store.stacked))


@pytest.mark.slow
@pytest.mark.parametrize('name, hparam, values', [
    ('fedavg', 'client_lr', (0.02, 0.2)),
    ('fedsam', 'rho', (0.01, 0.2)),
])
def test_hyperparameters_along_the_run_axis_equal_their_single_runs(
    datasets, name, hparam, values):
  dataset = datasets[0]

  def simulation(value):
    if hparam == 'client_lr':
      return _simulation(dataset, 0, name, client_lr=value)
    return _simulation(dataset, 0, name, hparams={hparam: value})

  def algorithm_for(traced):
    kwargs = ({'client_lr': traced[hparam]} if hparam == 'client_lr'
              else {'hparams': {hparam: traced[hparam]}})
    return algorithms.build_algorithm(
        name, _model(dataset).apply, num_clients=dataset.num_clients,
        **{'client_lr': 0.05, **kwargs})

  group = VmappedRuns(
      [Run(simulation(v), hparams={hparam: v}) for v in values],
      algorithm_for=algorithm_for, progress=False)
  summaries = group.run()
  finals = []
  for k, value in enumerate(values):
    single = simulation(value)
    single.run()
    _assert_equal_runs(single, group, k, exact=False)
    assert summaries[k][hparam] == value
    finals.append(_flat(single.server_state))
  assert not np.array_equal(*finals)  # The value mattered.


def _group(datasets, workdir, seeds=(0, 1)):
  runs = [Run(_simulation(datasets[s], s),
              workdir=os.path.join(workdir, f'seed_{s}')) for s in seeds]
  return VmappedRuns(runs, workdir=workdir, progress=False)


@pytest.mark.slow
def test_interrupted_group_resumes_bit_identically(datasets, tmp_path):
  straight = _group(datasets, str(tmp_path / 'straight'))
  straight.run()

  workdir = str(tmp_path / 'resumed')
  first = _group(datasets, workdir)
  fail_at_round(first, 3, KeyboardInterrupt)
  with pytest.raises(KeyboardInterrupt):
    first.run()
  assert Checkpointer(os.path.join(workdir, 'checkpoints')).latest_round() \
      == 2
  again = _group(datasets, workdir)
  again.run()
  np.testing.assert_array_equal(_flat(again.server_state),
                                _flat(straight.server_state))
  for seed in (0, 1):
    done = [_without_timings(read_metrics(
        os.path.join(d, f'seed_{seed}', 'metrics.jsonl')))
            for d in (workdir, str(tmp_path / 'straight'))]
    assert done[0] == done[1] and [r['round'] for r in done[0]] == [1, 2, 3]
    with open(os.path.join(workdir, f'seed_{seed}', 'summary.json')) as f:
      assert json.load(f)['rounds'] == 3
  with pytest.raises(ValueError, match='holds other runs'):
    _group(datasets, workdir, seeds=(1, 0)).run()


@pytest.mark.slow
def test_a_diverging_run_stops_alone_and_stays_stopped_on_resume(
    datasets, capsys, tmp_path):
  dataset = datasets[0]
  values = (0.05, 1e37)  # The second overflows in round 1.

  def algorithm_for(traced):
    return algorithms.build_algorithm(
        'fedavg', _model(dataset).apply, num_clients=dataset.num_clients,
        client_lr=traced['client_lr'])

  def group():
    return VmappedRuns(
        [Run(_simulation(dataset, 0, 'fedavg', client_lr=v),
             workdir=str(tmp_path / f'lr{k}'), hparams={'client_lr': v})
         for k, v in enumerate(values)],
        algorithm_for=algorithm_for, workdir=str(tmp_path), progress=False)

  first = group()
  fail_at_round(first, 3, KeyboardInterrupt)
  with pytest.raises(KeyboardInterrupt):
    first.run()
  assert 'Training diverged' in capsys.readouterr().err
  again = group()
  summaries = again.run()
  assert summaries[1]['diverged'] == 'diverged (round 1)'
  assert summaries[1]['rounds'] == 0
  assert 'diverged' not in summaries[0]
  single = _simulation(dataset, 0, 'fedavg', client_lr=values[0])
  single.run()
  _assert_equal_runs(single, again, 0, exact=False)


def test_runs_that_cannot_share_a_program_are_refused(datasets, tmp_path):
  dataset = datasets[0]
  with pytest.raises(ValueError, match='share every setting but the seed'):
    VmappedRuns([Run(_simulation(dataset, 0)),
                 Run(_simulation(dataset, 1, num_rounds=4))])
  with pytest.raises(ValueError, match='workdir=None'):
    VmappedRuns([Run(_simulation(dataset, 0, workdir=str(tmp_path)))])
  with pytest.raises(ValueError, match='need algorithm_for'):
    VmappedRuns([Run(_simulation(dataset, 0), hparams={'client_lr': 0.1})])

  def branching(traced):  # Coupled weight decay branches on its value.
    return algorithms.build_algorithm(
        'fedavg', _model(dataset).apply, num_clients=dataset.num_clients,
        weight_decay=traced['weight_decay'])

  group = VmappedRuns(
      [Run(_simulation(dataset, 0, 'fedavg'), hparams={'weight_decay': v})
       for v in (0.0, 0.1)], algorithm_for=branching, progress=False)
  with pytest.raises(ValueError, match='cannot vary along the run axis'):
    group.run()
