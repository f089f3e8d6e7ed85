"""Evaluation of a global model (or of many node models) on held-out data.

`Evaluator` scores the dataset's test split; `NodesEvaluator` scores many
models on it at once (a decentralized run's node models). `LocalEvaluator` scores each
client's own held-out rows and reports how the global model serves the
clients: the mean and the 10th percentile of the per-client accuracy (the
fairness view of Li et al., 2020, "Fair Resource Allocation in Federated
Learning", ICLR).
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_core.data.client_indices import ClientIndices
from fedjax_core.data.federated import as_float

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


@functools.partial(jax.jit, static_argnums=0)
def _batch_outputs(apply_fn: ApplyFn, params: PyTree, x: jax.Array,
                   y: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-example loss and 0/1 correctness of one batch. Jitted at module
  level, so evaluators of one model and batch shape share a compile (the
  runs of `VmappedRuns` each have their own)."""
  logits = apply_fn(params, as_float(x))
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return loss, (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)


class _PerExample:
  """Per-example loss and correctness of a fixed split, in padded batches.

  The split is put on the device once, already cut into batches; every batch
  has the same shape, so the per-batch function compiles once.
  """

  def __init__(self, apply_fn: ApplyFn, x: np.ndarray, y: np.ndarray,
               batch_size: int):
    if len(x) == 0:
      raise ValueError('The evaluation split is empty.')
    batch_size = min(batch_size, len(x))
    num_batches = -(-len(x) // batch_size)
    pad = num_batches * batch_size - len(x)
    x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    y = np.concatenate([y, np.zeros(pad, y.dtype)])
    self.batches = [
        (jnp.asarray(x[i:i + batch_size]), jnp.asarray(y[i:i + batch_size]))
        for i in range(0, len(x), batch_size)]
    self.num_examples = num_batches * batch_size - pad
    self.apply_fn = apply_fn

  def __call__(self, params: PyTree) -> tuple[np.ndarray, np.ndarray]:
    """`[num_examples]` losses and 0/1 correctness, in split order."""
    outputs = [_batch_outputs(self.apply_fn, params, x, y)
               for x, y in self.batches]
    loss, correct = (np.concatenate(a)[:self.num_examples]
                     for a in zip(*jax.device_get(outputs)))
    return loss, correct


class Evaluator:
  """Loss and accuracy of `apply_fn` on a fixed split.

  Examples:
    >>> evaluator = Evaluator(model.apply, test_x, test_y, batch_size=512)
    >>> evaluator(params)  # {'loss': ..., 'accuracy': ...}
  """

  def __init__(self, apply_fn: ApplyFn, x: np.ndarray, y: np.ndarray,
               batch_size: int = 1024):
    self._per_example = _PerExample(apply_fn, x, y, batch_size)

  def __call__(self, params: PyTree) -> dict[str, float]:
    loss, correct = self._per_example(params)
    return {'loss': float(np.mean(loss, dtype=np.float64)),
            'accuracy': float(np.mean(correct, dtype=np.float64))}


class LocalEvaluator:
  """Accuracy of one global model on each client's own held-out rows.

  Clients without held-out rows are left out of the statistics.

  Examples:
    >>> local = LocalEvaluator(model.apply, train_x, train_y,
    ...                        dataset.local_test_indices)
    >>> local(params)  # {'local_test_accuracy_mean': ..., '..._p10': ...}
  """

  def __init__(self, apply_fn: ApplyFn, x: np.ndarray, y: np.ndarray,
               local_test_indices: ClientIndices, batch_size: int = 1024):
    rows = local_test_indices.rows
    self._per_example = _PerExample(apply_fn, x[rows], y[rows], batch_size)
    self._client_of_row = local_test_indices.client_of_row()
    self._sizes = local_test_indices.sizes

  def per_client_accuracy(self, params: PyTree) -> np.ndarray:
    """Accuracy of every client with held-out rows, in client order."""
    _, correct = self._per_example(params)
    hits = np.bincount(self._client_of_row, weights=correct,
                       minlength=len(self._sizes))
    has_rows = self._sizes > 0
    return hits[has_rows] / self._sizes[has_rows]

  def __call__(self, params: PyTree) -> dict[str, float]:
    accuracy = self.per_client_accuracy(params)
    return {'local_test_accuracy_mean': float(np.mean(accuracy)),
            'local_test_accuracy_p10': float(np.percentile(accuracy, 10))}


@functools.partial(jax.jit, static_argnums=0)
def _nodes_batch_outputs(apply_fn: ApplyFn, stacked_params: PyTree,
                         x: jax.Array, y: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
  """`_batch_outputs` of every model of `stacked_params` (leading axis =
  models) on one batch: `[models, batch]` losses and correctness."""
  return jax.vmap(_batch_outputs.__wrapped__, in_axes=(None, 0, None, None))(
      apply_fn, stacked_params, x, y)


class NodesEvaluator:
  """Loss and accuracy of many models (the node models of a decentralized
  run) on one split, vmapped over the models, `models_per_call` at a time.

  Examples:
    >>> evaluator = NodesEvaluator(model.apply, test_x, test_y)
    >>> loss, accuracy = evaluator(stacked_params)  # [models] each
  """

  def __init__(self, apply_fn: ApplyFn, x: np.ndarray, y: np.ndarray,
               batch_size: int = 1024, models_per_call: int = 64):
    self._split = _PerExample(apply_fn, x, y, batch_size)
    self._models_per_call = models_per_call

  def __call__(self, stacked_params: PyTree) -> tuple[np.ndarray,
                                                       np.ndarray]:
    """`[models]` mean losses and accuracies."""
    split = self._split
    num_models = jax.tree.leaves(stacked_params)[0].shape[0]
    losses, accuracies = [], []
    for start in range(0, num_models, self._models_per_call):
      chunk = jax.tree.map(
          lambda p: p[start:start + self._models_per_call], stacked_params)
      outputs = jax.device_get([
          _nodes_batch_outputs(split.apply_fn, chunk, x, y)
          for x, y in split.batches])
      loss, correct = (np.concatenate(a, axis=1)[:, :split.num_examples]
                       for a in zip(*outputs))
      losses.append(loss.mean(axis=1, dtype=np.float64))
      accuracies.append(correct.mean(axis=1, dtype=np.float64))
    return np.concatenate(losses), np.concatenate(accuracies)
