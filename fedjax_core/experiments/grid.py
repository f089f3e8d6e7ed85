"""Grids of training configurations: expansion, keys, sharding and resuming.

A grid spec is a dict with two optional keys: "base", the `scripts.train`
flags every configuration shares, and "grid", a dict from flag name to the
list of values to try, or a list of such dicts (the union of their
products, for hyperparameters that belong to one algorithm only). Flag
names have no dashes. "seed" is the seed axis: configurations that differ
only in the seed form one unit, whose seeds one compiled program can run
side by side (`scripts.train --num_seeds`).

  {"base": {"dataset": "synthetic", "model": "logreg", "num_rounds": 20},
   "grid": {"algorithm": ["fedavg", "fedprox"], "client_lr": [0.01, 0.1],
            "seed": [0, 1, 2]}}

A unit's key is the hash of its flags without the seed, so its directory
`WORKDIR/runs/KEY/` does not move when seeds are added. Seed S of a unit is
done when `WORKDIR/runs/KEY/seed_S/summary.json` exists. Everything here is
pure except `load_grid` and `completed_seeds`, which only read files.
"""

import dataclasses
import hashlib
import importlib.util
import itertools
import json
import os
from typing import Any, Iterable, Sequence

from fedjax_core.errors import SettingError

SEED = 'seed'
RESERVED_FLAGS = ('workdir', 'num_seeds', 'vmapped_hparam')
_TOP_LEVEL_KEYS = ('base', 'grid')
_HASH_CHARS = 12
_SCALARS = (bool, int, float, str)


@dataclasses.dataclass(frozen=True)
class Unit:
  """One configuration with all its seeds: the flags of one train program.

  Attributes:
    key: The hash of `flags` (see `config_hash`); the run directory's name.
    flags: The train flags without the seed.
    label: The grid keys that vary, e.g. "algorithm=fedprox,client_lr=0.1".
    seeds: The seeds, ascending, without repeats.
  """
  key: str
  flags: dict[str, Any]
  label: str
  seeds: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Launch:
  """One train process: consecutive seeds of one unit.

  Attributes:
    unit: The unit the seeds belong to.
    seeds: Consecutive integers, ascending.
    workdir: The train --workdir: the unit's run directory for several
      seeds, the seed's own directory for one, so that every seed's results
      land in `RUN_DIR/seed_S/` either way.
  """
  unit: Unit
  seeds: tuple[int, ...]
  workdir: str


def load_grid(path: str) -> dict:
  """Reads a grid spec from a .json file or a .py file defining GRID.

  Args:
    path: The grid file.

  Returns:
    The spec, not yet validated.

  Raises:
    ValueError: The file is neither .json nor .py, is not valid JSON, or
      defines no GRID.
  """
  if path.endswith('.json'):
    with open(path) as f:
      try:
        return json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f'{path} is not valid JSON: {e}') from e
  if path.endswith('.py'):
    return _grid_of_module(path)
  raise ValueError(f'{path}: a grid file is .json, or .py defining GRID.')


def _grid_of_module(path: str) -> dict:
  """The module-level GRID of the Python file `path`."""
  spec = importlib.util.spec_from_file_location('_sweep_grid', path)
  if spec is None:
    raise ValueError(f'{path} cannot be loaded as a Python module.')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, 'GRID'):
    raise ValueError(f'{path} defines no GRID; add GRID = {{"base": ..., '
                     f'"grid": ...}} at module level.')
  return module.GRID


def validate_grid(spec: Any) -> None:
  """Rejects a malformed grid spec.

  Args:
    spec: A grid spec (see the module docstring).

  Raises:
    ValueError: Naming the problem and the fix.
  """
  if not isinstance(spec, dict):
    raise ValueError(f'A grid spec is a dict with keys "base" and "grid", '
                     f'got {type(spec).__name__}.')
  unknown = [k for k in spec if k not in _TOP_LEVEL_KEYS]
  if unknown:
    raise ValueError(f'Unknown top-level key(s) {unknown} in the grid spec; '
                     f'the only keys are "base" and "grid" (put flags in '
                     f'one of them).')
  base = spec.get('base', {})
  if not isinstance(base, dict):
    raise ValueError(f'"base" maps flag names to values, got '
                     f'{type(base).__name__}.')
  for name, value in base.items():
    _check_name(name, 'base')
    _check_value(name, value, 'base')
  listed = isinstance(spec.get('grid'), list)
  for index, grid in enumerate(_subgrids(spec)):
    _check_subgrid(grid, base, f'grid[{index}]' if listed else 'grid')


def _subgrids(spec: dict) -> list:
  """The spec's "grid" as a list of dicts (unchecked beyond the list)."""
  grid = spec.get('grid', {})
  if isinstance(grid, dict):
    return [grid]
  if not isinstance(grid, list):
    raise ValueError(f'"grid" is a dict of value lists or a list of such '
                     f'dicts, got {type(grid).__name__}.')
  if not grid:
    raise ValueError('"grid" is an empty list; give at least one sub-grid '
                     '(a dict), or drop "grid" to run "base" alone.')
  return grid


