"""Masked classification losses over padded batches."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from fedjax_core.algorithm import Batch


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `values` over entries where `mask` is 1; 0 for an empty mask."""
  total = jnp.sum(mask)
  return jnp.sum(values * mask) / jnp.maximum(total, 1.0)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array,
                          mask: jax.Array) -> jax.Array:
  """Mean cross-entropy of integer `labels` over the real examples."""
  per_example = optax.softmax_cross_entropy_with_integer_labels(
      logits, labels)
  return masked_mean(per_example, mask)


def accuracy(logits: jax.Array, labels: jax.Array,
             mask: jax.Array) -> jax.Array:
  """Fraction of real examples whose arg-max logit is the label."""
  correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
  return masked_mean(correct, mask)


def loss_and_grad(apply_fn: Callable[[Any, jax.Array], jax.Array]
                  ) -> Callable[[Any, Batch], tuple[jax.Array, Any]]:
  """`(params, batch) -> (loss, grads)` of the masked mean cross-entropy."""

  def loss_fn(params, batch: Batch):
    return softmax_cross_entropy(apply_fn(params, batch.x), batch.y,
                                 batch.mask)

  return jax.value_and_grad(loss_fn)
