"""Low-rank adaptation (LoRA) of a model's kernels, as pure functions.

Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models": a
frozen kernel is adapted by a product of two small factors, `W0 + (alpha /
r) B A` with `A` of shape `[r, in]` and `B` of shape `[out, r]`. Flax stores
a Dense kernel as `[in, out]`, so the adapted kernel is
`W + (alpha / r) (B A)^T`. `A` starts Kaiming-uniform (bound `1 / sqrt(in)`,
as peft and loralib initialize it) and `B` at zero, so the adapted model
starts as the base.

Adapters are a dict `{'a': tree, 'b': tree}`, each tree nested like the
params but holding only the targeted kernels' factors. The targets are the
kernels whose path (keys joined by '/', e.g.
`params/block_0/attention/query/kernel`) matches a regular expression; they
must be 2-D.

Examples:
  >>> config = LoRAConfig(rank=4, alpha=8.0, targets='attention/(query|value)')
  >>> adapters = init(jax.random.key(0), params, config)
  >>> logits = apply_fn(merge(params, adapters, config), x)
"""

import dataclasses
import math
import re
from typing import Any

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_core.errors import SettingError

PyTree = Any
Path = tuple[str, ...]
Adapters = dict[str, PyTree]
# LoRA's paper adapts the attention's query and value projections.
DEFAULT_TARGETS = r'attention/(query|value)/kernel$'


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """Which kernels are adapted, at which rank and scale.

  Attributes:
    rank: r, the inner dimension of the factors.
    alpha: the update is scaled by `alpha / rank`.
    targets: regular expression searched in each kernel's '/'-joined path.
  """

  rank: int = 8
  alpha: float = 16.0
  targets: str = DEFAULT_TARGETS

  def __post_init__(self):
    if isinstance(self.rank, bool) or not isinstance(self.rank, int) or (
        self.rank < 1):
      raise SettingError('lora.rank', f'LoRA rank must be a positive int, '
                         f'got {self.rank!r}.')
    if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
      raise SettingError('lora.alpha', f'LoRA alpha must be positive, got '
                         f'{self.alpha!r}.')
    try:
      re.compile(self.targets)
    except re.error as e:
      raise SettingError('lora.targets', f'LoRA targets {self.targets!r} is '
                         f'not a regular expression: {e}.') from None

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


def _flat(tree: PyTree) -> dict[Path, Any]:
  return traverse_util.flatten_dict(tree)


def _name(path: Path) -> str:
  return '/'.join(path)


def target_paths(params: PyTree, targets: str) -> list[Path]:
  """The paths of the kernels (leaves named 'kernel') whose '/'-joined path
  `targets` matches (`re.search`), in sorted order.

  Raises:
    ValueError: no kernel matches, or a match is not a 2-D kernel.
  """
  flat = _flat(params)
  kernels = sorted(p for p in flat if p[-1] == 'kernel')
  chosen = [p for p in kernels if re.search(targets, _name(p))]
  if not chosen:
    raise SettingError(
        'lora.targets', f'LoRA targets {targets!r} matches no kernel. The '
        f'kernels are: {", ".join(map(_name, kernels)) or "none"}.')
  for path in chosen:
    if np.ndim(flat[path]) != 2:
      raise SettingError(
          'lora.targets',
          f'LoRA targets {targets!r} matches {_name(path)} of shape '
          f'{np.shape(flat[path])}; LoRA adapts 2-D [in, out] kernels. '
          'Narrow the expression.')
  return chosen


def init(key: jax.Array, params: PyTree, config: LoRAConfig) -> Adapters:
  """Adapters of every target: A Kaiming-uniform, B zero.

  The factors of the i-th target (in sorted path order) draw from
  `fold_in(key, i)`, so the same key gives every party the same A, which
  FFA-LoRA relies on.
  """
  flat = _flat(params)
  a, b = {}, {}
  for i, path in enumerate(target_paths(params, config.targets)):
    fan_in, fan_out = flat[path].shape
    bound = 1.0 / math.sqrt(fan_in)
    a[path] = jax.random.uniform(jax.random.fold_in(key, i),
                                 (config.rank, fan_in), jnp.float32, -bound,
                                 bound)
    b[path] = jnp.zeros((fan_out, config.rank), jnp.float32)
  return {'a': traverse_util.unflatten_dict(a),
          'b': traverse_util.unflatten_dict(b)}


def kernel_deltas(adapters: Adapters, config: LoRAConfig
                  ) -> dict[Path, jax.Array]:
  """`(alpha / r) (B A)^T` of every target, by path, in `[in, out]`."""
  a, b = _flat(adapters['a']), _flat(adapters['b'])
  return {path: config.scale * (b[path] @ a[path]).T for path in a}


def merge(params: PyTree, adapters: Adapters, config: LoRAConfig) -> PyTree:
  """`params` with every target kernel W replaced by `W + (alpha/r)(BA)^T`.
  """
  return _shifted(params, kernel_deltas(adapters, config))


def _shifted(params: PyTree, deltas: dict[Path, jax.Array]) -> PyTree:
  flat = dict(_flat(params))
  for path, delta in deltas.items():
    flat[path] = flat[path] + delta.astype(flat[path].dtype)
  return traverse_util.unflatten_dict(flat)
