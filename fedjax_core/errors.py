"""Errors the engine raises for bad settings.

The engine names concepts (a config field, an argument) and their valid
range, never a command-line flag: the command line knows which flag sets
which setting and adds its name (`scripts.flags`).
"""

import numbers


class SettingError(ValueError):
  """A setting out of its valid range, or settings that do not combine.

  Attributes:
    setting: the engine's name of the (first) offending setting, e.g.
      'clients_per_round' or 'secure_aggregation.bits'; a command line maps
      it to its flag.

  Examples:
    >>> raise SettingError('batch_size', 'batch size must be positive, got 0')
  """

  def __init__(self, setting: str, message: str):
    super().__init__(message)
    self.setting = setting

  def __reduce__(self):  # Picklable across processes despite two arguments.
    return type(self), (self.setting, str(self))


def check_count(setting: str, value: int, least: int = 0) -> None:
  """Raises SettingError unless `value` is an int (not a bool) >= `least`.

  Examples:
    >>> check_count('finetune_steps', 1.5)  # SettingError.
  """
  if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
      or value < least):
    raise SettingError(setting, f'{setting} must be an int >= {least}, got '
                       f'{value!r}.')
