"""Evaluation of a global model on a held-out split."""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_core import losses

PyTree = Any


class Evaluator:
  """Loss and accuracy of `apply_fn` on a fixed split, in padded batches.

  The split is put on the device once; every batch has the same shape, so the
  per-batch function compiles once.

  Examples:
    >>> evaluator = Evaluator(model.apply, test_x, test_y, batch_size=512)
    >>> evaluator(params)  # {'loss': ..., 'accuracy': ...}
  """

  def __init__(self, apply_fn: Callable[[PyTree, jax.Array], jax.Array],
               x: np.ndarray, y: np.ndarray, batch_size: int = 1024):
    if len(x) == 0:
      raise ValueError('The evaluation split is empty.')
    batch_size = min(batch_size, len(x))
    num_batches = -(-len(x) // batch_size)
    pad = num_batches * batch_size - len(x)
    mask = np.concatenate([np.ones(len(x), np.float32),
                           np.zeros(pad, np.float32)])
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros(pad, y.dtype)])
    shape = (num_batches, batch_size)
    self._x = jnp.asarray(x.reshape(shape + x.shape[1:]))
    self._y = jnp.asarray(y.reshape(shape))
    self._mask = jnp.asarray(mask.reshape(shape))
    self._num_examples = float(mask.sum())

    @jax.jit
    def batch_sums(params, x, y, mask):
      logits = apply_fn(params, x)
      count = jnp.sum(mask)
      return (losses.softmax_cross_entropy(logits, y, mask) * count,
              losses.accuracy(logits, y, mask) * count)

    self._batch_sums = batch_sums

  def __call__(self, params: PyTree) -> dict[str, float]:
    loss_sum, correct_sum = 0.0, 0.0
    for i in range(self._x.shape[0]):
      loss, correct = self._batch_sums(params, self._x[i], self._y[i],
                                       self._mask[i])
      loss_sum, correct_sum = loss_sum + loss, correct_sum + correct
    return {'loss': float(loss_sum) / self._num_examples,
            'accuracy': float(correct_sum) / self._num_examples}
