"""Pre-LayerNorm transformer block with multi-head self-attention.

Multi-head scaled dot-product attention follows Vaswani et al. 2017,
"Attention Is All You Need". The block puts LayerNorm before each sublayer
(attention, then a GELU MLP), inside the residual branch, as in the GPT-2
decoder of Radford et al. 2019, "Language Models are Unsupervised Multitask
Learners", and the ViT encoder of Dosovitskiy et al. 2021, "An Image is Worth
16x16 Words: Transformers for Image Recognition at Scale".

Attention is written with plain `nn.Dense` layers, so every kernel is a 2-D
`[in, out]` matrix that a low-rank adapter can select by parameter path, e.g.
`block_0/attention/query/kernel`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


class SelfAttention(nn.Module):
  """Multi-head self-attention over `[batch, length, d_model]` inputs.

  Dense layers `query`, `key`, `value` and `out` each map d_model -> d_model;
  the heads split d_model into `num_heads` slices.

  Attributes:
    num_heads: number of attention heads; must divide d_model.
    causal: if True, position t attends only to positions <= t.
  """

  num_heads: int
  causal: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns `[batch, length, d_model]` attention outputs for x."""
    batch, length, d_model = x.shape
    if d_model % self.num_heads:
      raise ValueError(f'd_model {d_model} does not divide into '
                       f'{self.num_heads} attention heads.')
    head_dim = d_model // self.num_heads

    def heads(name: str) -> jax.Array:
      y = nn.Dense(d_model, name=name)(x)
      return y.reshape(batch, length, self.num_heads, head_dim)

    q, k, v = heads('query'), heads('key'), heads('value')
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(head_dim)
    if self.causal:
      mask = jnp.tril(jnp.ones((length, length), bool))
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    y = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
    return nn.Dense(d_model, name='out')(y.reshape(batch, length, d_model))


class FeedForward(nn.Module):
  """Position-wise MLP: Dense `fc1` to mlp_dim, GELU, Dense `fc2` back.

  Attributes:
    mlp_dim: width of the hidden layer.
  """

  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns an array shaped like `[..., d_model]` x."""
    y = nn.gelu(nn.Dense(self.mlp_dim, name='fc1')(x))
    return nn.Dense(x.shape[-1], name='fc2')(y)


class TransformerBlock(nn.Module):
  """Pre-LayerNorm block: x + attention(ln_1(x)), then + mlp(ln_2(.)).

  Attributes:
    num_heads: number of attention heads; must divide d_model.
    mlp_dim: width of the MLP's hidden layer.
    causal: if True, position t attends only to positions <= t (a decoder);
      if False, every position attends to every other (an encoder).
  """

  num_heads: int
  mlp_dim: int
  causal: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns `[batch, length, d_model]` outputs for x of the same shape."""
    attention = SelfAttention(self.num_heads, self.causal, name='attention')
    x = x + attention(nn.LayerNorm(name='ln_1')(x))
    return x + FeedForward(self.mlp_dim, name='mlp')(
        nn.LayerNorm(name='ln_2')(x))
