"""Model registry: a flax module as a pair of pure `init`/`apply` functions.

Models follow McMahan et al. 2017, "Communication-Efficient Learning of Deep
Networks from Decentralized Data" (the 2NN MLP and the CNNs), plus the
multinomial logistic regression of convex federated benchmarks, a GPT-style
character transformer (Radford et al. 2019), a Vision Transformer
(Dosovitskiy et al. 2021), the GroupNorm ResNet-18 (He et al. 2016; Wu & He
2018) of the FL-Simulator of Sun et al. 2023, "FedSpeed", and the text models
of the federated benchmarks: the stacked LSTMs of LEAF (Caldas et al. 2018)
and of Reddi et al. 2021, "Adaptive Federated Optimization", and their
StackOverflow tag-prediction logistic regression on a bag of words.

Token models take `input_vocab`, the number of input token ids, and
language models can return logits at every position (`per_position`).
"""

from collections.abc import Callable
import functools
import re
from typing import Any, NamedTuple

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp

from models import lstm
from models.bow import build_bow_logreg
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
      -> `[batch, num_classes]` logits, or `[batch, length, num_classes]`
      for a model built `per_position`.
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


def _without_tokens(build: Callable[[tuple[int, ...], int], nn.Module]
                    ) -> Callable[..., nn.Module]:
  """Adapts the builder of a model that embeds no tokens and reads no
  positions: `input_vocab` is ignored (the model takes ids as numbers)."""
  def build_ignoring_tokens(example_shape, num_classes, input_vocab,
                            per_position):
    del input_vocab, per_position
    return build(example_shape, num_classes)
  return build_ignoring_tokens


# Builders called as `(example_shape, num_classes, input_vocab,
# per_position)`.
_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    'bow_logreg': build_bow_logreg,
    'cnn': _without_tokens(build_cnn),
    'logreg': _without_tokens(_build_logreg),
    'mlp': _without_tokens(_build_mlp),
    'resnet18_gn': _without_tokens(build_resnet18_gn),
    'transformer': build_transformer,
    'vit': _without_tokens(build_vit),
    **lstm.BUILDERS,
}

MODEL_NAMES: tuple[str, ...] = tuple(sorted(_BUILDERS))

# The models that can return logits at every input position.
PER_POSITION_MODELS: tuple[str, ...] = (*sorted(lstm.BUILDERS),
                                        'transformer')


def get_model(name: str, example_shape: tuple[int, ...], num_classes: int,
              *, input_vocab: int | None = None,
              per_position: bool = False) -> Model:
  """Builds a registered model for the given input shape and class count.

  Args:
    name: one of `MODEL_NAMES`.
    example_shape: shape of one example, without the batch axis.
    num_classes: number of output logits.
    input_vocab: number of input token ids, for models that embed tokens
      (`transformer`, `bow_logreg`, the `lstm_*` models); None means the
      model's default (`num_classes` for the language models); other models
      ignore it.
    per_position: return `[batch, length, num_classes]` logits, a class per
      input position (language modelling); only `PER_POSITION_MODELS`.

  Returns:
    The model's pure `init` and `apply` functions.

  Raises:
    ValueError: if `name` is not registered, the model does not accept
      `example_shape`, cannot return logits per position, or needs an
      `input_vocab`.
  """
  if name not in _BUILDERS:
    raise ValueError(
        f'Unknown model {name!r}; valid models: {", ".join(MODEL_NAMES)}.')
  if per_position and name not in PER_POSITION_MODELS:
    raise ValueError(
        f'The {name} model returns one set of logits per example, not one '
        'per position; models with per-position logits: '
        f'{", ".join(PER_POSITION_MODELS)}.')
  return _built_model(name, tuple(example_shape), num_classes, input_vocab,
                      per_position)


@functools.lru_cache(maxsize=None)
def _built_model(name: str, example_shape: tuple[int, ...], num_classes: int,
                 input_vocab: int | None, per_position: bool) -> Model:
  """`get_model`'s result, built once per process for each argument set:
  its init is jitted (flax's eager init compiles each of its operations on
  its own, about 6 s for the transformer on 2 CPU cores), and the same
  functions let every jit that takes them as static arguments (e.g. the
  evaluation) compile once."""
  module = _BUILDERS[name](example_shape, num_classes, input_vocab,
                           per_position)
  dummy = jnp.zeros((1, *example_shape), jnp.float32)
  return Model(init=jax.jit(lambda rng: module.init(rng, dummy)),
               apply=module.apply)


def head_layers(name: str, example_shape: tuple[int, ...], num_classes: int,
                *, input_vocab: int | None = None,
                per_position: bool = False) -> str:
  """A path regex naming the head of a registered model: the layer whose
  2-D kernel maps to the `num_classes` logits (the last Dense), as the
  personalized algorithms split a model into body and head. The keywords
  are `get_model`'s.

  Examples:
    >>> head_layers('mlp', (784,), 10)
    '^params/Dense_2/'

  Raises:
    ValueError: no such layer, or several (name the head explicitly).
  """
  model = get_model(name, example_shape, num_classes,
                    input_vocab=input_vocab, per_position=per_position)
  params = jax.eval_shape(model.init, jax.random.key(0))
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
