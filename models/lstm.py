"""Stacked-LSTM models of the federated text benchmarks.

An embedding, stacked LSTM layers (flax's `nn.RNN` over an
`nn.OptimizedLSTMCell`), an optional linear projection and a Dense head,
read at every position (language modelling) or at the last one (LEAF's
models classify from the last output). Three configurations are registered:

  * `lstm_shakespeare`: next-character prediction of McMahan et al. 2017,
    "Communication-Efficient Learning of Deep Networks from Decentralized
    Data", as used by Caldas et al. 2018, "LEAF: A Benchmark for Federated
    Settings" (`models/shakespeare/stacked_lstm.py`) and Reddi et al. 2021,
    "Adaptive Federated Optimization" (google-research/federated
    `utils/models/shakespeare_models.py`; google/fedjax
    `fedjax/models/shakespeare.py`): embedding 8, two LSTM layers of 256,
    Dense over the characters. 820,522 parameters for 90 characters, the
    count fedjax's test asserts.
  * `lstm_stackoverflow`: StackOverflow next-word prediction of Reddi et al.
    2021 (federated `utils/models/stackoverflow_models.py`; fedjax
    `fedjax/models/stackoverflow.py`): embedding 96, one LSTM layer of 670, a
    linear projection to 96, Dense over the 10,004 words (10,000 plus pad,
    bos, eos, oov). 4,050,748 parameters, as fedjax's test asserts.
  * `lstm_sent140`: LEAF's Sent140 classifier (`models/sent140/
    stacked_lstm.py`): two LSTM layers of 100, a linear layer of 128 on the
    last output, Dense over the classes. The LEAF paper feeds 300-d GloVe
    vectors; here the 300-d embedding of the `input_vocab` words is learned
    (LEAF's code learns one of width 100), as nothing is downloaded.

Deviations: initialisation is flax's default (LeCun-normal input kernels,
orthogonal recurrent kernels, zero biases, normal embeddings) rather than
Keras' (He-normal kernels, forget-gate bias 1, uniform embeddings); fedjax's
extra tanh on each LSTM output is not applied (TFF's Keras models, LEAF's
and PyTorch's have none).
"""

from collections.abc import Callable
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp


class LSTMModel(nn.Module):
  """Embedding -> stacked LSTMs -> optional projection -> Dense head.

  Attributes:
    num_classes: number of output logits (the vocabulary, for language
      modelling).
    input_vocab: number of input token ids; ids lie in `[0, input_vocab)`,
      and negative ids (padding) embed as zero vectors.
    embed_dim: width of the token embedding.
    hidden_sizes: width of each LSTM layer, `lstm_0` first.
    projection_dim: width of a linear layer between the last LSTM and the
      head, or None for none.
    per_position: return logits at every position, not only the last.
  """

  num_classes: int
  input_vocab: int
  embed_dim: int
  hidden_sizes: tuple[int, ...]
  projection_dim: int | None = None
  per_position: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns `[batch, num_classes]` logits read at the last position, or
    `[batch, length, num_classes]` logits if `per_position`.

    Args:
      x: `[batch, length]` token ids, integer or float (the engine feeds
        float32).
    """
    tokens = x.astype(jnp.int32)
    h = nn.Embed(self.input_vocab, self.embed_dim, name='embed')(tokens)
    h = jnp.where((tokens >= 0)[..., None], h, 0.0)
    for i, size in enumerate(self.hidden_sizes):
      h = nn.RNN(nn.OptimizedLSTMCell(size, name=f'lstm_{i}'))(h)
    if not self.per_position:
      h = h[:, -1]
    if self.projection_dim is not None:
      h = nn.Dense(self.projection_dim, name='projection')(h)
    return nn.Dense(self.num_classes, name='head')(h)


# Sizes of each registered configuration (see the module docstring); an
# input_vocab of None defaults to num_classes (input and output share ids).
_CONFIGS = {
    'lstm_shakespeare': dict(embed_dim=8, hidden_sizes=(256, 256)),
    'lstm_stackoverflow': dict(embed_dim=96, hidden_sizes=(670,),
                               projection_dim=96),
    'lstm_sent140': dict(embed_dim=300, hidden_sizes=(100, 100),
                         projection_dim=128),
}
_NEEDS_INPUT_VOCAB = ('lstm_sent140',)


def build_lstm(name: str, example_shape: tuple[int, ...], num_classes: int,
               input_vocab: int | None, per_position: bool) -> LSTMModel:
  """Returns the `LSTMModel` configuration `name` for windows of tokens.

  Args:
    name: a key of `BUILDERS`.
    example_shape: shape of one example, `(length,)` token ids.
    num_classes: number of output logits.
    input_vocab: number of input token ids; None means `num_classes`, except
      for `lstm_sent140` (words in, classes out), which needs it.
    per_position: logits at every position instead of the last.

  Raises:
    ValueError: if `example_shape` is not `(length,)`, or `lstm_sent140`
      gets no `input_vocab`.
  """
  if len(example_shape) != 1:
    raise ValueError(
        f'The {name} model needs sequences of token ids, example shape '
        f'(length,), got example shape {tuple(example_shape)}; use cnn or '
        'vit for images, mlp or logreg for other inputs.')
  if input_vocab is None:
    if name in _NEEDS_INPUT_VOCAB:
      raise ValueError(
          f'The {name} model embeds words and outputs classes, so it needs '
          'input_vocab, the number of input token ids.')
    input_vocab = num_classes
  return LSTMModel(num_classes, input_vocab, per_position=per_position,
                   **_CONFIGS[name])


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    name: functools.partial(build_lstm, name) for name in _CONFIGS}
