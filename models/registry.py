"""Model registry: a flax module as a pair of pure `init`/`apply` functions.

Models follow McMahan et al. 2017, "Communication-Efficient Learning of Deep
Networks from Decentralized Data" (the 2NN MLP and the CNNs), plus the
multinomial logistic regression of convex federated benchmarks, a GPT-style
character transformer (Radford et al. 2019), a Vision Transformer
(Dosovitskiy et al. 2021) and the GroupNorm ResNet-18 (He et al. 2016; Wu & He
2018) of the FL-Simulator of Sun et al. 2023, "FedSpeed".
"""

from collections.abc import Callable
import functools
import re
from typing import Any, NamedTuple

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp

from models.cnn import build_cnn
from models.logreg import LogisticRegression
from models.mlp import MLP
from models.resnet import build_resnet18_gn
from models.transformer import build_transformer
from models.vit import build_vit

PyTree = Any


class Model(NamedTuple):
  """A flax model as two pure functions.

  Attributes:
    init: rng key -> params, the full flax variables dict (`{'params': ...}`).
    apply: `(params, x)` with float32 `x` of shape `[batch, *example_shape]`
      -> `[batch, num_classes]` logits.
  """

  init: Callable[[jax.Array], PyTree]
  apply: Callable[[PyTree, jax.Array], jax.Array]


def _build_logreg(example_shape: tuple[int, ...],
                  num_classes: int) -> nn.Module:
  """Builds `LogisticRegression`; it works for any example shape."""
  del example_shape
  return LogisticRegression(num_classes)


def _build_mlp(example_shape: tuple[int, ...], num_classes: int) -> nn.Module:
  """Builds the 2NN `MLP`; it works for any example shape."""
  del example_shape
  return MLP(num_classes)


_BUILDERS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    'cnn': build_cnn,
    'logreg': _build_logreg,
    'mlp': _build_mlp,
    'resnet18_gn': build_resnet18_gn,
    'transformer': build_transformer,
    'vit': build_vit,
}

MODEL_NAMES: tuple[str, ...] = tuple(sorted(_BUILDERS))


def get_model(name: str, example_shape: tuple[int, ...],
              num_classes: int) -> Model:
  """Builds a registered model for the given input shape and class count.

  Args:
    name: one of `MODEL_NAMES`.
    example_shape: shape of one example, without the batch axis.
    num_classes: number of output logits.

  Returns:
    The model's pure `init` and `apply` functions.

  Raises:
    ValueError: if `name` is not registered, or the model does not accept
      `example_shape`.
  """
  if name not in _BUILDERS:
    raise ValueError(
        f'Unknown model {name!r}; valid models: {", ".join(MODEL_NAMES)}.')
  return _built_model(name, tuple(example_shape), num_classes)


@functools.lru_cache(maxsize=None)
def _built_model(name: str, example_shape: tuple[int, ...],
                 num_classes: int) -> Model:
  """`get_model`'s result, built once per process for each argument set:
  its init is jitted (flax's eager init compiles each of its operations on
  its own, about 6 s for the transformer on 2 CPU cores), and the same
  functions let every jit that takes them as static arguments (e.g. the
  evaluation) compile once."""
  module = _BUILDERS[name](example_shape, num_classes)
  dummy = jnp.zeros((1, *example_shape), jnp.float32)
  return Model(init=jax.jit(lambda rng: module.init(rng, dummy)),
               apply=module.apply)


def head_layers(name: str, example_shape: tuple[int, ...],
                num_classes: int) -> str:
  """A path regex naming the head of a registered model: the layer whose
  2-D kernel maps to the `num_classes` logits (the last Dense), as the
  personalized algorithms split a model into body and head.

  Examples:
    >>> head_layers('mlp', (784,), 10)
    '^params/Dense_2/'

  Raises:
    ValueError: no such layer, or several (name the head explicitly).
  """
  params = jax.eval_shape(get_model(name, example_shape, num_classes).init,
                          jax.random.key(0))
  heads = sorted(path[:-1] for path, leaf
                 in traverse_util.flatten_dict(params).items()
                 if path[-1] == 'kernel' and leaf.ndim == 2
                 and leaf.shape[-1] == num_classes)
  if len(heads) != 1:
    raise ValueError(
        f'Model {name} has {len(heads)} Dense layers with {num_classes} '
        'outputs, so its head is ambiguous; name the personal layers '
        'explicitly by a path regex.')
  return '^' + re.escape('/'.join(heads[0]) + '/')
