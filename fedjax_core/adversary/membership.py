"""Membership inference: does a model reveal that an example was in its
training set? (A client's update: `fedjax_core.adversary.shadow_runs`.)

Scores are "higher means member"; `roc_metrics` turns them into the
figures of the literature (AUC and TPR at a low FPR).

  * Loss threshold: Yeom, Giacomelli, Fredrikson and Jha, CSF 2018,
    "Privacy Risk in Machine Learning: Analyzing the Connection to
    Overfitting". An example is called a member when its loss is below a
    threshold; the score is the negated loss, so every threshold is one
    point of the ROC curve.
  * LiRA: Carlini, Chien, Nasr, Song, Terzis and Tramer, IEEE S&P 2022,
    "Membership Inference Attacks From First Principles". Shadow models,
    each trained on a random half of a pool, give per example the
    distribution of the logit-scaled confidence
    `phi = log p_y - log sum_{y' != y} p_y'` when the example was in
    ("in") and when it was out ("out") of training; each is fitted with a
    Gaussian. The online attack scores the target's confidence by the
    likelihood ratio `log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out)`;
    the offline attack, with out-models only, by the one-sided
    `log Pr[Z < phi]`, `Z ~ N(mu_out, s_out)`. With `fix_variance` the
    variance is one pooled estimate over all examples (the paper's fixed
    variance, for few shadow models): the mean squared deviation of every
    shadow confidence from its example's mean, separately for in and out.
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import stats
from sklearn import metrics

from fedjax_core.data.federated import as_float

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]

# The FPR levels `roc_metrics` reports the TPR at, and their keys.
FPR_LEVELS = {'tpr_at_0.1%_fpr': 1e-3, 'tpr_at_1%_fpr': 1e-2}
# Keeps a fitted standard deviation positive (as the paper's code does).
_MIN_STD = 1e-30


class Confidences(NamedTuple):
  """Per-example outputs of a model on labelled examples.

  Attributes:
    probability: `[n]` the softmax probability of the true class.
    loss: `[n]` the cross-entropy loss, `-log probability`.
    scaled: `[n]` the logit-scaled confidence `logit_scale(logits, y)`.
  """

  probability: np.ndarray
  loss: np.ndarray
  scaled: np.ndarray


class MembershipScores(NamedTuple):
  """Attack scores of a set of examples and the truth to judge them by.

  Attributes:
    scores: `[n]` higher means more likely a member.
    is_member: `[n]` bool, whether each example was trained on.
  """

  scores: np.ndarray
  is_member: np.ndarray


def logit_scale(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """`log(p / (1 - p))` of the true class's softmax probability `p`,
  computed from the logits as `z_y - logsumexp_{y' != y} z_y'`, which stays
  finite where `p` rounds to 1.

  Args:
    logits: `[n, num_classes]` logits.
    labels: `[n]` int true classes.

  Returns:
    `[n]` the logit-scaled confidences.

  Examples:
    >>> logit_scale(jnp.array([[40., 0., 0.]]), jnp.array([0]))  # 40 - log 2
  """
  num_classes = logits.shape[-1]
  true = jax.nn.one_hot(labels, num_classes, dtype=bool)
  z_true = jnp.sum(jnp.where(true, logits, 0.0), axis=-1)
  others = jax.nn.logsumexp(jnp.where(true, -jnp.inf, logits), axis=-1)
  return z_true - others


def _confidences(apply_fn: ApplyFn, params: PyTree, x: jax.Array,
                 y: jax.Array) -> tuple[jax.Array, ...]:
  logits = apply_fn(params, as_float(x)).astype(jnp.float32)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return jnp.exp(-loss), loss, logit_scale(logits, y)


_one_model = jax.jit(_confidences, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _stacked_models(apply_fn: ApplyFn, params: PyTree, x: jax.Array,
                    y: jax.Array) -> tuple[jax.Array, ...]:
  return jax.vmap(functools.partial(_confidences, apply_fn),
                  in_axes=(0, None, None))(params, x, y)


def _in_batches(fn, apply_fn: ApplyFn, params: PyTree, x: np.ndarray,
                y: np.ndarray, batch_size: int) -> Confidences:
  """`fn`'s outputs over every example, in batches of `batch_size` (the
  last one padded, so that every batch has one shape), joined on the last
  axis."""
  y = np.asarray(y)
  if y.ndim != 1:
    raise ValueError(f'Membership scores need one class per example; got '
                     f'labels of shape {y.shape}.')
  n = len(y)
  batch_size = min(batch_size, n)
  pad = -n % batch_size
  x = np.concatenate([x, np.repeat(x[:1], pad, axis=0)])
  y = np.concatenate([y, np.repeat(y[:1], pad)])
  parts = [fn(apply_fn, params, x[i:i + batch_size], y[i:i + batch_size])
           for i in range(0, len(y), batch_size)]
  return Confidences(*(
      np.concatenate([np.asarray(p[j]) for p in parts], axis=-1)[..., :n]
      for j in range(3)))


def example_confidences(apply_fn: ApplyFn, params: PyTree, x: np.ndarray,
                        y: np.ndarray, batch_size: int = 512
                        ) -> Confidences:
  """The model's true-class probability, loss and logit-scaled confidence
  on every example, computed in jitted batches of `batch_size`.

  Args:
    apply_fn: `(params, x) -> [batch, num_classes]` logits.
    params: the model's parameters.
    x: `[n, *example_shape]` inputs (uint8 images are scaled to [0, 1]).
    y: `[n]` int class labels.
    batch_size: examples per compiled call.

  Returns:
    The `Confidences` of the examples, `[n]` numpy arrays.

  Examples:
    >>> conf = example_confidences(model.apply, params, test_x, test_y)
    >>> roc_metrics(loss_threshold_scores(conf.loss), is_member)
  """
  return _in_batches(_one_model, apply_fn, params, x, y, batch_size)


def run_confidences(apply_fn: ApplyFn, stacked_params: PyTree,
                    x: np.ndarray, y: np.ndarray, batch_size: int = 512
                    ) -> Confidences:
  """`example_confidences` of several models at once (vmapped), e.g. the
  shadow runs of `fedjax_core.adversary.shadow_runs.train_runs`.

  Args:
    apply_fn: `(params, x) -> logits`.
    stacked_params: the models' params, stacked on a leading `[runs]` axis.
    x: `[n, *example_shape]` inputs.
    y: `[n]` int class labels.
    batch_size: examples per compiled call.

  Returns:
    The `Confidences`, `[runs, n]` numpy arrays.

  Examples:
    >>> conf = run_confidences(model.apply, runs.params, pool_x, pool_y)
    >>> lira_online(conf.scaled[0], conf.scaled[1:], masks[1:])
  """
  return _in_batches(_stacked_models, apply_fn, stacked_params, x, y,
                     batch_size)


def loss_threshold_scores(losses: np.ndarray) -> np.ndarray:
  """Yeom et al.'s loss threshold attack: the score is the negated loss.

  Examples:
    >>> loss_threshold_scores(np.array([0.1, 2.0]))  # [-0.1, -2.0]
  """
  return -np.asarray(losses)


def _gaussian_fit(shadow: np.ndarray, mask: np.ndarray, fix_variance: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Per-example mean and standard deviation of the `shadow` entries where
  `mask` holds (`[runs, n]` each); with `fix_variance` one pooled
  deviation for all examples."""
  counts = mask.sum(0)
  if np.any(counts == 0):
    raise ValueError(
        f'{int(np.sum(counts == 0))} examples have no shadow model on this '
        'side (in or out); train more shadow runs or use balanced '
        'inclusion masks (shadow_runs.inclusion_masks).')
  mean = np.where(mask, shadow, 0.0).sum(0) / counts
  squares = np.where(mask, (shadow - mean) ** 2, 0.0)
  if fix_variance:
    return mean, np.full_like(mean, np.sqrt(squares.sum() / counts.sum()))
  return mean, np.sqrt(squares.sum(0) / counts)


