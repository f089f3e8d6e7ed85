"""The backdoor and norm-bound flags of the training command line.

Defined through `scripts.flags`' `_define`, so they belong to that module
as absl sees it (recorded in a workdir's flags.json, refused by programs
that do not read them, idle without `--backdoor`), and turned into the
`SimulationConfig` fields `backdoor` and `norm_bound` by `settings`, which
`scripts.config_from_flags` calls.

Examples:
  >>> flags_backdoor.settings()  # After parsing.
  {'backdoor': Backdoor(trigger='pattern', targets=(7,), ...),
   'norm_bound': None}
"""

from absl import flags

from fedjax_core.channel import backdoor as backdoor_lib
from scripts.flags import Switch, _define

_BACKDOOR = Switch('--backdoor', lambda: BACKDOOR.value != 'none')
_BLENDING = Switch('--backdoor=blend', lambda: BACKDOOR.value == 'blend')

BACKDOOR = _define(
    flags.DEFINE_enum,
    'backdoor', 'none', ('none',) + backdoor_lib.TRIGGERS,
    'Backdoor attack of --backdoor_attackers fixed clients: pattern (a '
    'pixel square in a corner, BadNets) or blend (a seeded random pattern '
    'alpha-blended, Chen et al. 2017); its attack success rate is reported '
    'as backdoor_asr every evaluation.',
    sets=('backdoor', 'backdoor.trigger'))
BACKDOOR_TARGETS = _define(
    flags.DEFINE_list,
    'backdoor_targets', ['7'], 'The target labels, comma-separated; '
    'attacker j poisons towards the (j mod count)-th, each target with a '
    'trigger of its own (independent attackers, as in Mirage).',
    needs=_BACKDOOR)
BACKDOOR_ATTACKERS = _define(
    flags.DEFINE_integer,
    'backdoor_attackers', 1, 'How many clients of the population are '
    'attackers (a fixed set drawn from --backdoor_seed).',
    needs=_BACKDOOR, sets=('backdoor.num_attackers',))
BACKDOOR_SEED = _define(
    flags.DEFINE_integer,
    'backdoor_seed', 0, 'Seeds which clients are attackers and the blend '
    'patterns; apart from --seed, so that the runs of --num_seeds (one '
    'compiled program) share their attackers.',
    needs=_BACKDOOR)
BACKDOOR_POISON_FRACTION = _define(
    flags.DEFINE_float,
    'backdoor_poison_fraction', 0.5, 'Share of each of an attacker\'s '
    'local batches stamped with the trigger and relabelled.',
    needs=_BACKDOOR)
BACKDOOR_BOOST = _define(
    flags.DEFINE_float,
    'backdoor_boost', 1.0, 'Factor scaling the attackers\' updates (model '
    'replacement, Bagdasaryan et al. 2020; e.g. clients_per_round / '
    'server_lr).',
    needs=_BACKDOOR)
BACKDOOR_DBA_PARTS = _define(
    flags.DEFINE_integer,
    'backdoor_dba_parts', 1, 'Split each trigger into this many local '
    'triggers, one per attacker (DBA, Xie et al. 2020); evaluation stamps '
    'the whole trigger.',
    needs=_BACKDOOR)
BACKDOOR_BLEND_ALPHA = _define(
    flags.DEFINE_float,
    'backdoor_blend_alpha', 0.2, 'blend: the alpha of (1 - alpha) x + '
    'alpha pattern.',
    needs=_BLENDING)
NORM_BOUND = _define(
    flags.DEFINE_float, 'norm_bound', None, 'Clip every client\'s update to this L2 norm before '
    'aggregation (the norm-bounding defence, Sun et al. 2019); default: no '
    'bound.')


def targets() -> tuple[int, ...]:
  """--backdoor_targets as ints; raises ValueError naming the flag."""
  try:
    return tuple(int(t) for t in BACKDOOR_TARGETS.value)
  except ValueError:
    raise ValueError('--backdoor_targets must be comma-separated class '
                     f'labels (e.g. 7,1), got {BACKDOOR_TARGETS.value}.'
                     ) from None


def settings() -> dict:
  """The SimulationConfig fields `backdoor` and `norm_bound` the flags ask
  for."""
  backdoor = None
  if BACKDOOR.value != 'none':
    backdoor = backdoor_lib.Backdoor(
        BACKDOOR.value, targets=targets(),
        num_attackers=BACKDOOR_ATTACKERS.value,
        poison_fraction=BACKDOOR_POISON_FRACTION.value,
        boost=BACKDOOR_BOOST.value, dba_parts=BACKDOOR_DBA_PARTS.value,
        blend_alpha=BACKDOOR_BLEND_ALPHA.value, seed=BACKDOOR_SEED.value)
  return {'backdoor': backdoor, 'norm_bound': NORM_BOUND.value}