def _check_subgrid(grid: Any, base: dict, where: str) -> None:
  """Rejects a malformed dict of value lists."""
  if not isinstance(grid, dict):
    raise ValueError(f'{where} is a dict from flag name to a list of '
                     f'values, got {type(grid).__name__}.')
  for name, values in grid.items():
    _check_name(name, where)
    if name in base:
      raise ValueError(f'"{name}" is set in both base and {where}; keep it '
                       f'in one of them.')
    if not isinstance(values, (list, tuple)):
      raise ValueError(f'{where}["{name}"] is {values!r}, not a list; write '
                       f'[{values!r}] for one value or move it to base.')
    if not values:
      raise ValueError(f'{where}["{name}"] is an empty list, which makes '
                       f'the product empty; give it values or drop it.')
    for value in values:
      _check_value(name, value, where)


def _check_name(name: Any, where: str) -> None:
  """Rejects a key that cannot be a train flag the sweep may set."""
  if not isinstance(name, str) or not name.isidentifier():
    raise ValueError(f'{where} key {name!r} is not a flag name; write train '
                     f'flags as identifiers without dashes, e.g. '
                     f'"client_lr".')
  if name in RESERVED_FLAGS:
    raise ValueError(f'{where} sets "{name}", which the sweep owns (it '
                     f'chooses each run\'s workdir and num_seeds, and '
                     f'keeps one directory per configuration); drop it: give '
                     f'the sweep\'s workdir, and list values in the grid.')


def _check_value(name: str, value: Any, where: str) -> None:
  """Rejects a value that has no --name=value form."""
  if name == SEED:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise ValueError(f'{where} seed {value!r} is not a non-negative '
                       f'integer.')
    return
  items = value if isinstance(value, (list, tuple)) else [value]
  if not all(isinstance(item, _SCALARS) for item in items):
    raise ValueError(f'{where}["{name}"] value {value!r} is not a bool, '
                     f'number, string or list of them; leave the flag out '
                     f'to get train\'s default.')
  if name == 'algorithm' and len(format_flag_value(value).split(',')) > 1:
    raise ValueError(f'{where} algorithm {value!r} names several '
                     f'algorithms, which train would put in sub-directories '
                     f'the sweep does not track; list them as separate grid '
                     f'values: "algorithm": ["fedavg", "fedprox"].')


def format_flag_value(value: Any) -> str:
  """The VALUE of --name=VALUE: true/false, repr of floats, lists joined.

  Args:
    value: A bool, number, string, or list or tuple of them.

  Returns:
    The string train's absl flags parse back to `value`.
  """
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, (list, tuple)):
    return ','.join(format_flag_value(item) for item in value)
  return str(value)


def flag_args(config: dict[str, Any]) -> list[str]:
  """--name=value arguments for `config`, in its key order."""
  return [f'--{name}={format_flag_value(value)}'
          for name, value in config.items()]


def config_hash(config: dict[str, Any]) -> str:
  """The key of a configuration: 12 hex digits of the sha256 of its
  canonical JSON (sorted keys), the seed left out.

  Args:
    config: Train flags, with or without "seed".

  Returns:
    12 lowercase hex characters.
  """
  without_seed = {k: v for k, v in config.items() if k != SEED}
  canonical = json.dumps(without_seed, sort_keys=True,
                         separators=(',', ':'))
  return hashlib.sha256(canonical.encode()).hexdigest()[:_HASH_CHARS]


def expand_configs(spec: dict) -> list[dict[str, Any]]:
  """Every configuration of a valid spec, seed included, in grid order.

  The product of each sub-grid runs over its keys in the order given, the
  last key fastest; sub-grids follow one another.

  Args:
    spec: A grid spec that `validate_grid` accepts.

  Returns:
    One dict of flags per point: base updated by the point.
  """
  base = spec.get('base', {})
  configs = []
  for grid in _subgrids(spec):
    names = list(grid)
    for point in itertools.product(*(grid[name] for name in names)):
      configs.append({**base, **dict(zip(names, point))})
  return configs


def expand_grid(spec: Any) -> list[Unit]:
  """Validates a spec and groups its configurations into units.

  Args:
    spec: A grid spec (see the module docstring).

  Returns:
    One unit per distinct configuration without seed, in the order of
    first appearance. A spec without a seed axis gives each unit base's
    seed, or 0.

  Raises:
    ValueError: The spec is malformed (see `validate_grid`).
  """
  validate_grid(spec)
  flags_of, seeds_of = {}, {}
  for config in expand_configs(spec):
    flags = {k: v for k, v in config.items() if k != SEED}
    key = config_hash(flags)
    flags_of.setdefault(key, flags)
    seeds_of.setdefault(key, set()).add(config.get(SEED, 0))
  varying = _varying_names(spec, list(flags_of.values()))
  return [Unit(key=key, flags=flags, label=_label(flags, varying),
               seeds=tuple(sorted(seeds_of[key])))
          for key, flags in flags_of.items()]


