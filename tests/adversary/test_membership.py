"""Membership scores and metrics against hand-worked cases and plain
numpy/scipy re-statements."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedjax_core.adversary import membership


def test_roc_metrics_auc_of_hand_worked_rankings():
  members = np.array([True, True, False, False])
  perfect = membership.roc_metrics(np.array([0.9, 0.8, 0.2, 0.1]), members)
  reversed_ = membership.roc_metrics(np.array([0.1, 0.2, 0.8, 0.9]), members)
  # Member-over-non-member pairs: 0.9 > 0.5, 0.9 > 0.1, 0.3 > 0.1 but not
  # 0.3 > 0.5: 3 of 4.
  mixed = membership.roc_metrics(np.array([0.9, 0.3, 0.5, 0.1]), members)
  assert perfect['auc'] == 1.0
  assert reversed_['auc'] == 0.0
  assert mixed['auc'] == pytest.approx(0.75)


def test_roc_metrics_tpr_at_low_fpr_by_hand():
  # 1000 non-members scored 0..999; 10 members: 5 above every non-member,
  # 3 just under the top non-member (caught at 1 false positive, FPR 0.1%),
  # 1 just under the tenth (caught at 10 false positives, FPR 1%), 1 low.
  nonmembers = np.arange(1000.0)
  members = np.array([2000, 2001, 2002, 2003, 2004, 998.5, 998.6, 998.7,
                      989.5, 500.0])
  scores = np.concatenate([members, nonmembers])
  is_member = np.arange(1010) < 10
  got = membership.roc_metrics(scores, is_member)
  assert got['tpr_at_0.1%_fpr'] == pytest.approx(0.8)
  assert got['tpr_at_1%_fpr'] == pytest.approx(0.9)
  # At FPR 0 only the top 5 are caught: the TPR at FPR <= 0.1% is not that.
  assert got['tpr_at_0.1%_fpr'] > 0.5


def test_roc_metrics_needs_both_classes():
  with pytest.raises(ValueError, match='both members and non-members'):
    membership.roc_metrics(np.array([0.1, 0.2]), np.array([True, True]))


def test_logit_scale_matches_numpy_and_is_stable_near_one():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 4))
  labels = rng.integers(0, 4, 6)
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  p_true = p[np.arange(6), labels]
  np.testing.assert_allclose(
      membership.logit_scale(jnp.asarray(logits, jnp.float32),
                             jnp.asarray(labels)),
      np.log(p_true / (1 - p_true)), rtol=1e-5, atol=1e-5)
  # p = e^40 / (e^40 + 2) is 1 in float32, so log(p / (1 - p)) would be
  # inf; the exact value is 40 - log 2.
  confident = jnp.array([[40.0, 0.0, 0.0]])
  got = membership.logit_scale(confident, jnp.array([0]))
  assert np.isfinite(got).all()
  np.testing.assert_allclose(got, [40 - np.log(2)], rtol=1e-6)


def _linear_apply(params, x):
  return x.reshape(len(x), -1) @ params['w']


def test_example_confidences_match_numpy_across_padded_batches():
  rng = np.random.default_rng(1)
  params = {'w': rng.normal(size=(3, 4)).astype(np.float32)}
  x = rng.normal(size=(5, 3)).astype(np.float32)
  y = rng.integers(0, 4, 5)
  logits = x @ params['w']
  p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
  p_true = p[np.arange(5), y]
  # 5 examples in batches of 2: the last batch is padded.
  got = membership.example_confidences(_linear_apply, params, x, y,
                                       batch_size=2)
  np.testing.assert_allclose(got.probability, p_true, rtol=1e-5)
  np.testing.assert_allclose(got.loss, -np.log(p_true), rtol=1e-5)
  np.testing.assert_allclose(got.scaled, np.log(p_true / (1 - p_true)),
                             rtol=1e-4, atol=1e-5)
  # Two models at once equal each one alone.
  stacked = {'w': np.stack([params['w'], 2 * params['w']])}
  runs = membership.run_confidences(_linear_apply, stacked, x, y,
                                    batch_size=2)
  second = membership.example_confidences(
      _linear_apply, {'w': 2 * params['w']}, x, y, batch_size=4)
  assert runs.loss.shape == (2, 5)
  np.testing.assert_allclose(runs.loss[0], got.loss, rtol=1e-6)
  np.testing.assert_allclose(runs.scaled[1], second.scaled, rtol=1e-5)


def test_loss_threshold_scores_are_negated_losses():
  np.testing.assert_array_equal(
      membership.loss_threshold_scores(np.array([0.1, 2.0])), [-0.1, -2.0])


def _shadows(seed=2, runs=8, n=5):
  rng = np.random.default_rng(seed)
  in_mask = rng.permuted(np.repeat(np.arange(runs)[:, None], n, 1),
                         axis=0) < runs // 2
  shadow = rng.normal(size=(runs, n)) + 2.0 * in_mask
  return rng.normal(size=n) + 1.0, shadow, in_mask


def _fit_by_loops(shadow, mask, fix_variance):
  """Per example: the plain mean and (population) std of its entries where
  `mask` holds; fixed: the root mean square of all residuals."""
  n = shadow.shape[1]
  values = [shadow[mask[:, j], j] for j in range(n)]
  means = np.array([v.mean() for v in values])
  if fix_variance:
    residuals = np.concatenate([v - m for v, m in zip(values, means)])
    return means, np.full(n, np.sqrt(np.mean(residuals ** 2)))
  return means, np.array([v.std() for v in values])


@pytest.mark.parametrize('fix_variance', [False, True])
def test_lira_online_matches_scipy(fix_variance):
  target, shadow, in_mask = _shadows()
  mean_in, std_in = _fit_by_loops(shadow, in_mask, fix_variance)
  mean_out, std_out = _fit_by_loops(shadow, ~in_mask, fix_variance)
  want = (stats.norm.logpdf(target, mean_in, std_in)
          - stats.norm.logpdf(target, mean_out, std_out))
  got = membership.lira_online(target, shadow, in_mask, fix_variance)
  np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.parametrize('fix_variance', [False, True])
def test_lira_offline_matches_scipy(fix_variance):
  target, shadow, in_mask = _shadows(seed=3)
  mean_out, std_out = _fit_by_loops(shadow, ~in_mask, fix_variance)
  want = stats.norm.logcdf(target, mean_out, std_out)
  got = membership.lira_offline(target, shadow, in_mask, fix_variance)
  np.testing.assert_allclose(got, want, rtol=1e-9)
  # The in-models' confidences play no part offline.
  moved = np.where(in_mask, shadow + 100.0, shadow)
  np.testing.assert_allclose(
      membership.lira_offline(target, moved, in_mask, fix_variance), want,
      rtol=1e-5)


def test_lira_rejects_examples_without_out_models_and_bad_shapes():
  target, shadow, in_mask = _shadows()
  in_mask[:, 0] = True
  with pytest.raises(ValueError, match='no shadow model'):
    membership.lira_offline(target, shadow, in_mask)
  with pytest.raises(ValueError, match='num_shadows, n'):
    membership.lira_online(target[:3], shadow, in_mask)

