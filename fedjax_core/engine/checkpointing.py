"""Checkpoints of a run's server state and client-state store, via orbax.

A checkpoint's step is the number of completed rounds. Everything a resumed
run needs is a function of that step and the run's flags (the sampler, the
batch shuffles and the PRNG keys derive from the seed and the round), so a
resumed run is bit-identical to an uninterrupted one. `Frozen` state (a
pre-trained base) is left out: a resumed run has it from its start.

A run resumes from its newest readable checkpoint (`restore_latest`): an
unreadable one is reported, deleted and passed over, while one holding
state of other shapes (another model or algorithm) stops the run.
"""

import contextlib
import gc
import logging
import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from fedjax_core.algorithm import Frozen
from fedjax_core.errors import SettingError

PyTree = Any
# Differing items a `CheckpointMismatchError` names.
_SHOWN_DIFFERENCES = 3
# Characters of an unreadable checkpoint's reason.
_REASON_CHARS = 100


class CheckpointMismatchError(SettingError):
  """A checkpoint holds state of other paths, shapes or dtypes than the run:
  it was written by a run with another model or algorithm (`setting` is
  'workdir')."""


def _is_frozen(node: Any) -> bool:
  return isinstance(node, Frozen)


def _without_frozen(tree: PyTree) -> PyTree:
  """`tree` with every `Frozen` node emptied."""
  return jax.tree.map(lambda x: Frozen(()) if _is_frozen(x) else x, tree,
                      is_leaf=_is_frozen)


def _children(node: Any) -> list[Any]:
  """`node`'s children one level down; [node] for a leaf."""
  return jax.tree_util.tree_leaves(node, is_leaf=lambda x: x is not node)


def _is_item(node: Any) -> bool:
  """Whether orbax matches `node` as one item of a saved tree: a leaf, or
  an empty node ({}, (), None)."""
  children = _children(node)
  return not children or children[0] is node


def _item_specs(tree: PyTree) -> dict[str, str]:
  """Each item's path ('server/params/w') -> its dtype and shape
  ('float32[3, 2]', or 'empty'), for arrays and orbax's array metadata
  alike."""
  return {jax.tree_util.keystr(path, simple=True, separator='/'):
          f'{item.dtype}{list(item.shape)}' if _children(item) else 'empty'
          for path, item in jax.tree_util.tree_flatten_with_path(
              tree, is_leaf=_is_item)[0]}


def _differences(saved: dict[str, str], wanted: dict[str, str]
                 ) -> list[str]:
  """The items in which `saved` and `wanted` (from `_item_specs`) differ,
  one phrase each, in path order."""
  phrases = []
  for path in sorted(saved.keys() | wanted.keys()):
    if path not in wanted:
      phrases.append(f'{path} is only in the checkpoint')
    elif path not in saved:
      phrases.append(f'{path} is not in the checkpoint')
    elif saved[path] != wanted[path]:
      phrases.append(f'{path} is {saved[path]} there, {wanted[path]} here')
  return phrases


def _reason(error: BaseException) -> str:
  """`error`'s innermost cause as 'Type: first line of its message',
  trimmed."""
  while error.__cause__ is not None:
    error = error.__cause__
  lines = str(error).strip().splitlines()
  reason = f'{type(error).__name__}: {lines[0] if lines else ""}'.rstrip(': ')
  if len(reason) > _REASON_CHARS:
    reason = reason[:_REASON_CHARS - 3] + '...'
  return reason


