"""The one run loop, for a single run and for vmapped runs alike.

A single run (`Simulation`) and runs vmapped into one program (`VmappedRuns`)
both present themselves as a `RunGroup`: k >= 1 runs that advance round by
round together. `run` drives a group and is the only place that does a run's
I/O: it resumes from the newest readable checkpoint, runs the rounds,
evaluates and checkpoints when due, writes each run's `metrics.jsonl` and
`summary.json`, shows the progress, and on Ctrl-C saves what it has. A
divergence the group raises stops the loop with an error naming the last
good checkpoint (a single run); one it returns stops that run alone, which
is remembered in the run's `diverged.json` (a run of a vmapped group).
"""

import json
import os
import sys
from typing import Any, Mapping, Protocol, Sequence

import numpy as np
import tqdm

from fedjax_core.engine import placement
from fedjax_core.engine.checkpointing import Checkpointer
from fedjax_core.engine.metrics_writer import MetricsWriter, read_metrics

PyTree = Any
Record = dict[str, Any]
# The runs of a group's workdir, checked on resume.
RUNS_FILE = 'runs.json'
# In a run's directory once it has diverged: its round and message.
DIVERGED_FILE = 'diverged.json'
# A run's records, one JSON line per round, and its summary.
METRICS_FILE = 'metrics.jsonl'
SUMMARY_FILE = 'summary.json'
# Evaluation metrics whose last value a summary keeps as `final_KEY`.
_FINAL_EVALUATION_KEYS = (
    'local_test_accuracy_mean', 'local_test_accuracy_p10',
    'personal_accuracy_mean', 'personal_accuracy_p10', 'personal_accuracy_std',
    'newclient_accuracy_mean', 'test_accuracy_p10', 'test_accuracy_std',
    'average_model_test_accuracy', 'backdoor_asr')


class TrainingDivergedError(FloatingPointError):
  """The training loss became NaN or infinite in round `round_num` (from 1).
  """

  def __init__(self, message: str, round_num: int):
    super().__init__(message)
    self.round_num = round_num


# A run's outcome of a round: its record, the error of a run that diverged
# in it, or None for a run that diverged before.
Outcome = Record | TrainingDivergedError | None


class RunGroup(Protocol):
  """k >= 1 runs that advance round by round together, as `run` drives them.

  Runs are numbered 0 to k - 1. A run that diverged sits out the rounds
  left; `completed_rounds` counts them too.
  """

  @property
  def completed_rounds(self) -> int:
    """Rounds done."""

  @property
  def final_round(self) -> int:
    """The round the runs end after."""

  @property
  def consistent(self) -> bool:
    """Whether the server states, client states and round count agree (no
    round is half done), so that a checkpoint may be saved."""

  @property
  def diverged(self) -> Mapping[int, TrainingDivergedError]:
    """The runs that diverged, with their errors."""

  def run_round(self) -> list[Outcome]:
    """Runs the next round of every run; a run that diverges stops.

    Raises:
      TrainingDivergedError: the group cannot go on without the run that
        diverged (a single run).
    """

  def complete_records(self, records: Sequence[Record | None],
                       evaluate: bool) -> None:
    """Adds to each record of the round just run its run's evaluation if
    `evaluate`, and keeps the records in the runs' histories."""

  def checkpoint_state(self) -> tuple[PyTree, PyTree, PyTree]:
    """The server, client and aggregator states a checkpoint holds."""

  def restore(self, completed_rounds: int, server_state: PyTree,
              client_states: PyTree, aggregator_state: PyTree) -> None:
    """Continues from a checkpoint's states, saved after `completed_rounds`
    rounds."""

  def stop(self, k: int, error: TrainingDivergedError) -> None:
    """Stops run k, which diverged before the checkpoint resumed from."""

  def history(self, k: int) -> list[Record]:
    """Run k's records, of the rounds it ran in this process."""

  def summary(self, k: int) -> dict[str, Any]:
    """Run k's summary entries beyond its metrics' (`summarize`)."""

  def name(self, k: int) -> str:
    """Run k's name in messages."""


