"""Decoder-only character transformer for next-character prediction.

A small GPT-style model: the pre-LayerNorm causal decoder of Radford et al.
2019, "Language Models are Unsupervised Multitask Learners" (GPT-2), built
from the attention of Vaswani et al. 2017, "Attention Is All You Need". It
solves the LEAF Shakespeare task of Caldas et al. 2018, "LEAF: A Benchmark for
Federated Settings": given a window of characters, predict the next one. The
logits for that character are read at the window's last position, or at
every position for language modelling (the decoder is causal, so position t
sees tokens 0..t only).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.attention import TransformerBlock

_EMBED_INIT = nn.initializers.normal(stddev=0.02)  # GPT-2's initialisation.


class CharTransformer(nn.Module):
  """Predicts the token after a window of token ids.

  Attributes:
    num_classes: number of output tokens; the model returns one logit each.
    max_len: longest window; the length of the learned position embedding.
    d_model: width of the embeddings and of the residual stream.
    num_layers: number of causal blocks, `block_0` to `block_{num_layers-1}`.
    num_heads: attention heads per block; must divide d_model.
    mlp_dim: width of each block's MLP hidden layer.
    input_vocab: number of input token ids, `[0, input_vocab)`; None means
      `num_classes` (inputs and outputs share one vocabulary).
    per_position: return logits at every position, not only the last.
  """

  num_classes: int
  max_len: int
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 256
  input_vocab: int | None = None
  per_position: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns `[batch, num_classes]` next-token logits, or
    `[batch, length, num_classes]` if `per_position`.

    Args:
      x: `[batch, length]` token ids, integer or float (the engine feeds
        float32), with length at most `max_len`.
    """
    tokens = x.astype(jnp.int32)
    length = tokens.shape[1]
    if length > self.max_len:
      raise ValueError(f'Windows of {length} tokens exceed max_len '
                       f'{self.max_len}.')
    vocab = self.num_classes if self.input_vocab is None else self.input_vocab
    h = nn.Embed(vocab, self.d_model, embedding_init=_EMBED_INIT,
                 name='token_embed')(tokens)
    pos_embed = self.param('pos_embed', _EMBED_INIT,
                           (self.max_len, self.d_model))
    h = h + pos_embed[:length]
    for i in range(self.num_layers):
      h = TransformerBlock(self.num_heads, self.mlp_dim, causal=True,
                           name=f'block_{i}')(h)
    if not self.per_position:
      h = h[:, -1]
    h = nn.LayerNorm(name='ln_f')(h)
    return nn.Dense(self.num_classes, name='head')(h)


def build_transformer(example_shape: tuple[int, ...], num_classes: int,
                      input_vocab: int | None = None,
                      per_position: bool = False) -> nn.Module:
  """Returns a `CharTransformer` for windows of `example_shape[0]` tokens.

  Args:
    example_shape: shape of one example, `(length,)` token ids.
    num_classes: number of logits, and the input vocabulary by default.
    input_vocab: number of input token ids; None means `num_classes`.
    per_position: logits at every position instead of the last.

  Returns:
    A `CharTransformer` with `max_len` the window length.

  Raises:
    ValueError: if `example_shape` is not `(length,)`.
  """
  if len(example_shape) != 1:
    raise ValueError(
        f'The transformer model needs windows of token ids, example shape '
        f'(length,), got example shape {tuple(example_shape)}; use vit or '
        f'cnn for images, mlp or logreg for other inputs.')
  return CharTransformer(num_classes, max_len=example_shape[0],
                         input_vocab=input_vocab, per_position=per_position)
