"""The one run loop on a scripted group of runs: evaluation and checkpoint
rounds, a run diverging alone or the whole group stopping, interruption,
resume, and the files it writes."""

import json
import os
import re

import numpy as np
import pytest

from fedjax_core import Checkpointer, read_metrics
from fedjax_core.engine import driver
from fedjax_core.engine import placement
from fedjax_core.engine.driver import TrainingDivergedError


class _Group:
  """A `driver.RunGroup` whose round r gives every live run the record
  `{'round': r, 'train_loss': 1 / r, ...}`; its state is the round count.

  Args:
    num_runs: runs in the group.
    final_round: the round the runs end after.
    diverge_at: run -> the round it diverges in.
    raise_divergence: raise a divergence (as a lone run does) instead of
      returning it.
    interrupt_round: Ctrl-C in this round's `run_round`, halfway through.
    interrupt_evaluation: Ctrl-C in this round's evaluation.
  """

  def __init__(self, num_runs=2, final_round=4, diverge_at=None,
               raise_divergence=False, interrupt_round=None,
               interrupt_evaluation=None):
    self.completed_rounds = 0
    self.final_round = final_round
    self.consistent = True
    self.diverged = {}
    self.evaluated = []
    self.restored_from = None
    self.num_runs = num_runs
    self._diverge_at = diverge_at or {}
    self._raise_divergence = raise_divergence
    self._interrupt_round = interrupt_round
    self._interrupt_evaluation = interrupt_evaluation
    self._histories = [[] for _ in range(num_runs)]

  def run_round(self):
    round_num = self.completed_rounds + 1
    self.consistent = False
    if round_num == self._interrupt_round:
      raise KeyboardInterrupt
    outcomes = [self._outcome(k, round_num) for k in range(self.num_runs)]
    self.completed_rounds = round_num
    self.consistent = True
    return outcomes

  def _outcome(self, k, round_num):
    if k in self.diverged:
      return None
    if self._diverge_at.get(k) == round_num:
      error = TrainingDivergedError(
          f'Training diverged in round {round_num}.', round_num)
      if self._raise_divergence:
        raise error
      self.diverged[k] = error
      return error
    return {'round': round_num, 'train_loss': 1.0 / round_num,
            'wall_s': 0.5, 'compiled': round_num == 1}

  def complete_records(self, records, evaluate):
    if evaluate:
      self.evaluated.append(self.completed_rounds)
    if self.completed_rounds == self._interrupt_evaluation:
      raise KeyboardInterrupt
    for k, record in enumerate(records):
      if record is None:
        continue
      if evaluate:
        record.update(test_loss=1.0, test_accuracy=0.1 * k + 0.01 * len(
            self.evaluated))
      self._histories[k].append(record)

  def checkpoint_state(self):
    rounds = np.full(self.num_runs, self.completed_rounds, np.int32)
    return {'rounds': rounds}, np.zeros((self.num_runs, 3), np.float32), {}

  def restore(self, completed_rounds, server_state, client_states,
              aggregator_state):
    del client_states, aggregator_state
    assert np.all(np.asarray(server_state['rounds']) == completed_rounds)
    self.completed_rounds = self.restored_from = completed_rounds

  def stop(self, k, error):
    self.diverged[k] = error

  def history(self, k):
    return self._histories[k]

  def summary(self, k):
    return {'seed': k}

  def name(self, k):
    return f'run {k}'


def _drive(group, tmp_path, eval_every=2, checkpoint_every=1, **kwargs):
  run_workdirs = [str(tmp_path / f'run{k}') for k in range(group.num_runs)]
  return driver.run(group, workdir=str(tmp_path), run_workdirs=run_workdirs,
                    eval_every=eval_every, checkpoint_every=checkpoint_every,
                    progress=False, **kwargs)


def _logged_rounds(tmp_path, k):
  return [r['round'] for r in read_metrics(
      str(tmp_path / f'run{k}' / 'metrics.jsonl'))]


def _checkpoints(tmp_path):
  return sorted(int(step) for step in os.listdir(tmp_path / 'checkpoints'))


def test_evaluations_and_checkpoints_fall_on_their_rounds_and_the_last(
    tmp_path):
  group = _Group(final_round=5)
  summaries = _drive(group, tmp_path, eval_every=2, checkpoint_every=3)
  assert group.evaluated == [2, 4, 5]
  assert _checkpoints(tmp_path) == [3, 5]
  for k, summary in enumerate(summaries):
    assert _logged_rounds(tmp_path, k) == [1, 2, 3, 4, 5]
    with open(tmp_path / f'run{k}' / 'summary.json') as f:
      assert json.load(f) == summary
    assert summary['seed'] == k and summary['rounds'] == 5
    assert summary['best_round'] == 5 and summary['final_train_loss'] == 0.2
    assert summary['s_per_round'] == 0.5  # Round 1 compiled.
    assert 'resumed_from_round' not in summary