class OneRun(Protocol):
  """A single run as `LoneRun` drives it (`Simulation`,
  `DecentralizedSimulation`)."""

  config: Any  # Its `seed` names the run in messages.
  history: list[Record]
  completed_rounds: int
  final_round: int
  consistent: bool

  def run_round(self) -> Record:
    """Runs the next round; returns its record."""

  def evaluate(self) -> dict[str, float]:
    """The metrics of the model(s) after the rounds done."""

  def complete_record(self, record: Record,
                      evaluation: dict[str, float] | None) -> None:
    """Adds `evaluation` (if any) to the round's record and keeps it."""

  def checkpoint_state(self) -> tuple[PyTree, PyTree, PyTree]:
    """The states a checkpoint holds."""

  def restore(self, completed_rounds: int, *states: PyTree) -> None:
    """Continues from a checkpoint's states."""

  def summary_entries(self) -> dict[str, Any]:
    """The run's summary entries beyond its metrics'."""


class LoneRun:
  """One run as the driver's group of one (`RunGroup`); its divergence
  stops the loop."""

  def __init__(self, one_run: OneRun):
    self._run = one_run

  @property
  def diverged(self) -> dict[int, TrainingDivergedError]:
    return {}  # A lone run's divergence raises instead.

  @property
  def completed_rounds(self) -> int:
    return self._run.completed_rounds

  @property
  def final_round(self) -> int:
    return self._run.final_round

  @property
  def consistent(self) -> bool:
    return self._run.consistent

  def run_round(self) -> list[Record]:
    return [self._run.run_round()]

  def complete_records(self, records: list[Record], evaluate: bool) -> None:
    evaluation = self._run.evaluate() if evaluate else None
    self._run.complete_record(records[0], evaluation)

  def checkpoint_state(self) -> tuple[PyTree, PyTree, PyTree]:
    return self._run.checkpoint_state()

  def restore(self, *state: Any) -> None:
    self._run.restore(*state)

  def stop(self, k: int, error: TrainingDivergedError) -> None:
    """A lone run that diverged cannot go on: raises `error`."""
    del k
    raise error

  def history(self, k: int) -> list[Record]:
    del k
    return self._run.history

  def summary(self, k: int) -> dict[str, Any]:
    del k
    return self._run.summary_entries()

  def name(self, k: int) -> str:
    del k
    return f'seed {self._run.config.seed}'


def run(group: RunGroup, *, workdir: str | None,
        run_workdirs: Sequence[str | None], eval_every: int,
        checkpoint_every: int, progress: bool,
        runs_description: list[dict[str, Any]] | None = None
        ) -> list[dict[str, Any]]:
  """Runs (or resumes) `group` to its final round; returns each run's
  summary, in order.

  Args:
    group: the runs.
    workdir: where the group's checkpoints (and `runs.json`) go; None keeps
      no checkpoint.
    run_workdirs: where each run's metrics, summary and divergence go; None
      keeps that run's in memory only.
    eval_every: evaluate every this many rounds and after the last; 0 only
      after the last.
    checkpoint_every: checkpoint every this many rounds and after the last.
    progress: show a progress bar.
    runs_description: what `runs.json` records of the runs; a resumed
      workdir's must match. None writes no `runs.json`.

  Raises:
    TrainingDivergedError: the group raised it; with a checkpoint, its
      message names the round of the last good one.
    ValueError: `workdir` holds other runs than `runs_description`'s.
  """
  loop = _Loop(group, workdir, run_workdirs)
  resumed_from = loop.resume(runs_description)
  try:
    loop.train(eval_every, checkpoint_every, progress)
  finally:
    loop.close()
  return loop.summaries(resumed_from)


