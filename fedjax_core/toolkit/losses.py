"""Masked losses and accuracy over padded batches, for every kind of target.

The kind of target follows from the shapes (`fedjax_core.targets`): labels
shaped like the logits without their last axis are integer classes, one per
example or one per position (softmax cross-entropy; per-position losses
average over the positions that are not padding, as FedJAX and TFF's
language-model tasks do); labels shaped like the logits are multi-hot sets
(sigmoid cross-entropy averaged over the classes, as Keras'
`BinaryCrossentropy` in TFF's StackOverflow tag prediction).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_core import targets
from fedjax_core.algorithm import Batch

# Multi-label accuracy is recall at this many top-scored classes (Reddi et
# al., 2021, "Adaptive Federated Optimization", report recall@5 for
# StackOverflow tags).
RECALL_AT = 5


class ExampleScores(NamedTuple):
  """Per-example sums, so that any set of examples can be pooled.

  Attributes:
    loss: the example's summed loss (over its trained positions).
    trained: how many targets `loss` sums (1 for a class or a set).
    correct: how many scored targets were predicted (a class: 0 or 1;
      positions: correct non-padded in-vocabulary positions; a set: its
      classes among the `RECALL_AT` top-scored ones).
    scored: how many targets `correct` is out of.
  """

  loss: jax.Array
  trained: jax.Array
  correct: jax.Array
  scored: jax.Array


def _is_multi_label(logits: jax.Array, labels: jax.Array) -> bool:
  if labels.shape == logits.shape:
    return True
  if labels.shape == logits.shape[:-1]:
    return False
  raise ValueError(
      f'Labels of shape {labels.shape} do not fit logits of shape '
      f'{logits.shape}: integer labels need the logits shape without its '
      'last (class) axis, multi-hot labels the logits shape. A per-position '
      'target needs a model built with per_position=True.')


def example_scores(logits: jax.Array, labels: jax.Array) -> ExampleScores:
  """Loss and accuracy counts of each example of a batch.

  Args:
    logits: `[batch, num_classes]` or `[batch, T, num_classes]`.
    labels: `[batch]` or `[batch, T]` stored integer targets
      (`fedjax_core.targets`), or `[batch, num_classes]` multi-hot sets.

  Returns:
    `ExampleScores` of `[batch]` float32 arrays.
  """
  if _is_multi_label(logits, labels):
    positives = labels.astype(jnp.float32)
    loss = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, positives),
                    axis=-1)
    _, top = jax.lax.top_k(logits, min(RECALL_AT, logits.shape[-1]))
    hits = jnp.sum(jnp.take_along_axis(positives, top, axis=-1), axis=-1)
    return ExampleScores(loss, jnp.ones_like(loss), hits,
                         jnp.sum(positives, axis=-1))
  classes = targets.class_of(labels)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, classes)
  correct = (jnp.argmax(logits, axis=-1) == classes).astype(jnp.float32)
  if labels.ndim == 1:
    ones = jnp.ones_like(loss)
    return ExampleScores(loss, ones, correct, ones)
  trained = targets.is_trained(labels).astype(jnp.float32)
  scored = targets.is_scored(labels).astype(jnp.float32)
  return ExampleScores(jnp.sum(loss * trained, axis=-1),
                       jnp.sum(trained, axis=-1),
                       jnp.sum(correct * scored, axis=-1),
                       jnp.sum(scored, axis=-1))


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of `values` over entries where `mask` is 1; 0 for an empty mask."""
  total = jnp.sum(mask)
  return jnp.sum(values * mask) / jnp.maximum(total, 1.0)


def _pooled(total: jax.Array, count: jax.Array, mask: jax.Array
            ) -> jax.Array:
  """sum(mask * total) / sum(mask * count), 0 when the count is 0."""
  return jnp.sum(total * mask) / jnp.maximum(jnp.sum(count * mask), 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  mask: jax.Array) -> jax.Array:
  """Mean cross-entropy over the real examples' trained targets.

  Softmax cross-entropy for integer labels (per example, or per position
  averaged over every non-padded position of the batch); sigmoid
  cross-entropy averaged over the classes for multi-hot labels.
  """
  if labels.ndim == 1 and not _is_multi_label(logits, labels):
    return masked_mean(
        optax.softmax_cross_entropy_with_integer_labels(logits, labels), mask)
  scores = example_scores(logits, labels)
  return _pooled(scores.loss, scores.trained, mask)


def accuracy(logits: jax.Array, labels: jax.Array,
             mask: jax.Array) -> jax.Array:
  """Share of the real examples' scored targets that were predicted: the
  arg-max class for integer labels, recall at `RECALL_AT` for sets."""
  scores = example_scores(logits, labels)
  return _pooled(scores.correct, scores.scored, mask)


def loss_and_grad(apply_fn: Callable[[Any, jax.Array], jax.Array]
                  ) -> Callable[[Any, Batch], tuple[jax.Array, Any]]:
  """`(params, batch) -> (loss, grads)` of the masked mean cross-entropy."""

  def loss_fn(params, batch: Batch):
    return cross_entropy(apply_fn(params, batch.x), batch.y, batch.mask)

  return jax.value_and_grad(loss_fn)
