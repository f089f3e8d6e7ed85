"""scripts/flags_backdoor.py: the backdoor and norm-bound flags through
`config_from_flags` to the SimulationConfig, in process."""

from absl import flags
from absl.testing import flagsaver
import pytest

from fedjax_core import errors
from fedjax_core.channel import backdoor as backdoor_lib
from scripts import config_from_flags
from scripts import flags as script_flags


def _config(argv: list[str]):
  flags.FLAGS.unparse_flags()
  flags.FLAGS(['train', *argv])
  return config_from_flags.simulation_config(0, None, False)


def test_flags_build_the_backdoor_and_the_norm_bound():
  with flagsaver.flagsaver():
    config = _config([
        '--backdoor=blend', '--backdoor_targets=7,1',
        '--backdoor_attackers=4', '--backdoor_poison_fraction=0.25',
        '--backdoor_boost=5', '--backdoor_dba_parts=2',
        '--backdoor_blend_alpha=0.1', '--backdoor_seed=3',
        '--norm_bound=0.5'])
    script_flags.check_switches()
  assert config.backdoor == backdoor_lib.Backdoor(
      'blend', targets=(7, 1), num_attackers=4, poison_fraction=0.25,
      boost=5.0, dba_parts=2, blend_alpha=0.1, seed=3)
  assert config.norm_bound == 0.5


def test_defaults_are_off():
  with flagsaver.flagsaver():
    config = _config([])
  assert config.backdoor is None and config.norm_bound is None


def test_runs_of_several_seeds_share_their_attackers():
  """The runs of --num_seeds differ only in their seed (VmappedRuns
  compiles one program for them all)."""
  with flagsaver.flagsaver():
    _config(['--backdoor=pattern'])
    first = config_from_flags.simulation_config(1, None, False)
    second = config_from_flags.simulation_config(2, None, False)
  assert first.backdoor == second.backdoor


def test_backdoor_flags_without_a_backdoor_are_refused():
  with flagsaver.flagsaver():
    _config(['--backdoor_boost=5'])
    with pytest.raises(ValueError, match='--backdoor_boost has no effect '
                       'without --backdoor'):
      script_flags.check_switches()
    _config(['--backdoor=pattern', '--backdoor_blend_alpha=0.5'])
    with pytest.raises(ValueError, match='without --backdoor=blend'):
      script_flags.check_switches()


def test_bad_targets_name_the_flag():
  with flagsaver.flagsaver():
    with pytest.raises(ValueError, match='--backdoor_targets must be'):
      _config(['--backdoor=pattern', '--backdoor_targets=seven'])


@pytest.mark.parametrize('setting, flag', [
    ('backdoor.trigger', 'backdoor'),
    ('backdoor.targets', 'backdoor_targets'),
    ('backdoor.num_attackers', 'backdoor_attackers'),
    ('backdoor.poison_fraction', 'backdoor_poison_fraction'),
    ('backdoor.boost', 'backdoor_boost'),
    ('backdoor.dba_parts', 'backdoor_dba_parts'),
    ('backdoor.blend_alpha', 'backdoor_blend_alpha'),
    ('backdoor.seed', 'backdoor_seed'),
    ('norm_bound', 'norm_bound'),
])
def test_engine_errors_name_the_flag(setting, flag):
  assert script_flags.flag_for(setting) == flag
  error = errors.SettingError(setting, 'bad')
  assert script_flags.describe(error) == f'--{flag}: bad'


def test_engine_error_reaches_the_command_line_with_the_flag():
  with flagsaver.flagsaver():
    with pytest.raises(errors.SettingError) as info:
      _config(['--backdoor=pattern', '--backdoor_poison_fraction=1.5'])
  assert script_flags.describe(info.value).startswith(
      '--backdoor_poison_fraction: The poisoned share')


def test_flags_are_recorded_with_the_training_flags():
  names = {f.name for f in flags.FLAGS.get_flags_for_module(script_flags)}
  assert {'backdoor', 'backdoor_targets', 'norm_bound'} <= names
