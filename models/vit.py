"""Vision Transformer.

The ViT of Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words:
Transformers for Image Recognition at Scale": an image is cut into
non-overlapping patches, each patch is linearly embedded, a learned `cls`
token and learned position embeddings are added, and a stack of pre-LayerNorm
encoder blocks (the attention of Vaswani et al. 2017, "Attention Is All You
Need") feeds a linear head on the `cls` token. Defaults are small, for CPU.

Patches are cut by reshape and transpose, not by a strided convolution:
XLA:CPU runs convolutions inside loops very slowly (jax-ml/jax#12868).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.attention import TransformerBlock

_PATCH_SIZE = 4
_POS_INIT = nn.initializers.normal(stddev=0.02)


def patchify(x: jax.Array, patch_size: int) -> jax.Array:
  """Cuts images into flattened non-overlapping square patches.

  Args:
    x: `[batch, height, width, channels]` images; height and width must
      divide by `patch_size`.
    patch_size: side of each square patch, in pixels.

  Returns:
    `[batch, num_patches, patch_size * patch_size * channels]`, patches in
    row-major order over the patch grid.
  """
  batch, height, width, channels = x.shape
  rows, cols = height // patch_size, width // patch_size
  x = x.reshape(batch, rows, patch_size, cols, patch_size, channels)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(batch, rows * cols, patch_size * patch_size * channels)


class ViT(nn.Module):
  """Classifies `[batch, H, W, C]` images with a Vision Transformer.

  Attributes:
    num_classes: number of output logits.
    patch_size: side of each square patch; must divide H and W.
    d_model: width of the patch embeddings and of the residual stream.
    num_layers: number of encoder blocks, `block_0` to `block_{num_layers-1}`.
    num_heads: attention heads per block; must divide d_model.
    mlp_dim: width of each block's MLP hidden layer.
  """

  num_classes: int
  patch_size: int = _PATCH_SIZE
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  mlp_dim: int = 128

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns `[batch, num_classes]` logits for `[batch, H, W, C]` x."""
    h = nn.Dense(self.d_model, name='patch_embed')(
        patchify(x, self.patch_size))
    cls = self.param('cls', nn.initializers.zeros, (1, 1, self.d_model))
    h = jnp.concatenate([jnp.broadcast_to(cls, (h.shape[0], 1, self.d_model)),
                         h], axis=1)
    h = h + self.param('pos_embed', _POS_INIT, h.shape[1:])
    for i in range(self.num_layers):
      h = TransformerBlock(self.num_heads, self.mlp_dim, causal=False,
                           name=f'block_{i}')(h)
    h = nn.LayerNorm(name='ln_f')(h[:, 0])
    return nn.Dense(self.num_classes, name='head')(h)


def build_vit(example_shape: tuple[int, ...], num_classes: int) -> nn.Module:
  """Returns a `ViT` with the default patch size for `example_shape` images.

  Args:
    example_shape: shape of one example, `[height, width, channels]`.
    num_classes: number of output logits.

  Returns:
    A `ViT` with `_PATCH_SIZE` patches.

  Raises:
    ValueError: if `example_shape` is not of rank 3, or its height or width
      does not divide by the patch size.
  """
  shape = tuple(example_shape)
  if len(shape) != 3 or shape[0] % _PATCH_SIZE or shape[1] % _PATCH_SIZE:
    raise ValueError(
        f'The vit model needs [height, width, channels] images whose height '
        f'and width divide by the patch size {_PATCH_SIZE}, got example '
        f'shape {shape}; use cnn for other images, mlp or logreg for flat '
        f'inputs.')
  return ViT(num_classes)
