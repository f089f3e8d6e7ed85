"""Convolutional networks of McMahan et al. 2017.

McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data", train two CNNs:

* on MNIST, two 5x5 convolutions (32 and 64 channels) each followed by 2x2 max
  pooling, a 512-unit ReLU layer and a softmax output: 1,663,370 parameters
  (`MnistCNN`);
* on CIFAR-10, the model of the TensorFlow CNN tutorial: two 5x5 convolutions
  with 64 channels each followed by max pooling, then 384- and 192-unit ReLU
  layers (`CifarCNN`). The same model is used by the FL-Simulator of Sun et al.
  2023, "FedSpeed: Larger Local Interval, Less Communication Round, and Higher
  Generalization Accuracy".

`build_cnn` picks `CifarCNN` for 32x32x3 inputs and `MnistCNN` for any other
`[height, width, channels]` input.
"""

import flax.linen as nn
import jax

_CIFAR_SHAPE = (32, 32, 3)


def _pool(x: jax.Array, padding: str) -> jax.Array:
  """2x2 max pooling with stride 2."""
  return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding=padding)


class MnistCNN(nn.Module):
  """The MNIST CNN of McMahan et al. 2017, for any `[H, W, C]` input.

  'SAME' padding throughout, so small inputs such as 8x8 digits still work.

  Attributes:
    num_classes: number of output logits.
  """

  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns `[batch, num_classes]` logits for `[batch, H, W, C]` x."""
    x = _pool(nn.relu(nn.Conv(32, (5, 5), padding='SAME')(x)), 'SAME')
    x = _pool(nn.relu(nn.Conv(64, (5, 5), padding='SAME')(x)), 'SAME')
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(512)(x))
    return nn.Dense(self.num_classes)(x)


class CifarCNN(nn.Module):
  """The TensorFlow-tutorial CIFAR CNN used by McMahan et al. 2017.

  'VALID' convolutions, so it expects 32x32x3 inputs (a 5x5x64 map reaches
  the dense layers).

  Attributes:
    num_classes: number of output logits.
  """

  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns `[batch, num_classes]` logits for `[batch, 32, 32, 3]` x."""
    x = _pool(nn.relu(nn.Conv(64, (5, 5), padding='VALID')(x)), 'VALID')
    x = _pool(nn.relu(nn.Conv(64, (5, 5), padding='VALID')(x)), 'VALID')
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(384)(x))
    x = nn.relu(nn.Dense(192)(x))
    return nn.Dense(self.num_classes)(x)


def build_cnn(example_shape: tuple[int, ...], num_classes: int) -> nn.Module:
  """Returns the McMahan et al. 2017 CNN that suits `example_shape`.

  Args:
    example_shape: shape of one example, `[height, width, channels]`.
    num_classes: number of output logits.

  Returns:
    `CifarCNN` for 32x32x3 inputs, otherwise `MnistCNN`.

  Raises:
    ValueError: if `example_shape` is not of rank 3.
  """
  if len(example_shape) != 3:
    raise ValueError(
        f'The cnn model needs [height, width, channels] inputs, got example '
        f'shape {tuple(example_shape)}; use mlp or logreg for flat inputs.')
  if tuple(example_shape) == _CIFAR_SHAPE:
    return CifarCNN(num_classes)
  return MnistCNN(num_classes)
