"""Multilayer perceptron.

The default hidden sizes `(200, 200)` are the "2NN" of McMahan et al. 2017,
"Communication-Efficient Learning of Deep Networks from Decentralized Data".
"""

from collections.abc import Sequence

import flax.linen as nn
import jax


class MLP(nn.Module):
  """Flattens each example, applies Dense+ReLU hidden layers, then logits.

  Attributes:
    num_classes: number of output logits.
    hidden_sizes: widths of the ReLU hidden layers, input to output.
  """

  num_classes: int
  hidden_sizes: Sequence[int] = (200, 200)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns `[batch, num_classes]` logits for `[batch, *example_shape]` x."""
    x = x.reshape((x.shape[0], -1))
    for size in self.hidden_sizes:
      x = nn.relu(nn.Dense(size)(x))
    return nn.Dense(self.num_classes)(x)
