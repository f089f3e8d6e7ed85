"""A pre-trained base model on disk: its params (orbax) and what it fits.

`scripts/pretrain.py` saves a base with `save_base`; federated fine-tuning
(`scripts/train.py --init_checkpoint=DIR`) loads it with `load_base`, which
refuses a base trained for another model, input shape or class count with
an error that says so.
"""

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from fedjax_core.errors import SettingError

PyTree = Any
_PARAMS = 'params'
_INFO = 'base.json'
# What a base must share with the run that loads it.
_MUST_MATCH = ('model', 'example_shape', 'num_classes')


def save_base(directory: str, params: PyTree, info: dict[str, Any]) -> None:
  """Writes `params` to DIRECTORY/params and `info` (which names at least
  the model, example_shape and num_classes) to DIRECTORY/base.json."""
  missing = [k for k in _MUST_MATCH if k not in info]
  if missing:
    raise ValueError(f'A base needs {", ".join(missing)} in its info.')
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(os.path.join(directory, _PARAMS), params, force=True)
  with open(os.path.join(directory, _INFO), 'w') as f:
    json.dump(info, f, indent=2)


def read_info(directory: str) -> dict[str, Any]:
  """DIRECTORY/base.json.

  Raises:
    ValueError: DIRECTORY holds no base.
  """
  path = os.path.join(directory, _INFO)
  if not os.path.exists(path):
    raise SettingError(
        'init_checkpoint',
        f'{directory} holds no pre-trained base ({_INFO} is missing); write '
        'one with scripts.pretrain and pass its base/ directory.')
  with open(path) as f:
    return json.load(f)


def load_base(directory: str, template: PyTree,
              expected: dict[str, Any]) -> tuple[PyTree, dict[str, Any]]:
  """The base's params (with `template`'s structure, shapes and dtypes) and
  its info.

  Args:
    directory: a directory `save_base` wrote.
    template: params of the model that will load it (e.g. a fresh init).
    expected: the run's model, example_shape and num_classes.

  Raises:
    ValueError: there is no base, or it was trained for another model,
      input shape or class count.
  """
  info = read_info(directory)
  for key in _MUST_MATCH:
    want = expected[key]
    got = info.get(key)
    if key == 'example_shape':
      want, got = list(want), list(got or ())
    if got != want:
      raise SettingError(
          'init_checkpoint',
          f'{directory} holds a base for {key}={got}, but this run has '
          f'{key}={want}; pre-train a base for this run (scripts.pretrain '
          'with the same model and dataset) or change the model or dataset.')
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(
        os.path.join(os.path.abspath(directory), _PARAMS), target)
  return params, info