def test_a_diverging_run_stops_alone_and_stays_stopped_on_resume(
    tmp_path, capsys):
  group = _Group(final_round=4, diverge_at={1: 2})
  summaries = _drive(group, tmp_path)
  assert 'run 1: Training diverged in round 2.' in capsys.readouterr().err
  assert group.completed_rounds == 4
  assert _logged_rounds(tmp_path, 0) == [1, 2, 3, 4]
  assert _logged_rounds(tmp_path, 1) == [1]
  with open(tmp_path / 'run1' / 'diverged.json') as f:
    assert json.load(f) == {'round': 2,
                            'message': 'Training diverged in round 2.'}
  assert 'diverged' not in summaries[0]
  assert summaries[1]['diverged'] == 'diverged (round 2)'
  assert summaries[1]['rounds'] == 1

  again = _Group(final_round=4)  # Would not diverge: the file says it did.
  summaries = _drive(again, tmp_path)
  assert again.restored_from == 4 and list(again.diverged) == [1]
  assert summaries[1]['diverged'] == 'diverged (round 2)'
  assert [s['resumed_from_round'] for s in summaries] == [4, 4]
  assert _logged_rounds(tmp_path, 1) == [1]


def test_the_loop_ends_once_every_run_has_diverged():
  group = _Group(final_round=10, diverge_at={0: 2, 1: 3})
  summaries = driver.run(group, workdir=None, run_workdirs=[None, None],
                         eval_every=1, checkpoint_every=1, progress=False)
  assert group.completed_rounds == 3
  assert [s['diverged'] for s in summaries] == ['diverged (round 2)',
                                                'diverged (round 3)']
  assert [s['rounds'] for s in summaries] == [1, 2]  # From memory.


def test_a_raised_divergence_stops_and_names_the_last_good_checkpoint(
    tmp_path):
  group = _Group(num_runs=1, diverge_at={0: 3}, raise_divergence=True)
  with pytest.raises(TrainingDivergedError,
                     match=re.escape(
                         'round 3. The last good checkpoint (after round 2) '
                         f'is in {tmp_path}.') + '$') as raised:
    _drive(group, tmp_path)
  assert raised.value.round_num == 3
  assert _checkpoints(tmp_path) == [1, 2]
  assert not os.path.exists(tmp_path / 'run0' / 'diverged.json')
  without_workdir = _Group(num_runs=1, diverge_at={0: 1},
                           raise_divergence=True)
  with pytest.raises(TrainingDivergedError,
                     match='^Training diverged in round 1.$'):
    driver.run(without_workdir, workdir=None, run_workdirs=[None],
               eval_every=1, checkpoint_every=1, progress=False)


@pytest.mark.parametrize('interruption, saved', [
    # In evaluation the round is done: its records and state are kept.
    (dict(interrupt_evaluation=3), 3),
    # Halfway through a round, the last finished one is not consistent.
    (dict(interrupt_round=4), 2),
])
def test_an_interrupted_run_keeps_what_it_has(tmp_path, capsys, interruption,
                                              saved):
  group = _Group(final_round=6, **interruption)
  with pytest.raises(KeyboardInterrupt):
    _drive(group, tmp_path, checkpoint_every=2)
  assert Checkpointer(str(tmp_path / 'checkpoints')).latest_round() == saved
  assert _logged_rounds(tmp_path, 0) == [1, 2, 3]
  assert (f'Interrupted; progress up to round {saved} is saved in '
          f'{tmp_path}.') in capsys.readouterr().out


def test_a_workdir_of_other_runs_is_refused(tmp_path):
  _drive(_Group(final_round=1), tmp_path, runs_description=[{'seed': 0}])
  with open(tmp_path / 'runs.json') as f:
    assert json.load(f) == [{'seed': 0}]
  with pytest.raises(ValueError, match='holds other runs'):
    _drive(_Group(final_round=1), tmp_path, runs_description=[{'seed': 1}])


def test_only_the_first_process_logs(tmp_path, monkeypatch):
  monkeypatch.setattr(placement, 'is_main_process', lambda: False)
  summaries = _drive(_Group(final_round=2, diverge_at={1: 1}), tmp_path)
  assert sorted(os.listdir(tmp_path)) == ['checkpoints']
  assert summaries[0]['rounds'] == 2  # From memory.
