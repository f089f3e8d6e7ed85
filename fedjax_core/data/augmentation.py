"""On-device image augmentation as pure functions of a PRNG key.

`random_crop_flip` is the CIFAR training transform of FL-Simulator, the
code of FedSpeed (Sun et al., ICLR 2023): torchvision's
`RandomCrop(32, padding=4)` with zero padding followed by
`RandomHorizontalFlip()`, the recipe of He et al. (CVPR 2016). Being pure,
it runs inside a jitted and vmapped cohort, one key per client and step.
"""

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from fedjax_core.data.federated import FederatedDataset
from fedjax_core.errors import SettingError


def random_crop_flip(key: jax.Array, images: jax.Array,
                     padding: int = 4) -> jax.Array:
  """Zero-pads by `padding`, crops back to size at random, flips at random.

  Each example draws its own crop offset `(dy, dx)` in `[0, 2 * padding]`
  of the padded image and is flipped left-right with probability 1/2. The
  draws are

    offset_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(offset_key, (B, 2), 0, 2 * padding + 1)
    flips = jax.random.bernoulli(flip_key, 0.5, (B,))

  with `offsets[:, 0]` the row offset dy and `offsets[:, 1]` the column
  offset dx. With `padding=0` only the flips remain.

  The crop and flip are one gather from the unpadded batch with the
  out-of-image pixels masked to zero, which on CPU was a little faster than
  padding and `lax.dynamic_slice` per example.

  Args:
    key: PRNG key of this batch.
    images: `[B, H, W, C]` batch.
    padding: zero border added on each side before the crop, >= 0.

  Returns:
    The augmented batch, of the shape and dtype of `images`.
  """
  if padding < 0:
    raise ValueError(f'padding must be >= 0, got {padding}.')
  b, h, w, _ = images.shape
  offset_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(offset_key, (b, 2), 0, 2 * padding + 1)
  flips = jax.random.bernoulli(flip_key, 0.5, (b,))
  # Output pixel (i, j) reads source pixel (dy + i - padding, dx + j' -
  # padding), with j' = w - 1 - j when flipped.
  cols = jnp.where(flips[:, None], jnp.arange(w)[::-1], jnp.arange(w))
  src_i = offsets[:, 0, None] - padding + jnp.arange(h)
  src_j = offsets[:, 1, None] - padding + cols
  inside = (((src_i >= 0) & (src_i < h))[:, :, None] &
            ((src_j >= 0) & (src_j < w))[:, None, :])
  out = images[jnp.arange(b)[:, None, None],
               jnp.clip(src_i, 0, h - 1)[:, :, None],
               jnp.clip(src_j, 0, w - 1)[:, None, :]]
  return jnp.where(inside[..., None], out, jnp.zeros((), images.dtype))


def for_dataset(augment: bool, dataset: FederatedDataset
                ) -> Callable[[jax.Array, jax.Array], jax.Array] | None:
  """`(key, images) -> images`: `random_crop_flip` with padding H // 8 for
  `dataset`'s images if `augment`, else None.

  Raises:
    SettingError: `augment` for examples that are not images.
  """
  if not augment:
    return None
  if len(dataset.example_shape) != 3:
    raise SettingError(
        'augment', 'augment (random crop and flip) needs images of shape '
        f'[height, width, channels]; {dataset.name} has examples of '
        f'shape {dataset.example_shape}. Turn augment off for this '
        'dataset.')
  return functools.partial(random_crop_flip,
                           padding=dataset.example_shape[0] // 8)
