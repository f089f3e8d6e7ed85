"""ResNet-18 with GroupNorm, as in the FL-Simulator of Sun et al. 2023.

The ResNet-18 of He et al. 2016, "Deep Residual Learning for Image
Recognition", with every BatchNorm replaced by the GroupNorm of Wu & He 2018,
"Group Normalization". This is the `ResNet18` of the FL-Simulator
(github.com/woodenchild95/FL-Simulator, `models.py`) of Sun et al. 2023,
"FedSpeed: Larger Local Interval, Less Communication Round, and Higher
Generalization Accuracy": torchvision's `resnet18()` unchanged, ImageNet stem
included, with its `fc` replaced by a `num_classes`-way linear layer and each
of its 20 BatchNorms by `GroupNorm(num_groups=2)`:

* stem: 7x7 convolution, stride 2, padding 3, 64 channels, no bias; GroupNorm;
  ReLU; 3x3 max pooling, stride 2, padding 1;
* four stages of two basic blocks, 64, 128, 256 and 512 channels, the first
  block of each later stage striding by 2. A block is 3x3 conv (no bias),
  GroupNorm, ReLU, 3x3 conv (no bias), GroupNorm, plus the shortcut, then
  ReLU; the shortcut is the identity, or a strided 1x1 conv (no bias) and a
  GroupNorm where the shape changes (option B of He et al. 2016);
* global average pooling and a linear layer with bias.

On 32x32x3 CIFAR images the maps are 16x16 after the stem convolution, 8x8
after the max pooling, then 8, 4, 2 and 1 pixels wide across the stages.
With 10 classes the model has 11,181,642 parameters, the count of
torchvision's BatchNorm ResNet-18 with a 10-way head, since a GroupNorm has
the same per-channel scale and bias as a BatchNorm (and no running
statistics).

GroupNorm normalises each example on its own, so the model keeps no batch
statistics (its variables are `{'params': ...}` only) and each client's copy
can be trained under `vmap`. Initialisation follows torchvision: convolution
kernels He-normal over fan-out, norm scales one and biases zero, the linear
layer's kernel and bias uniform in +-1/sqrt(fan_in); GroupNorm's epsilon is
PyTorch's 1e-5.
"""

from collections.abc import Sequence
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

_STAGE_WIDTHS = (64, 128, 256, 512)
_BLOCKS_PER_STAGE = (2, 2, 2, 2)
_NUM_GROUPS = 2
_EPSILON = 1e-5  # torch.nn.GroupNorm's default; flax's is 1e-6.


def _flat_draw(sample, key: jax.Array, shape: tuple[int, ...],
               dtype) -> jax.Array:
  """`sample(key, (size,), dtype)` reshaped to `shape`.

  Drawing flat and reshaping keeps the jitted init quick to compile: with
  JAX's default partitionable threefry, XLA:CPU takes seconds to compile
  each random draw of a distinct multi-dimensional shape (this model's
  jitted init compiled in about 12 s on 2 CPU cores drawn in its own
  shapes, 5 s drawn flat).
  """
  return sample(key, (math.prod(shape),), dtype).reshape(shape)


def _conv_init(key: jax.Array, shape: tuple[int, ...],
               dtype=jnp.float32) -> jax.Array:
  """torchvision's kaiming_normal_(mode='fan_out', nonlinearity='relu').

  Normal with standard deviation sqrt(2 / fan_out), fan_out being
  `kh * kw * out_channels` for an HWIO kernel.
  """
  std = (2.0 / (math.prod(shape[:-2]) * shape[-1])) ** 0.5
  return std * _flat_draw(jax.random.normal, key, shape, dtype)


def _conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
  """A bias-free square convolution padded by `kernel // 2`, as in torch."""
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False,
                 kernel_init=_conv_init, name=name)


def _norm(name: str) -> nn.GroupNorm:
  """The GroupNorm that replaces each BatchNorm in FL-Simulator."""
  return nn.GroupNorm(num_groups=_NUM_GROUPS, epsilon=_EPSILON, name=name)


def _torch_linear_init(fan_in: int) -> jax.nn.initializers.Initializer:
  """torch.nn.Linear's default init: uniform in +-1/sqrt(fan_in)."""
  bound = 1.0 / fan_in ** 0.5

  def init(key, shape, dtype=jnp.float32):
    uniform = functools.partial(jax.random.uniform, minval=-bound,
                                maxval=bound)
    return _flat_draw(uniform, key, shape, dtype)

  return init


class BasicBlock(nn.Module):
  """The two-convolution residual block of He et al. 2016, with GroupNorm.

  Attributes:
    features: output channels of both convolutions.
    stride: stride of the first convolution and of the shortcut.
  """

  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns the block's output for a `[batch, H, W, C]` x."""
    y = nn.relu(_norm('norm1')(_conv(self.features, 3, self.stride,
                                     'conv1')(x)))
    y = _norm('norm2')(_conv(self.features, 3, 1, 'conv2')(y))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = _norm('downsample_norm')(
          _conv(self.features, 1, self.stride, 'downsample_conv')(x))
    return nn.relu(y + shortcut)


class ResNet18GN(nn.Module):
  """FL-Simulator's ResNet-18 with GroupNorm, for `[batch, H, W, C]` images.

  See the module docstring. Any image of rank 3 works (the final pooling
  averages whatever map is left); the model is sized for 32x32x3 CIFAR.

  Attributes:
    num_classes: number of output logits.
    stage_widths: channels of the four stages.
    blocks_per_stage: basic blocks in each stage; (2, 2, 2, 2) is ResNet-18.
  """

  num_classes: int
  stage_widths: Sequence[int] = _STAGE_WIDTHS
  blocks_per_stage: Sequence[int] = _BLOCKS_PER_STAGE

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns `[batch, num_classes]` logits for `[batch, H, W, C]` x."""
    x = nn.relu(_norm('norm1')(_conv(self.stage_widths[0], 7, 2, 'conv1')(x)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (width, blocks) in enumerate(
        zip(self.stage_widths, self.blocks_per_stage)):
      for block in range(blocks):
        stride = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(width, stride, name=f'layer{stage + 1}_{block}')(x)
    x = jnp.mean(x, axis=(1, 2))
    init = _torch_linear_init(x.shape[-1])
    return nn.Dense(self.num_classes, kernel_init=init, bias_init=init,
                    name='fc')(x)


def build_resnet18_gn(example_shape: tuple[int, ...],
                      num_classes: int) -> nn.Module:
  """Returns a `ResNet18GN` for `[height, width, channels]` images.

  Args:
    example_shape: shape of one example, `[height, width, channels]`.
    num_classes: number of output logits.

  Returns:
    A `ResNet18GN`.

  Raises:
    ValueError: if `example_shape` is not of rank 3.
  """
  if len(example_shape) != 3:
    raise ValueError(
        f'The resnet18_gn model needs [height, width, channels] inputs, got '
        f'example shape {tuple(example_shape)}; use mlp or logreg for flat '
        f'inputs.')
  return ResNet18GN(num_classes)