def _varying_names(spec: dict, configs: list[dict]) -> list[str]:
  """The grid keys (but the seed) whose value, or absence, differs between
  configurations, in the order the grid first names them."""
  names = []
  for grid in _subgrids(spec):
    names.extend(n for n in grid if n != SEED and n not in names)
  return [n for n in names
          if len({(n in c, json.dumps(c.get(n))) for c in configs}) > 1]


def _label(flags: dict[str, Any], varying: Sequence[str]) -> str:
  """name=value for the varying flags that `flags` sets; 'base' if none."""
  parts = [f'{n}={format_flag_value(flags[n])}' for n in varying
           if n in flags]
  return ','.join(parts) or 'base'


def task_units(units: Sequence[Unit], task_index: int,
               num_tasks: int) -> list[Unit]:
  """The units of task `task_index`: unit i belongs to task i % num_tasks.

  Shard the full, unfiltered list, so every host agrees whatever has
  finished.

  Args:
    units: Every unit of the grid, in `expand_grid` order.
    task_index: This task, in [0, num_tasks).
    num_tasks: How many tasks share the grid.

  Returns:
    The task's units, in order.

  Raises:
    ValueError: num_tasks < 1 or task_index out of range.
  """
  if num_tasks < 1:
    raise SettingError('num_tasks', 'num_tasks must be at least 1, got '
                       f'{num_tasks}.')
  if not 0 <= task_index < num_tasks:
    raise SettingError('task_index', f'task_index must be in [0, {num_tasks}) '
                       f'for num_tasks={num_tasks}, got {task_index}.')
  return [u for i, u in enumerate(units) if i % num_tasks == task_index]


def run_dir(workdir: str, unit: Unit) -> str:
  """`WORKDIR/runs/KEY`: where a unit's seeds and config.json live."""
  return os.path.join(workdir, 'runs', unit.key)


def seed_dir(workdir: str, unit: Unit, seed: int) -> str:
  """`WORKDIR/runs/KEY/seed_S`: one seed's metrics and summary."""
  return os.path.join(run_dir(workdir, unit), f'seed_{seed}')


def completed_seeds(workdir: str, unit: Unit) -> list[int]:
  """The unit's seeds whose summary.json exists."""
  return [s for s in unit.seeds
          if os.path.exists(os.path.join(seed_dir(workdir, unit, s),
                                         'summary.json'))]


def consecutive_runs(seeds: Iterable[int]) -> list[tuple[int, ...]]:
  """Splits seeds into maximal runs of consecutive integers.

  Args:
    seeds: Integers, in any order; repeats are dropped.

  Returns:
    Ascending tuples, e.g. [0, 1, 3, 4, 5, 7] -> [(0, 1), (3, 4, 5), (7,)].
  """
  runs = []
  for seed in sorted(set(seeds)):
    if runs and seed == runs[-1][-1] + 1:
      runs[-1].append(seed)
    else:
      runs.append([seed])
  return [tuple(run) for run in runs]


def plan_launches(workdir: str, unit: Unit,
                  done: Iterable[int] = ()) -> list[Launch]:
  """The train processes that finish a unit: one per consecutive run of the
  seeds not in `done`.

  Args:
    workdir: The sweep's directory.
    unit: The unit.
    done: Seeds already finished.

  Returns:
    The launches, by ascending seed; empty when every seed is done.
  """
  done = set(done)
  pending = [s for s in unit.seeds if s not in done]
  return [Launch(unit, run, run_dir(workdir, unit) if len(run) > 1
                 else seed_dir(workdir, unit, run[0]))
          for run in consecutive_runs(pending)]


def train_args(launch: Launch) -> list[str]:
  """The train flags of a launch: the unit's flags, --workdir, --seed and,
  for several seeds, --num_seeds."""
  args = flag_args(launch.unit.flags)
  args += [f'--workdir={launch.workdir}', f'--seed={launch.seeds[0]}']
  if len(launch.seeds) > 1:
    args.append(f'--num_seeds={len(launch.seeds)}')
  return args


def unit_record(unit: Unit) -> dict[str, Any]:
  """The run directory's config.json: the flags without seed and label."""
  return {'flags': unit.flags, 'label': unit.label}


def sweep_record(units: Sequence[Unit]) -> dict[str, Any]:
  """The sweep's sweep.json: every unit's hash, label, seeds and flags."""
  return {'units': [{'hash': u.key, 'label': u.label,
                     'seeds': list(u.seeds), 'flags': u.flags}
                    for u in units]}