def _check_shapes(target: np.ndarray, shadow: np.ndarray,
                  in_mask: np.ndarray) -> None:
  if shadow.ndim != 2 or shadow.shape != in_mask.shape or (
      target.shape != shadow.shape[1:]):
    raise ValueError(
        'LiRA needs target confidences [n] and shadow confidences and '
        f'in-masks [num_shadows, n]; got {target.shape}, {shadow.shape} and '
        f'{in_mask.shape}.')


def lira_online(target: np.ndarray, shadow: np.ndarray, in_mask: np.ndarray,
                fix_variance: bool = False) -> np.ndarray:
  """LiRA's online score of each example: the log likelihood ratio of the
  target's confidence under the in and the out Gaussian.

  Args:
    target: `[n]` the target model's logit-scaled confidences.
    shadow: `[num_shadows, n]` the shadow models' logit-scaled confidences.
    in_mask: `[num_shadows, n]` bool, whether each shadow trained on each
      example.
    fix_variance: one pooled variance for all examples instead of one per
      example.

  Returns:
    `[n]` scores, higher meaning member.

  Examples:
    >>> scores = lira_online(conf[0], conf[1:], masks[1:])
    >>> roc_metrics(scores, masks[0])['auc']
  """
  target, shadow = np.asarray(target, np.float64), np.asarray(shadow,
                                                              np.float64)
  in_mask = np.asarray(in_mask, bool)
  _check_shapes(target, shadow, in_mask)
  mean_in, std_in = _gaussian_fit(shadow, in_mask, fix_variance)
  mean_out, std_out = _gaussian_fit(shadow, ~in_mask, fix_variance)
  return (stats.norm.logpdf(target, mean_in, std_in + _MIN_STD)
          - stats.norm.logpdf(target, mean_out, std_out + _MIN_STD))


