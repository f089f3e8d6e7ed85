"""scripts/flags.py: which flag sets each engine setting, and the command
lines naming that flag in front of an engine `SettingError`."""

import dataclasses
import typing

from absl import app
from absl import flags
from absl.testing import flagsaver
import pytest

from fedjax_core import errors
from fedjax_core.engine import placement
from fedjax_core.engine import simulation
from fedjax_core.experiments import grid
from scripts import config_from_flags
from scripts import flags as script_flags
from scripts import sweep
from scripts import train

# Flags that turn on each optional part of the SimulationConfig, so that a
# flag acting on that part changes the config.
_FEATURES = ([], ['--aggregator=secure'], ['--dp_clip_norm=1'],
             ['--dp_sgd_clip_norm=1'], ['--aggregator=median'],
             ['--attack=sign_flip'], ['--compressor=topk', '--compress_down'],
             ['--rqm_clip=0.1'],
             ['--backdoor=pattern', '--backdoor_attackers=4'])
# Settings of the SimulationConfig that no flag sets (with what they hold):
# the uplink's momentum comes from --monna_momentum through `robust`.
_UNSET = ('eval_batch_size', 'uplink.momentum', 'downlink.momentum')


def _parse(argv: list[str]) -> None:
  flags.FLAGS.unparse_flags()
  flags.FLAGS(['train', *argv])


def _config() -> simulation.SimulationConfig:
  """The config the parsed flags ask for (train's seed, workdir and
  progress bar included)."""
  return config_from_flags.simulation_config(
      script_flags.SEED.value, script_flags.WORKDIR.value,
      script_flags.PROGRESS.value)


def _other_values(flag: flags.Flag) -> list[str]:
  """Values of `flag` other than its parsed one, as a command line writes
  them."""
  value, kind = flag.value, flag.flag_type()
  if kind == 'bool':
    return [str(not value).lower()]
  if kind == 'string enum':
    return [v for v in flag.parser.enum_values if v != value]
  if kind == 'int':
    return ['2' if value is None else str(value - 1 if value > 1 else 2)]
  if kind == 'float':
    return ['0.5' if value is None else repr(value / 2 if value else 0.25)]
  if kind == 'string':
    return ['other']
  if kind == 'comma separated list of strings':  # --backdoor_targets.
    return ['1' if value != ['1'] else '2']
  return []


def _changed(old, new, prefix: str = ''):
  """The settings (dotted paths) where two configs differ."""
  if (dataclasses.is_dataclass(old) and type(old) is type(new)
      and not isinstance(old, type)):
    for field in dataclasses.fields(old):
      yield from _changed(getattr(old, field.name),
                          getattr(new, field.name),
                          f'{prefix}{field.name}.')
  elif old != new:
    yield prefix.rstrip('.')


def _setters() -> dict[str, set[str]]:
  """Each setting of the SimulationConfig that a flag changes, with the
  flags that change it, found by changing each flag alone with each
  feature on."""
  setters = {}
  with flagsaver.flagsaver():
    for feature in _FEATURES:
      _parse(feature)
      base = _config()
      for flag in flags.FLAGS.get_flags_for_module(script_flags):
        for value in _other_values(flag):
          try:
            _parse([*feature, f'--{flag.name}={value}'])
            config = _config()
          except ValueError:  # A value this feature refuses.
            continue
          for setting in _changed(base, config):
            setters.setdefault(setting, set()).add(flag.name)
  return setters


def _fields(cls, prefix: str = '') -> set[str]:
  """The dotted paths of the settings of dataclass `cls` and of the
  dataclasses it holds."""
  paths = set()
  for name, hint in typing.get_type_hints(cls).items():
    paths.add(prefix + name)
    for held in getattr(hint, '__args__', (hint,)):
      if dataclasses.is_dataclass(held):
        paths |= _fields(held, f'{prefix}{name}.')
  return paths


