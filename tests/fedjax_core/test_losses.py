"""Losses and accuracy for classes, per-position targets and multi-hot sets,
against plain numpy re-statements."""

import numpy as np
import pytest

from fedjax_core import targets
from fedjax_core.data.client_indices import ClientIndices
from fedjax_core.engine.evaluation import Evaluator, LocalEvaluator
from fedjax_core.toolkit import losses


def _log_softmax(logits):
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _np_sigmoid_xent(logits, positives):
  logits = np.asarray(logits, np.float64)
  return (np.maximum(logits, 0) - logits * positives +
          np.log1p(np.exp(-np.abs(logits))))


def test_kind_of_labels():
  assert targets.kind(np.zeros(3, np.int32)) == targets.CLASSES
  assert targets.kind(np.zeros((3, 4), np.int32)) == targets.TOKENS
  assert targets.kind(np.zeros((3, 4), np.uint8)) == targets.MULTI_LABEL
  with pytest.raises(ValueError, match='no known kind'):
    targets.kind(np.zeros(3, np.float32))


def test_stored_targets_round_trip():
  stored = np.array([4, 0, targets.PAD, targets.unscored(0),
                     targets.unscored(7)])
  np.testing.assert_array_equal(targets.class_of(stored), [4, 0, 0, 0, 7])
  np.testing.assert_array_equal(targets.is_trained(stored),
                                [1, 1, 0, 1, 1])
  np.testing.assert_array_equal(targets.is_scored(stored), [1, 1, 0, 0, 0])


def test_class_labels_unchanged():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(4, 3)).astype(np.float32)
  labels = np.array([0, 2, 1, 1], np.int32)
  mask = np.array([1, 1, 1, 0], np.float32)
  expected = -_log_softmax(logits)[np.arange(4), labels][:3].mean()
  np.testing.assert_allclose(losses.cross_entropy(logits, labels, mask),
                             expected, rtol=1e-6)
  hits = (logits.argmax(-1) == labels)[:3].mean()
  np.testing.assert_allclose(losses.accuracy(logits, labels, mask), hits)


def test_per_position_targets_skip_padding_and_score_in_vocabulary():
  # Two sequences of 3 positions over 4 classes. Row 0: targets 1, OOV(3)
  # trained but unscored, padding. Row 1: targets 2, 0, 3. Row 2 is a
  # padded example (mask 0).
  logits = np.array([[[0., 3., 0., 0.], [0., 0., 0., 2.], [9., 0., 0., 0.]],
                     [[0., 0., 1., 0.], [0., 2., 0., 0.], [0., 0., 0., 5.]],
                     [[5., 0., 0., 0.]] * 3], np.float32)
  labels = np.array([[1, targets.unscored(3), targets.PAD], [2, 0, 3],
                     [0, 0, 0]], np.int32)
  mask = np.array([1., 1., 0.], np.float32)
  nll = -_log_softmax(logits)
  trained = [nll[0, 0, 1], nll[0, 1, 3], nll[1, 0, 2], nll[1, 1, 0],
             nll[1, 2, 3]]
  np.testing.assert_allclose(losses.cross_entropy(logits, labels, mask),
                             np.mean(trained), rtol=1e-6)
  # Scored: row 0 position 0 (correct), row 1 positions 0 (correct),
  # 1 (argmax 1, wrong), 2 (correct): 3 of 4.
  np.testing.assert_allclose(losses.accuracy(logits, labels, mask), 0.75)
  scores = losses.example_scores(logits, labels)
  np.testing.assert_allclose(scores.trained, [2, 3, 3])
  np.testing.assert_allclose(scores.scored, [1, 3, 3])


def test_multi_hot_sets_recall_at_five():
  logits = np.array([[6., 5., 4., 3., 2., 1., 0.],
                     [0., 1., 2., 3., 4., 5., 6.]], np.float32)
  labels = np.array([[1, 0, 0, 0, 0, 1, 0],     # classes 0 (top 5), 5 (not)
                     [1, 1, 0, 0, 0, 0, 1]], np.uint8)  # 6 in, 0 and 1 out
  mask = np.ones(2, np.float32)
  expected = _np_sigmoid_xent(logits, labels).mean(axis=-1).mean()
  np.testing.assert_allclose(losses.cross_entropy(logits, labels, mask),
                             expected, rtol=1e-6)
  # Micro recall@5: (1 + 1) hits of (2 + 3) true classes.
  np.testing.assert_allclose(losses.accuracy(logits, labels, mask), 2 / 5)


def test_mismatched_shapes_name_the_fix():
  with pytest.raises(ValueError, match='per_position=True'):
    losses.cross_entropy(np.zeros((2, 5), np.float32),
                         np.zeros((2, 3), np.int32), np.ones(2))


def _fixed_logits(params, x):
  """A 'model' whose logits are its input: x is `[batch, T, classes]`."""
  del params
  return x


def test_evaluators_pool_over_scored_positions():
  x = np.array([[[0., 3.], [4., 0.]],     # predicts 1, 0
                [[2., 0.], [0., 2.]],     # predicts 0, 1
                [[0., 1.], [0., 1.]]], np.float32)  # predicts 1, 1
  y = np.array([[1, 1], [0, targets.PAD], [targets.unscored(1), 1]],
               np.int32)
  nll = -_log_softmax(x)
  result = Evaluator(_fixed_logits, x, y, batch_size=2)(None)
  np.testing.assert_allclose(
      result['loss'], np.mean([nll[0, 0, 1], nll[0, 1, 1], nll[1, 0, 0],
                               nll[2, 0, 1], nll[2, 1, 1]]), rtol=1e-6)
  # Scored targets: (0,0) hit, (0,1) miss, (1,0) hit, (2,1) hit.
  np.testing.assert_allclose(result['accuracy'], 3 / 4)
  # Client 0 holds rows 0 and 1 (2 of 3 scored hit), client 1 row 2 (1/1).
  local = LocalEvaluator(_fixed_logits, x, y,
                         ClientIndices.from_lists([[0, 1], [2]]))
  np.testing.assert_allclose(local.per_client_accuracy(None), [2 / 3, 1.0])