class _Loop:
  """One drive of a group: its checkpointer, its runs' metrics writers and
  the round of its newest checkpoint."""

  def __init__(self, group: RunGroup, workdir: str | None,
               run_workdirs: Sequence[str | None]):
    self._group = group
    self._workdir = workdir
    self._run_workdirs = list(run_workdirs)
    # Every process checkpoints (orbax writes collectively); only the first
    # logs.
    self._main = placement.is_main_process()
    self._checkpointer: Checkpointer | None = None
    self._writers: list[MetricsWriter | None] = []
    self._saved = 0

  def _logged(self, k: int, filename: str) -> str | None:
    """The path of run k's file `filename` if this process writes it."""
    run_workdir = self._run_workdirs[k]
    if not (self._main and run_workdir):
      return None
    return os.path.join(run_workdir, filename)

  def resume(self, runs_description: list[dict[str, Any]] | None) -> int:
    """Resumes the group from the newest readable checkpoint and opens the
    metrics writers; returns the checkpoint's round, 0 if there is none."""
    resumed_from = 0
    if self._workdir:
      if runs_description is not None:
        _check_runs(self._workdir, runs_description)
      self._checkpointer = Checkpointer(
          os.path.join(self._workdir, 'checkpoints'))
      restored = self._checkpointer.restore_latest(
          *self._group.checkpoint_state())
      if restored is not None:
        self._group.restore(*restored)
        resumed_from = restored[0]
    self._stop_diverged()
    self._saved = self._group.completed_rounds
    self._writers = [
        MetricsWriter(path, self._saved) if path else None
        for path in (self._logged(k, METRICS_FILE)
                     for k in range(len(self._run_workdirs)))]
    return resumed_from

  def _stop_diverged(self) -> None:
    """Stops the runs that diverged up to the round resumed from; a run
    that diverged later will diverge again."""
    for k, run_workdir in enumerate(self._run_workdirs):
      path = os.path.join(run_workdir or '', DIVERGED_FILE)
      if not (run_workdir and os.path.exists(path)):
        continue
      with open(path) as f:
        diverged = json.load(f)
      if diverged['round'] <= self._group.completed_rounds:
        self._group.stop(k, TrainingDivergedError(diverged['message'],
                                                  diverged['round']))

  def train(self, eval_every: int, checkpoint_every: int,
            progress: bool) -> None:
    """Runs the rounds left, or until every run has diverged."""
    group = self._group
    unwritten = []  # Finished rounds' records not yet in metrics.jsonl.
    bar = tqdm.tqdm(total=group.final_round, initial=self._saved,
                    unit='round', disable=not (progress and self._main),
                    dynamic_ncols=True)
    try:
      while group.completed_rounds < group.final_round:
        records = unwritten = [self._record(k, outcome) for k, outcome
                               in enumerate(group.run_round())]
        group.complete_records(records, self._due(eval_every))
        self._write(records)
        unwritten = []
        if self._checkpointer and self._due(checkpoint_every):
          self._save()
        bar.update(1)
        bar.set_postfix(_postfix(records))
        if all(record is None for record in records):
          break
    except TrainingDivergedError as e:
      if self._checkpointer:
        raise TrainingDivergedError(
            f'{e} The last good checkpoint (after round {self._saved}) is in '
            f'{self._workdir}.', e.round_num) from None
      raise
    except KeyboardInterrupt:
      self._save_interrupted(unwritten)
      raise
    finally:
      bar.close()

  def _due(self, every: int) -> bool:
    return is_due(self._group.completed_rounds, self._group.final_round,
                  every)

  def _record(self, k: int, outcome: Outcome) -> Record | None:
    """Run k's record of the round, or None once it has diverged; reports
    and remembers a divergence in this round."""
    if not isinstance(outcome, TrainingDivergedError):
      return outcome
    path = self._logged(k, DIVERGED_FILE)
    if self._main:
      print(f'\n{self._group.name(k)}: {outcome}', file=sys.stderr)
    if path:  # A resumed group must know it too.
      with open(path, 'w') as f:
        json.dump({'round': outcome.round_num, 'message': str(outcome)}, f)
    return None

  def _write(self, records: Sequence[Record | None]) -> None:
    for writer, record in zip(self._writers, records):
      if writer and record:
        writer.write(record)

  def _save(self) -> None:
    self._checkpointer.save(self._group.completed_rounds,
                            *self._group.checkpoint_state())
    self._saved = self._group.completed_rounds

  def _save_interrupted(self, unwritten: Sequence[Record | None]) -> None:
    """Keeps what an interrupted run has: the finished round's records and,
    unless a round is half done, a checkpoint of its state."""
    self._write(unwritten)
    if not self._checkpointer:
      return
    group = self._group
    if group.consistent and group.completed_rounds > self._saved:
      self._save()
    print(f'\nInterrupted; progress up to round {self._saved} is saved in '
          f'{self._workdir}. Re-run with the same --workdir to resume.')

  def close(self) -> None:
    """Waits for pending saves and closes the files."""
    if self._checkpointer:
      self._checkpointer.close()
    for writer in filter(None, self._writers):
      writer.close()

  def summaries(self, resumed_from: int) -> list[dict[str, Any]]:
    """The runs' summaries, each also written to its run's `summary.json`;
    they name the checkpoint's round the group resumed from, if it did."""
    return [self._summary(k, resumed_from)
            for k in range(len(self._run_workdirs))]

  def _summary(self, k: int, resumed_from: int) -> dict[str, Any]:
    metrics_path = self._logged(k, METRICS_FILE)
    history = self._group.history(k)
    if metrics_path:
      history = read_metrics(metrics_path)
    summary = {**summarize(history), **self._group.summary(k)}
    if k in self._group.diverged:
      summary['diverged'] = (
          f'diverged (round {self._group.diverged[k].round_num})')
    if resumed_from:
      summary['resumed_from_round'] = resumed_from
    path = self._logged(k, SUMMARY_FILE)
    if path:
      with open(path, 'w') as f:
        json.dump(summary, f, indent=2)
    return summary