def test_every_setting_a_flag_sets_is_named_by_that_flag():
  """`flag_for` names, for each setting of the SimulationConfig and of the
  settings it holds, a flag that changes it; only `_UNSET` has none."""
  setters = _setters()
  for setting, names in sorted(setters.items()):
    assert script_flags.flag_for(setting) in names, (setting, names)
  settings = _fields(simulation.SimulationConfig)
  unset = {s for s in settings
           if any(s == u or s.startswith(u + '.') for u in _UNSET)}
  assert set(setters) == settings - unset


@pytest.mark.parametrize('setting, flag', [
    ('clients_per_round', 'clients_per_round'),
    ('secure_aggregation.bits', 'secagg_bits'),
    ('robust.num_byzantine', 'robust_f'),
    ('robust.clip_radius', 'cc_radius'),
    ('robust.nnm', 'nnm'),
    ('uplink.fraction', 'compress_fraction'),
    ('downlink.levels', 'qsgd_levels'),
    ('attack.fraction', 'byzantine_fraction'),
    ('client_dp.per_layer', 'dp_per_layer_clip'),
    ('sample_dp.noise_multiplier', 'dp_sgd_noise_multiplier'),
    ('dp_sgd.clip_norm', 'dp_sgd_clip_norm'),
    ('lora.rank', 'lora_rank'),
    ('no_such.setting', None),
])
def test_flag_for(setting, flag):
  assert script_flags.flag_for(setting) == flag


def test_a_setting_error_of_the_engine_names_the_flag_in_train(
    tmp_path, monkeypatch):
  def refuse(config, num_clients=None):
    del config, num_clients
    raise errors.SettingError(
        'robust.num_byzantine', 'the Byzantine clients tolerated must be in '
        '[0, 2], got 4')

  monkeypatch.setattr(simulation.SimulationConfig, 'validate', refuse)
  monkeypatch.setattr(placement, 'use_cpu_device_per_core', lambda n: None)
  workdir = tmp_path / 'run'
  with flagsaver.flagsaver():
    _parse(['--aggregator=median', '--robust_f=4', f'--workdir={workdir}'])
    with pytest.raises(SystemExit) as exit_info:
      train.main(['train'])
  assert str(exit_info.value.code) == (
      'error: --robust_f: the Byzantine clients tolerated must be in [0, 2], '
      'got 4')
  assert not workdir.exists()


def test_a_setting_error_of_the_grid_names_the_flag_in_sweep(
    tmp_path, monkeypatch):
  def refuse(units, task_index, num_tasks):
    del units, num_tasks
    raise errors.SettingError(
        'task_index', f'task {task_index} is not in [0, 2)')

  monkeypatch.setattr(grid, 'task_units', refuse)
  grid_path = tmp_path / 'grid.json'
  grid_path.write_text('{"grid": {"seed": [0]}}')
  with flagsaver.flagsaver():
    flags.FLAGS(['sweep', f'--grid={grid_path}', f'--workdir={tmp_path}',
                 '--task_index=2', '--num_tasks=2'])
    with pytest.raises(SystemExit) as exit_info:
      sweep.main(['sweep'])
  assert str(exit_info.value.code) == (
      'error: --task_index: task 2 is not in [0, 2)')


def test_a_setting_without_a_flag_keeps_its_bare_message():
  error = errors.SettingError('eval_batch_size', 'must be positive, got 0')
  assert script_flags.describe(error) == 'must be positive, got 0'


def test_sweep_refuses_a_flag_of_train(tmp_path):
  with flagsaver.flagsaver():
    flags.FLAGS(['sweep', f'--grid={tmp_path / "grid.json"}',
                 f'--workdir={tmp_path}', '--num_rounds=3'])
    with pytest.raises(app.UsageError, match='takes no --num_rounds'):
      sweep.main(['sweep'])


def test_a_flag_of_an_idle_feature_is_refused_naming_its_switch():
  with flagsaver.flagsaver():
    _parse(['--secagg_bits=16'])
    with pytest.raises(ValueError, match='--secagg_bits has no effect '
                       'without --aggregator=secure'):
      script_flags.check_switches()
    _parse(['--aggregator=secure', '--secagg_bits=16'])
    script_flags.check_switches()
