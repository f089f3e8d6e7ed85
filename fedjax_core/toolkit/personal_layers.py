"""Which layers of a model are personal, chosen by a path regex, and the
split of a parameter tree into its shared and personal parts.

The personalized algorithms that share part of a model (FedPer, Arivazhagan
et al. 2019; FedRep, Collins et al. 2021; FedBABU, Oh et al. 2022;
LG-FedAvg, Liang et al. 2020) name a set of layers by a regular expression
searched in each leaf's '/'-joined path (`params/Dense_2/kernel`), as LoRA
names its targets (`fedjax_core.toolkit.lora`). The parts are nested dicts
holding only their own leaves, so a message of the shared part has the
shared part's size, and `merge(split(params))` is `params`.

Examples:
  >>> layers = PersonalLayers('^params/Dense_2/')
  >>> body, head = layers.split(params)
  >>> params = layers.merge(body, head)
"""

import dataclasses
import re
from typing import Any

from flax import traverse_util

from fedjax_core.errors import SettingError

PyTree = Any


def _flat(params: PyTree) -> dict[tuple[str, ...], Any]:
  if not isinstance(params, dict):
    raise TypeError('personal layers split nested dicts of parameters '
                    f'(flax params), got {type(params).__name__}.')
  return traverse_util.flatten_dict(params)


def leaf_names(params: PyTree) -> list[str]:
  """The '/'-joined path of every leaf of `params`, in tree order."""
  return ['/'.join(path) for path in _flat(params)]


@dataclasses.dataclass(frozen=True)
class PersonalLayers:
  """The leaves whose '/'-joined path `pattern` matches (`re.search`).

  Attributes:
    pattern: a regular expression, e.g. `'^params/Dense_2/'` (a model's
      head, `models.head_layers`) or `'^(?!params/Dense_2/)'` (all but it).
  """

  pattern: str

  def __post_init__(self):
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise SettingError('personal_layers', f'personal layers '
                         f'{self.pattern!r} is not a regular expression: '
                         f'{e}.') from None

  def matches(self, name: str) -> bool:
    return re.search(self.pattern, name) is not None

  def split(self, params: PyTree) -> tuple[PyTree, PyTree]:
    """`(unmatched, matched)` parts of `params`, each a nested dict of its
    own leaves.

    Raises:
      SettingError: the pattern matches no leaf, or every leaf.
    """
    flat = _flat(params)
    matched = {p: v for p, v in flat.items() if self.matches('/'.join(p))}
    if not matched or len(matched) == len(flat):
      which = 'no' if not matched else 'every'
      raise SettingError(
          'personal_layers', f'personal layers {self.pattern!r} matches '
          f'{which} parameter; it must name some layers and leave others. '
          f'The parameters are: {", ".join(leaf_names(params))}.')
    unmatched = {p: v for p, v in flat.items() if p not in matched}
    return (traverse_util.unflatten_dict(unmatched),
            traverse_util.unflatten_dict(matched))

  def merge(self, unmatched: PyTree, matched: PyTree) -> PyTree:
    """The whole parameter tree from its two parts (`split`'s inverse)."""
    return traverse_util.unflatten_dict({**_flat(unmatched),
                                         **_flat(matched)})

  def complement(self) -> 'PersonalLayers':
    """The leaves this one does not match."""
    return PersonalLayers(f'^(?!.*(?:{self.pattern}))')
