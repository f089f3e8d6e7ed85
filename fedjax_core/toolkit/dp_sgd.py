"""Sample-level DP-SGD on the client (Abadi et al., CCS 2016, "Deep Learning
with Differential Privacy", Algorithm 1), for cross-silo settings.

Each local step takes every real example's gradient (vmapped over the
batch), clips it to L2 norm C, sums the clipped gradients, adds
N(0, (z C)^2) to every coordinate and divides by the batch size B (the
padded batch, fixed, so the divisor does not reveal how many examples were
real). Padding examples contribute nothing. The epsilon this spends is
reported by `privacy_accounting.SampleLevelAccounting`.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from fedjax_core.channel import dp
from fedjax_core.toolkit import losses
from fedjax_core.algorithm import Batch
from fedjax_core.errors import SettingError

PyTree = Any
PrivateGradFn = Callable[[PyTree, Batch, jax.Array],
                         tuple[jax.Array, PyTree]]


@dataclasses.dataclass(frozen=True)
class DPSGDConfig:
  """Per-example clip norm C and noise multiplier z of DP-SGD."""

  clip_norm: float
  noise_multiplier: float

  def __post_init__(self):
    if not self.clip_norm > 0:
      raise SettingError('dp_sgd.clip_norm', 'DP-SGD clip_norm must be '
                         f'positive, got {self.clip_norm!r}.')
    if not self.noise_multiplier >= 0:
      raise SettingError('dp_sgd.noise_multiplier', 'DP-SGD noise_multiplier '
                         f'must be >= 0, got {self.noise_multiplier!r}.')


def private_loss_and_grad(apply_fn: Callable[[PyTree, jax.Array], jax.Array],
                          config: DPSGDConfig) -> PrivateGradFn:
  """`(params, batch, rng) -> (loss, noised clipped mean gradient)`.

  The loss is the masked mean over the examples of each one's
  cross-entropy at `params` (as `losses.loss_and_grad` reports it for
  class labels; per-position targets are averaged per example first).

  Examples:
    >>> grad_fn = private_loss_and_grad(model.apply, DPSGDConfig(1.0, 1.1))
    >>> loss, grads = grad_fn(params, batch, jax.random.key(0))
  """

  def example_loss(params, x, y):
    return losses.cross_entropy(apply_fn(params, x[None]), y[None],
                                jnp.ones(1))

  per_example = jax.vmap(jax.value_and_grad(example_loss),
                         in_axes=(None, 0, 0))

  def grad_fn(params, batch: Batch, rng):
    example_losses, grads = per_example(params, batch.x, batch.y)
    norms = jax.vmap(optax.tree.norm)(grads)
    scale = batch.mask * jnp.minimum(1.0, config.clip_norm / (norms + 1e-12))
    summed = jax.tree.map(lambda g: jnp.tensordot(scale, g, axes=1), grads)
    noised = dp.add_gaussian_noise(
        summed, rng, config.noise_multiplier * config.clip_norm)
    batch_size = batch.mask.shape[0]
    mean = jax.tree.map(lambda g: g / batch_size, noised)
    return losses.masked_mean(example_losses, batch.mask), mean

  return grad_fn
