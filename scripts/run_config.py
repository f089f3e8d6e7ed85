"""The flags a workdir was trained with, kept in WORKDIR/flags.json.

A run writes its result-affecting flags, the package version and the git
commit when it starts. Re-run in the same workdir, it resumes only if those
flags match: a changed flag is refused before any work, naming each flag with
its old and new value. Flags that change how a run is scheduled or placed,
not what it computes (`SAFE_TO_CHANGE`), may change with
`--allow_config_change`; each such change is appended to the file's
`changes`.

Examples:
  >>> recorded = run_config.check(workdir, values, allow_change=False)
  >>> run_config.write(workdir, values, recorded)
"""

import datetime
import importlib.metadata
import json
import os
import subprocess
from typing import Any

from absl import flags

FILENAME = 'flags.json'
# Where outputs go and how a run shows progress: they change no result.
NOT_RECORDED = frozenset({
    'workdir', 'progress', 'allow_config_change', 'coordinator_address',
    'num_processes', 'process_id'})
# Change the run's length, its evaluation and checkpoint schedule, or its
# placement on devices, not the rounds it computes.
SAFE_TO_CHANGE = frozenset({
    'num_rounds', 'eval_every', 'checkpoint_every', 'loop',
    'clients_in_parallel', 'state_store', 'mesh_shape', 'cpu_devices'})


class ConfigChangedError(ValueError):
  """A re-run's flags differ from those its workdir was trained with."""


def flag_values(modules, defaults: bool = False) -> dict[str, Any]:
  """The values (or the defaults) of the recorded flags that `modules`
  define, by name, as JSON values."""
  return {flag.name: _jsonable(flag.default if defaults else flag.value)
          for module in modules
          for flag in flags.FLAGS.get_flags_for_module(module)
          if flag.name not in NOT_RECORDED}


def _jsonable(value: Any) -> Any:
  return json.loads(json.dumps(value))  # Lists and tuples compare alike.


def read(workdir: str) -> dict[str, Any] | None:
  """WORKDIR/flags.json, or None if the workdir has none."""
  path = os.path.join(workdir, FILENAME)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(
          f'{path} is not valid JSON ({e}); restore it, or delete it to '
          'resume without checking the flags (they are recorded again).'
      ) from None


def changed_flags(recorded: dict[str, Any], values: dict[str, Any],
                  defaults: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  """`{name: (old, new)}` for every flag whose value differs from the
  recorded one; a flag the record lacks (added since) counts as recorded at
  its default."""
  old_values = recorded['flags']
  changes = {}
  for name, new in values.items():
    old = old_values.get(name, defaults.get(name))
    if old != new:
      changes[name] = (old, new)
  return changes


def check(workdir: str, values: dict[str, Any], *, allow_change: bool,
          safe: frozenset[str] = SAFE_TO_CHANGE,
          defaults: dict[str, Any] | None = None) -> dict[str, Any] | None:
  """The workdir's record, if it has one whose flags `values` may resume.

  Reads only; writes nothing.

  Args:
    workdir: the run's directory.
    values: this run's recorded flags (`flag_values`).
    allow_change: whether flags in `safe` may differ.
    safe: the flags that may change with `allow_change`.
    defaults: flag defaults, for flags the record lacks.

  Raises:
    ConfigChangedError: a flag differs, naming each with both values and
      the ways out.
  """
  recorded = read(workdir)
  if recorded is None:
    return None
  changes = changed_flags(recorded, _jsonable(values),
                          _jsonable(defaults or {}))
  unsafe = sorted(name for name in changes if name not in safe)
  if not changes or (allow_change and not unsafe):
    return recorded
  listed = '; '.join(f'--{name}: {_show(old)} -> {_show(new)}'
                     for name, (old, new) in sorted(changes.items()))
  ways = 'use a new --workdir to train this configuration from scratch'
  if not unsafe:
    ways += (', or add --allow_config_change to resume with the change (it '
             'is recorded in flags.json)')
  elif len(unsafe) < len(changes):
    ways += (f' (of these, only {", ".join(f"--{n}" for n in unsafe)} '
             'cannot change with --allow_config_change)')
  raise ConfigChangedError(
      f'{workdir} was trained with other flags ({listed}); resuming would '
      f'mix two configurations in one run. To go on, {ways}.')


def _show(value: Any) -> str:
  return 'unset' if value is None else json.dumps(value)


def write(workdir: str, values: dict[str, Any],
          recorded: dict[str, Any] | None,
          defaults: dict[str, Any] | None = None) -> None:
  """Writes WORKDIR/flags.json: `values`, this code's version and commit,
  and the `changes` of every resume that changed a flag (with
  `--allow_config_change`) against the `recorded` configuration."""
  changes = list(recorded.get('changes', [])) if recorded else []
  if recorded is not None:
    changed = changed_flags(recorded, _jsonable(values),
                            _jsonable(defaults or {}))
    if changed:
      changes.append({
          'time': datetime.datetime.now().isoformat(timespec='seconds'),
          'flags': {name: {'old': old, 'new': new}
                    for name, (old, new) in sorted(changed.items())}})
  record = {'flags': _jsonable(values), **provenance(), 'changes': changes}
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, FILENAME)
  with open(path + '.tmp', 'w') as f:
    json.dump(record, f, indent=2)
  os.replace(path + '.tmp', path)  # Never a half-written record.


def provenance() -> dict[str, str | None]:
  """The installed package's version and, in a git checkout, its commit
  (with `+dirty` when the tree has uncommitted changes)."""
  try:
    version = importlib.metadata.version('fedjax-core')
  except importlib.metadata.PackageNotFoundError:
    version = None
  return {'package_version': version, 'git_commit': _git_commit()}


def _git_commit() -> str | None:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=here,
                            capture_output=True, text=True, timeout=10,
                            check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain',
                            '--untracked-files=no'], cwd=here,
                           capture_output=True, text=True, timeout=10,
                           check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return commit + ('+dirty' if dirty else '')