def _check_runs(workdir: str, runs_description: list[dict[str, Any]]
                ) -> None:
  """Writes `runs.json`, or checks that a resumed workdir's matches."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, RUNS_FILE)
  if not os.path.exists(path):
    with open(path, 'w') as f:
      json.dump(runs_description, f, indent=2)
    return
  with open(path) as f:
    found = json.load(f)
  if found != runs_description:
    raise ValueError(
        f'{workdir} holds other runs ({path}); resume with the same --seed, '
        '--num_seeds and --vmapped_hparam, or use a new --workdir.')


def is_due(completed_rounds: int, final_round: int, every: int) -> bool:
  """Whether the round that completes `completed_rounds` is evaluated (or
  checkpointed) when that happens `every` rounds (0: only the last)."""
  last = completed_rounds == final_round
  return last or (every > 0 and completed_rounds % every == 0)


def _postfix(records: Sequence[Record | None]) -> dict[str, str]:
  """The progress bar's mean over the live runs of the train loss, and of
  the test accuracy and epsilon where the records have them."""
  live = [r for r in records if r]
  postfix = {}
  for key, name, spec in (('train_loss', 'loss', '.4f'),
                          ('test_accuracy', 'test_acc', '.4f'),
                          ('epsilon', 'eps', '.3g')):
    values = [r[key] for r in live if key in r]
    if values:
      postfix[name] = format(np.mean(values), spec)
  return postfix


def summarize(history: list[Record]) -> dict[str, Any]:
  """Final and best test accuracy (and the final per-client accuracy where
  clients hold out test rows; the spread over node models and the
  consensus distance of a decentralized run) and the time of a run's
  rounds: `wall_s` in all, compiles included, and `s_per_round`, the mean
  of the rounds that compiled nothing (None if every round did)."""
  evaluated = [r for r in history if 'test_accuracy' in r]
  steady = [r['wall_s'] for r in history if not r.get('compiled')]
  summary: dict[str, Any] = {
      'rounds': history[-1]['round'] if history else 0,
      'final_train_loss': history[-1]['train_loss'] if history else None,
      'wall_s': sum(r['wall_s'] for r in history),
      's_per_round': sum(steady) / len(steady) if steady else None,
  }
  if evaluated:
    best = max(evaluated, key=lambda r: r['test_accuracy'])
    summary.update(final_test_accuracy=evaluated[-1]['test_accuracy'],
                   final_test_loss=evaluated[-1]['test_loss'],
                   best_test_accuracy=best['test_accuracy'],
                   best_round=best['round'])
    for key in _FINAL_EVALUATION_KEYS:
      if key in evaluated[-1]:
        summary[f'final_{key}'] = evaluated[-1][key]
  if history and 'consensus_distance' in history[-1]:
    summary['final_consensus_distance'] = history[-1]['consensus_distance']
  return summary
