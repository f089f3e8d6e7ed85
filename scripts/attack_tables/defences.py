"""The defences the attack tables compare, and what each leaves an attacker.

A defence is written `NAME` or `NAME:VALUE`:

| spec | what it is | training runs use |
| --- | --- | --- |
| `none` | plain FedAvg | the mean |
| `dp:Z` | client-level DP-FedAvg, noise multiplier Z, clip `--dp_clip_norm` | `client_dp` |
| `clip:M` | norm bounding of every update to M (Sun et al. 2019) | `norm_bound` |
| `secagg` | secure aggregation: the server learns only the cohort's sum | `secure_aggregation` |
| `median` | the coordinate-wise median (Yin et al. 2018) | `robust` |
| `topk:F` | top-k sparsification keeping a fraction F of each layer | `uplink` |
| `steps:E` | FedAvg's own defence: E local steps per round | `local_steps` |
| `batch:B` | FedAvg's own defence: local batches of B examples | `batch_size` |

Training-time attacks (membership inference, backdoors) train under the
defence. Gradient inversion attacks what the curious server observes of the
victim's message (`observed_message`): under secure aggregation the sum of
the cohort's messages; under DP the victim's clipped message with all of a
round's Gaussian noise on it (the attacker's best case: a cohort of one, or
local DP with the same z); under norm bounding and compression the bounded
or compressed message the client sends; under the median (which protects
the model, not the messages) the victim's message as it arrives.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from fedjax_core.channel import aggregation
from fedjax_core.channel import dp
from fedjax_core.channel import privacy
from fedjax_core.channel import uplink
from fedjax_core.errors import SettingError

PyTree = Any
_POSITIVE = (lambda v: v > 0, 'positive')
_COUNT = (lambda v: v >= 1 and v == int(v), 'a positive integer')
# Defence name -> (what its value is, its check, the check in words); None
# for the defences that take no value.
_VALUES = {'none': None, 'dp': ('noise multiplier', *_POSITIVE),
           'clip': ('norm bound', *_POSITIVE), 'secagg': None,
           'median': None,
           'topk': ('kept fraction', lambda v: 0 < v <= 1, 'in (0, 1]'),
           'steps': ('local steps', *_COUNT), 'batch': ('batch size', *_COUNT)}
DEFENCES = tuple(_VALUES)


@dataclasses.dataclass(frozen=True)
class Defence:
  """One column of an attack table.

  Attributes:
    name: one of `DEFENCES`.
    value: its parameter (see the module docstring), or None.
  """

  name: str
  value: float | None = None

  @property
  def label(self) -> str:
    """The spec it was parsed from, e.g. 'dp:1'."""
    return self.name if self.value is None else f'{self.name}:{self.value:g}'


def parse_defence(spec: str) -> Defence:
  """`NAME` or `NAME:VALUE` as a `Defence`.

  Raises:
    SettingError: for an unknown name, a missing or extra value, or a value
      out of its range.

  Examples:
    >>> parse_defence('dp:1').label
    'dp:1'
  """
  name, _, text = spec.strip().partition(':')
  if name not in _VALUES:
    raise SettingError('defences', f'Unknown defence {spec!r}; valid: '
                       f'{", ".join(DEFENCES)} (see scripts.attack_eval).')
  if _VALUES[name] is None:
    if text:
      raise SettingError('defences', f'Defence {name!r} takes no value; '
                         f'write {name}, not {spec!r}.')
    return Defence(name)
  meaning, check, in_words = _VALUES[name]
  try:
    value = float(text)
  except ValueError:
    raise SettingError('defences', f'Defence {name!r} needs its {meaning} '
                       f'as {name}:VALUE, got {spec!r}.') from None
  if not check(value):
    raise SettingError('defences', f'{spec!r}: the {meaning} must be '
                       f'{in_words}.')
  return Defence(name, value)


def simulation_fields(defence: Defence, *, dp_clip_norm: float
                      ) -> dict[str, Any]:
  """The `SimulationConfig` fields a run trained under `defence` sets.

  Examples:
    >>> simulation_fields(parse_defence('steps:5'), dp_clip_norm=1.0)
    {'local_steps': 5}
  """
  name, value = defence.name, defence.value
  if name == 'dp':
    return {'client_dp': privacy.ClientDPSettings(
        clip_norm=dp_clip_norm, noise_multiplier=value)}
  if name == 'clip':
    return {'norm_bound': value}
  if name == 'secagg':
    return {'secure_aggregation': aggregation.SecureAggregation()}
  if name == 'median':
    return {'robust': aggregation.RobustAggregation('median',
                                                    num_byzantine=1)}
  if name == 'topk':
    return {'uplink': uplink.Uplink('topk', fraction=value)}
  if name == 'steps':
    return {'local_steps': int(value)}
  if name == 'batch':
    return {'batch_size': int(value)}
  return {}


def observed_message(defence: Defence, messages: PyTree, key: jax.Array, *,
                     dp_clip_norm: float) -> PyTree:
  """What the curious server observes of the victim's message.

  Args:
    defence: the defence in place.
    messages: the cohort's messages stacked on a leading axis; the victim
      is row 0.
    key: the defence's randomness (DP noise).
    dp_clip_norm: DP's clip norm S.

  Returns:
    A pytree shaped like one message.
  """
  victim = jax.tree.map(lambda m: m[0], messages)
  if defence.name == 'secagg':
    return jax.tree.map(lambda m: jnp.sum(m, axis=0), messages)
  if defence.name == 'dp':
    clipped, _ = dp.clip_update(victim, dp_clip_norm)
    return dp.add_gaussian_noise(clipped, key, defence.value * dp_clip_norm)
  if defence.name == 'clip':
    return dp.clip_update(victim, defence.value)[0]
  if defence.name == 'topk':
    return uplink.Uplink('topk', fraction=defence.value).compress_tree(
        victim, key)[0]
  return victim