class Checkpointer:
  """Saves and restores `{'server': server_state, 'clients': stacked,
  'aggregator': aggregator_state}` (the last one empty unless the
  aggregation keeps state, e.g. an adaptive DP clip norm)."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self._directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self._directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True),
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_round(self) -> int | None:
    """Completed rounds of the newest checkpoint, None if there is none."""
    return self._manager.latest_step()

  def save(self, completed_rounds: int, server_state: PyTree,
           client_states: PyTree, aggregator_state: PyTree = None) -> None:
    """Starts saving; returns once the state no longer needs its buffers."""
    self._manager.save(completed_rounds, args=ocp.args.StandardSave(
        {'server': _without_frozen(server_state), 'clients': client_states,
         'aggregator': aggregator_state or {}}))

  def restore(self, completed_rounds: int, server_template: PyTree,
              clients_template: PyTree, aggregator_template: PyTree = None
              ) -> tuple[PyTree, PyTree, PyTree]:
    """The saved server, client and aggregator states, with the templates'
    types, shapes and shardings; the server's `Frozen` state is the
    template's."""
    target = _target(server_template, clients_template, aggregator_template)
    return _with_frozen(server_template, self._manager.restore(
        completed_rounds, args=ocp.args.StandardRestore(target)))

  def restore_latest(self, server_template: PyTree, clients_template: PyTree,
                     aggregator_template: PyTree = None
                     ) -> tuple[int, PyTree, PyTree, PyTree] | None:
    """The newest readable checkpoint's round and states (as `restore`
    gives them); None when no checkpoint is readable.

    Checkpoints are tried newest first. One that cannot be read (a
    truncated or missing file, an empty step directory, any read error) is
    reported in one line on stderr and deleted, so that the run's later
    saves of its round are not refused; then the next older one is tried.

    Raises:
      CheckpointMismatchError: the newest checkpoint with readable metadata
        holds items (arrays, empty nodes) of other paths, shapes or dtypes
        than the templates.
    """
    target = _target(server_template, clients_template, aggregator_template)
    steps = sorted(self._manager.all_steps(), reverse=True)
    for i, step in enumerate(steps):
      restored, reason = self._read(step, target)
      if reason is None:
        return (step,) + _with_frozen(server_template, restored)
      self._manager.delete(step)
      then = (f'trying round {steps[i + 1]}' if i + 1 < len(steps) else
              'no readable checkpoint is left, so the run starts from '
              'round 0')
      _note(f'Checkpoint of round {step} in {self._directory} is '
            f'unreadable ({reason}); deleted it, {then}.')
    return None

  def _read(self, step: int, target: PyTree) -> tuple[PyTree, str | None]:
    """Checkpoint `step` restored as `target` and None, or None and why it
    cannot be read.

    Raises:
      CheckpointMismatchError: its items differ from `target`'s.
    """
    with _quiet_failed_reads():
      try:
        self._check_structure(step, target)
        return self._manager.restore(
            step, args=ocp.args.StandardRestore(target)), None
      except CheckpointMismatchError:
        raise
      except Exception as e:  # Any read error: the step is unreadable.
        return None, _reason(e)

  def _check_structure(self, step: int, target: PyTree) -> None:
    """Raises CheckpointMismatchError if checkpoint `step`'s items differ
    from `target`'s in path, shape or dtype; lets read errors through."""
    step_dir = os.path.join(self._directory, str(step))
    metadata = (self._manager.item_metadata(step) if os.listdir(step_dir)
                else None)
    if metadata is None:
      raise FileNotFoundError('no checkpoint metadata')
    differences = _differences(_item_specs(metadata.tree),
                               _item_specs(target))
    if not differences:
      return
    shown = '; '.join(differences[:_SHOWN_DIFFERENCES])
    more = len(differences) - _SHOWN_DIFFERENCES
    if more > 0:
      shown += f'; and {more} more'
    raise CheckpointMismatchError(
        'workdir',
        f'The checkpoint of round {step} in {self._directory} was written '
        f'by a run with a different model or algorithm state ({shown}). '
        f'Use a new workdir, or delete {self._directory} to start over.')

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()


def _target(server_template: PyTree, clients_template: PyTree,
            aggregator_template: PyTree) -> PyTree:
  """The saved tree's shapes, dtypes and shardings, as the templates
  give them."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct,
                      {'server': _without_frozen(server_template),
                       'clients': clients_template,
                       'aggregator': aggregator_template or {}})


def _with_frozen(server_template: PyTree, restored: PyTree
                 ) -> tuple[PyTree, PyTree, PyTree]:
  """The restored server, client and aggregator states, the server's
  `Frozen` state taken from its template."""
  server = jax.tree.map(
      lambda template, saved: template if _is_frozen(template) else saved,
      server_template, restored['server'], is_leaf=_is_frozen)
  return server, restored['clients'], restored['aggregator']


@contextlib.contextmanager
def _quiet_failed_reads():
  """Silences what a failed orbax restore leaves behind, which
  `restore_latest` says in one line: asyncio's traceback for each array read
  left unawaited, and tensorstore's callbacks into orbax's closed event
  loop."""
  logger = logging.getLogger('asyncio')
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  _drop_closed_loop_callbacks()
  try:
    yield
  finally:
    gc.collect()  # Drops the failed reads while asyncio is quiet.
    logger.setLevel(level)


def _drop_closed_loop_callbacks() -> None:
  """Installs, once per process, an unraisable-exception hook that drops
  `RuntimeError('Event loop is closed')` and hands every other exception to
  the hook before it. Tensorstore raises it when a read still in flight
  after a failed restore completes into orbax's closed event loop, which
  can happen after the restore has returned."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_closed_loop_callbacks', False):
    return

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      previous(unraisable)

  hook.drops_closed_loop_callbacks = True
  sys.unraisablehook = hook


def _note(line: str) -> None:
  """Prints `line` on stderr from the first process."""
  if jax.process_index() == 0:
    print(line, file=sys.stderr)