def lira_offline(target: np.ndarray, shadow: np.ndarray, in_mask: np.ndarray,
                 fix_variance: bool = False) -> np.ndarray:
  """LiRA's offline score of each example: `log Pr[Z < target]` for
  `Z ~ N(mu_out, s_out)` fitted to the shadows that did not train on it
  (the one-sided test; shadows that trained on it are ignored).

  Args:
    target: `[n]` the target model's logit-scaled confidences.
    shadow: `[num_shadows, n]` the shadow models' logit-scaled confidences.
    in_mask: `[num_shadows, n]` bool, whether each shadow trained on each
      example.
    fix_variance: one pooled variance for all examples.

  Returns:
    `[n]` scores, higher meaning member.

  Examples:
    >>> scores = lira_offline(conf[0], conf[1:], masks[1:])
  """
  target, shadow = np.asarray(target, np.float64), np.asarray(shadow,
                                                              np.float64)
  in_mask = np.asarray(in_mask, bool)
  _check_shapes(target, shadow, in_mask)
  mean_out, std_out = _gaussian_fit(shadow, ~in_mask, fix_variance)
  return stats.norm.logcdf(target, mean_out, std_out + _MIN_STD)


def roc_metrics(scores: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
  """AUC and TPR at 0.1% and 1% FPR of membership scores.

  The TPR at a level is the largest TPR of the ROC curve at an FPR of at
  most the level (with few non-members only FPR 0 qualifies).

  Args:
    scores: `[n]` attack scores, higher meaning member.
    is_member: `[n]` bool truth; both classes must occur.

  Returns:
    `{'auc', 'tpr_at_0.1%_fpr', 'tpr_at_1%_fpr'}` as floats.

  Examples:
    >>> roc_metrics(np.array([0.9, 0.1]), np.array([True, False]))['auc']
    1.0
  """
  is_member = np.asarray(is_member, bool)
  if is_member.all() or not is_member.any():
    raise ValueError('ROC metrics need both members and non-members among '
                     'the scored examples.')
  fpr, tpr, _ = metrics.roc_curve(is_member, np.asarray(scores))
  out = {'auc': float(metrics.auc(fpr, tpr))}
  for key, level in FPR_LEVELS.items():
    out[key] = float(tpr[fpr <= level].max())
  return out


