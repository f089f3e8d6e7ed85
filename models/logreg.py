"""Multinomial logistic regression.

The convex baseline of federated optimisation studies, e.g. the MNIST/EMNIST
logistic-regression tasks of Li et al. 2020, "Federated Optimization in
Heterogeneous Networks" (FedProx), and Karimireddy et al. 2020, "SCAFFOLD:
Stochastic Controlled Averaging for Federated Learning".
"""

import flax.linen as nn
import jax


class LogisticRegression(nn.Module):
  """Flattens each example and maps it to class logits with one dense layer.

  Attributes:
    num_classes: number of output logits.
  """

  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns `[batch, num_classes]` logits for `[batch, *example_shape]` x."""
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes)(x)
