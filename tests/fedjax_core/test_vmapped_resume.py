"""A vmapped group resumes past a damaged checkpoint, and says so."""

import os

import pytest

import algorithms
import checkpoint_damage
from fedjax_core import Run, Simulation, SimulationConfig, VmappedRuns
from fedjax_core import read_metrics
from fedjax_core.data.datasets import load_dataset
import models


def _group(dataset, workdir):
  model = models.get_model('logreg', dataset.example_shape,
                           dataset.num_classes)
  algorithm = algorithms.build_algorithm(
      'fedadam', model.apply, num_clients=dataset.num_clients,
      client_lr=0.05)
  runs = [Run(Simulation(algorithm, model, dataset, SimulationConfig(
      num_rounds=3, clients_per_round=3, batch_size=16, seed=seed,
      checkpoint_every=1, progress=False, size_buckets=1)),
              workdir=os.path.join(workdir, f'seed_{seed}'))
          for seed in (0, 1)]
  return VmappedRuns(runs, workdir=workdir, progress=False)


def _metrics(workdir):
  return [read_metrics(os.path.join(workdir, f'seed_{seed}', 'metrics.jsonl'))
          for seed in (0, 1)]


@pytest.mark.slow
def test_group_falls_back_past_a_damaged_checkpoint(tmp_path, capsys):
  dataset = load_dataset('digits', num_clients=8, seed=0)
  workdir = str(tmp_path)
  first = _group(dataset, workdir).run()
  assert all('resumed_from_round' not in s for s in first)
  want = _metrics(workdir)
  checkpoints = os.path.join(workdir, 'checkpoints')
  checkpoint_damage.truncate(os.path.join(checkpoints, '3'))
  capsys.readouterr()

  summaries = _group(dataset, workdir).run()
  notes = checkpoint_damage.printed_notes(capsys)
  assert len(notes) == 1 and notes[0].startswith(
      f'Checkpoint of round 3 in {checkpoints} is unreadable ('), notes
  assert [s['resumed_from_round'] for s in summaries] == [2, 2]
  for got, wanted in zip(_metrics(workdir), want, strict=True):
    assert [m['round'] for m in got] == [1, 2, 3]
    assert [m['train_loss'] for m in got] == [
        m['train_loss'] for m in wanted]
