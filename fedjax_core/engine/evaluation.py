"""Evaluation of a global model (or of many node models) on held-out data.

`Evaluator` scores the dataset's test split; `NodesEvaluator` scores many
models on it at once (a decentralized run's node models). `LocalEvaluator`
scores each client's own held-out rows and reports how the global model
serves the clients: the mean and the 10th percentile of the per-client
accuracy (the fairness view of Li et al., 2020, "Fair Resource Allocation
in Federated Learning", ICLR). Losses and accuracies pool the targets of
the examples scored (`losses.example_scores`): one per example, or the
scored positions of sequences.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_core.data.client_indices import ClientIndices
from fedjax_core.data.federated import as_float
from fedjax_core.toolkit import losses

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


@functools.partial(jax.jit, static_argnums=0)
def _batch_outputs(apply_fn: ApplyFn, params: PyTree, x: jax.Array,
                   y: jax.Array) -> losses.ExampleScores:
  """Per-example scores of one batch. Jitted at module level, so evaluators
  of one model and batch shape share a compile (the runs of `VmappedRuns`
  each have their own)."""
  return losses.example_scores(apply_fn(params, as_float(x)), y)


def _padded(a: np.ndarray, rows: int) -> np.ndarray:
  return np.concatenate([a, np.zeros((rows,) + a.shape[1:], a.dtype)])


class _PerExample:
  """Per-example scores (`losses.ExampleScores`) of a fixed split, in
  padded batches.

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
    x, y = _padded(x, pad), _padded(y, pad)
    self.batches = [
        (jnp.asarray(x[i:i + batch_size]), jnp.asarray(y[i:i + batch_size]))
        for i in range(0, len(x), batch_size)]
    self.num_examples = num_batches * batch_size - pad
    self.apply_fn = apply_fn

  def __call__(self, params: PyTree) -> losses.ExampleScores:
    """`[num_examples]` scores of each kind, in split order."""
    outputs = jax.device_get([_batch_outputs(self.apply_fn, params, x, y)
                              for x, y in self.batches])
    return losses.ExampleScores(*(
        np.concatenate(a)[:self.num_examples] for a in zip(*outputs)))


def _ratio(total: np.ndarray, count: np.ndarray, axis=None) -> np.ndarray:
  """sum(total) / sum(count) in float64 (the mean when counts are ones)."""
  return (np.sum(total, axis=axis, dtype=np.float64) /
          np.sum(count, axis=axis, dtype=np.float64))


class Evaluator:
  """Loss and accuracy of `apply_fn` on a fixed split, pooled over its
  targets (examples, or non-padded positions of sequences).

  Examples:
    >>> evaluator = Evaluator(model.apply, test_x, test_y, batch_size=512)
    >>> evaluator(params)  # {'loss': ..., 'accuracy': ...}
  """

  def __init__(self, apply_fn: ApplyFn, x: np.ndarray, y: np.ndarray,
               batch_size: int = 1024):
    self._per_example = _PerExample(apply_fn, x, y, batch_size)

  def __call__(self, params: PyTree) -> dict[str, float]:
    scores = self._per_example(params)
    return {'loss': float(_ratio(scores.loss, scores.trained)),
            'accuracy': float(_ratio(scores.correct, scores.scored))}


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
    self._num_clients = len(local_test_indices)

  def per_client_accuracy(self, params: PyTree) -> np.ndarray:
    """Accuracy of every client with scored held-out targets, in client
    order."""
    scores = self._per_example(params)
    hits, scored = (np.bincount(self._client_of_row, weights=a,
                                minlength=self._num_clients)
                    for a in (scores.correct, scores.scored))
    has_rows = scored > 0
    return hits[has_rows] / scored[has_rows]

  def __call__(self, params: PyTree) -> dict[str, float]:
    accuracy = self.per_client_accuracy(params)
    return {'local_test_accuracy_mean': float(np.mean(accuracy)),
            'local_test_accuracy_p10': float(np.percentile(accuracy, 10))}


@functools.partial(jax.jit, static_argnums=0)
def _nodes_batch_outputs(apply_fn: ApplyFn, stacked_params: PyTree,
                         x: jax.Array, y: jax.Array) -> losses.ExampleScores:
  """`_batch_outputs` of every model of `stacked_params` (leading axis =
  models) on one batch: `[models, batch]` scores."""
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
    model_losses, accuracies = [], []
    for start in range(0, num_models, self._models_per_call):
      chunk = jax.tree.map(
          lambda p: p[start:start + self._models_per_call], stacked_params)
      outputs = jax.device_get([
          _nodes_batch_outputs(split.apply_fn, chunk, x, y)
          for x, y in split.batches])
      scores = losses.ExampleScores(*(
          np.concatenate(a, axis=1)[:, :split.num_examples]
          for a in zip(*outputs)))
      model_losses.append(_ratio(scores.loss, scores.trained, axis=1))
      accuracies.append(_ratio(scores.correct, scores.scored, axis=1))
    return np.concatenate(model_losses), np.concatenate(accuracies)
