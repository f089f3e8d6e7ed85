"""Decoder-only character transformer for next-character prediction.

A small GPT-style model: the pre-LayerNorm causal decoder of Radford et al.
2019, "Language Models are Unsupervised Multitask Learners" (GPT-2), built
from the attention of Vaswani et al. 2017, "Attention Is All You Need". It
solves the LEAF Shakespeare task of Caldas et al. 2018, "LEAF: A Benchmark for
Federated Settings": given a window of characters, predict the next one. The
logits for that character are read at the window's last position.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.attention import TransformerBlock

_EMBED_INIT = nn.initializers.normal(stddev=0.02)  # GPT-2's initialisation.


class CharTransformer(nn.Module):
  """Predicts the token after a window of token ids.

  Attributes:
    num_classes: vocabulary size; token ids lie in `[0, num_classes)`, and
      the model returns one logit per token.
    max_len: longest window; the length of the learned position embedding.
    d_model: width of the embeddings and of the residual stream.
    num_layers: number of causal blocks, `block_0` to `block_{num_layers-1}`.
    num_heads: attention heads per block; must divide d_model.
    mlp_dim: width of each block's MLP hidden layer.
  """

  num_classes: int
  max_len: int
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 256

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns `[batch, num_classes]` next-token logits.

    Args:
      x: `[batch, length]` token ids, integer or float (the engine feeds
        float32), with length at most `max_len`.
    """
    tokens = x.astype(jnp.int32)
    length = tokens.shape[1]
    if length > self.max_len:
      raise ValueError(f'Windows of {length} tokens exceed max_len '
                       f'{self.max_len}.')
    h = nn.Embed(self.num_classes, self.d_model, embedding_init=_EMBED_INIT,
                 name='token_embed')(tokens)
    pos_embed = self.param('pos_embed', _EMBED_INIT,
                           (self.max_len, self.d_model))
    h = h + pos_embed[:length]
    for i in range(self.num_layers):
      h = TransformerBlock(self.num_heads, self.mlp_dim, causal=True,
                           name=f'block_{i}')(h)
    h = nn.LayerNorm(name='ln_f')(h[:, -1])
    return nn.Dense(self.num_classes, name='head')(h)


def build_transformer(example_shape: tuple[int, ...],
                      num_classes: int) -> nn.Module:
  """Returns a `CharTransformer` for windows of `example_shape[0]` tokens.

  Args:
    example_shape: shape of one example, `(length,)` token ids.
    num_classes: vocabulary size, which is also the number of logits.

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
  return CharTransformer(num_classes, max_len=example_shape[0])
