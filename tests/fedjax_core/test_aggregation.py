"""The reducers and client-level DP as channel stages: weighted mean,
client-level DP, secure sums and robust rules, against numpy."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.channel import aggregation
from fedjax_core import channel
from fedjax_core.channel import dp
from fedjax_core.engine import placement
from fedjax_core.channel import secagg_protocol

IDS = jnp.array([4, 9, 2, 0], jnp.int32)
IS_REAL = jnp.array([1.0, 1.0, 1.0, 0.0])  # The last client pads.


def _messages(scale=1.0):
  rng = np.random.default_rng(0)
  messages = {'w': (scale * rng.normal(size=(4, 3, 2))).astype(np.float32),
              'b': (scale * rng.normal(size=(4, 2))).astype(np.float32)}
  messages['w'][3] = np.nan  # A padding client's junk must not leak.
  return messages


def _flat(tree, i):
  return np.concatenate([np.ravel(tree['w'][i]), np.ravel(tree['b'][i])])


class _Out(NamedTuple):
  message: Any
  arrived: Any
  metrics: dict
  state: Any  # The state of the chain's only stateful stage, if any.


def _call(stages, messages, weights, secagg=None, state=None):
  """`stages` chained, on the cohort's `messages`; `state` is the only
  stateful stage's."""
  pipeline = channel.chain(*stages)
  template = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape[1:], jnp.float32), messages)
  states = pipeline.init(template, None)
  if state is not None:
    states = {key: state for key in states}
  is_real = IS_REAL > 0
  arrived = is_real if secagg is None else is_real & secagg.arrived
  ctx = channel.RoundContext(IDS, is_real, arrived, secagg,
                             jax.random.key(7))
  packets = channel.Packet(jax.tree.map(jnp.asarray, messages),
                           jnp.asarray(weights), {})
  aggregate, states, metrics = jax.jit(pipeline.aggregate)(states, packets,
                                                           ctx)
  only = next(iter(states.values()), None)
  return _Out(aggregate.mean, aggregate.arrived, metrics, only)


def _dp(config):
  return dp.client_dp_stage(config)


def _secure(settings):
  return aggregation.secure_sum_stage(settings.config(4))


def test_plain_aggregation_is_the_weighted_mean_of_real_clients():
  messages = _messages()
  weights = np.array([1.0, 3.0, 2.0, 0.0], np.float32)
  out = _call([aggregation.mean()], messages, weights)
  want = sum(weights[i] * _flat(messages, i) for i in range(3)) / 6
  got = np.concatenate([np.ravel(out.message['w']), out.message['b']])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_array_equal(out.arrived, [True, True, True, False])


def test_dp_sum_is_clipped_uniform_and_over_the_fixed_denominator():
  messages = _messages(scale=2.0)
  config = dp.DPConfig(clip_norm=1.0, noise_multiplier=0.0,
                       expected_clients=5.0)
  out = _call([_dp(config), aggregation.mean()], messages,
              np.array([10.0, 1.0, 1.0, 0.0], np.float32))
  total = 0
  for i in range(3):
    v = _flat(messages, i)
    total = total + v * min(1.0, 1.0 / np.linalg.norm(v))
  got = np.concatenate([np.ravel(out.message['w']), out.message['b']])
  np.testing.assert_allclose(got, total / 5.0, rtol=1e-5)
  norms = [np.linalg.norm(_flat(messages, i)) for i in range(3)]
  assert float(out.metrics['dp_clipped_fraction']) == pytest.approx(
      np.mean([n > 1.0 for n in norms]))


def test_dp_noise_on_the_sum_has_std_z_times_clip():
  """Zero updates: the estimate is N(0, (z S)^2) / m per coordinate."""
  zeros = {'w': np.zeros((4, 300, 200), np.float32),
           'b': np.zeros((4, 10), np.float32)}
  config = dp.DPConfig(clip_norm=0.5, noise_multiplier=1.5,
                       expected_clients=3.0)
  out = _call([_dp(config), aggregation.mean()], zeros,
              np.ones(4, np.float32))
  values = np.ravel(out.message['w']) * 3.0
  assert values.std() == pytest.approx(1.5 * 0.5, rel=0.01)
  assert abs(values.mean()) < 0.01


def test_adaptive_clip_moves_toward_the_target_quantile():
  """All three real updates are far below the clip, so the unclipped
  fraction is about 1 (noise std 1e-3 / 3) and C shrinks by
  exp(-eta (1 - gamma))."""
  config = dp.DPConfig(clip_norm=100.0, noise_multiplier=0.0,
                       expected_clients=3.0, target_quantile=0.5,
                       clip_learning_rate=0.2, count_stddev=1e-3)
  aggregator = [_dp(config), aggregation.mean()]
  out = _call(aggregator, _messages(), np.ones(4, np.float32))
  assert float(out.metrics['dp_unclipped_fraction']) == pytest.approx(
      1.0, abs=1e-2)
  assert float(out.state['clip_norm']) == pytest.approx(
      100.0 * np.exp(-0.2 * 0.5), rel=1e-2)
  again = _call(aggregator, _messages(), np.ones(4, np.float32),
                state=out.state)
  assert float(again.metrics['dp_clip_norm']) == pytest.approx(
      float(out.state['clip_norm']))


def _secagg_inputs(dropout_fraction=0.0):
  return jax.tree.map(jnp.asarray, secagg_protocol.round_setup(
      seed=0, round_num=3, client_ids=np.asarray(IDS),
      participating=np.asarray(IS_REAL) > 0,
      dropout_fraction=dropout_fraction, threshold=None))


@pytest.mark.parametrize('clip', [2.0, 0.5])
def test_secure_weighted_mean_matches_the_plain_one_within_quantization(
    clip):
  """Also with a clip below 1, which must not clip the weights."""
  messages = _messages(scale=0.1)
  weights = np.array([1.0, 3.0, 2.0, 0.0], np.float32)
  settings = aggregation.SecureAggregation(bits=32, clip=clip)
  out = _call([_secure(settings)], messages, weights,
              secagg=_secagg_inputs())
  want = sum(weights[i] * _flat(messages, i) for i in range(3)) / 6
  got = np.concatenate([np.ravel(out.message['w']), out.message['b']])
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_secure_aggregation_with_dropouts_averages_the_survivors():
  messages = _messages(scale=0.3)
  weights = np.array([1.0, 3.0, 2.0, 0.0], np.float32)
  inputs = _secagg_inputs(dropout_fraction=0.34)
  arrived = np.asarray(inputs.arrived) & (np.asarray(IS_REAL) > 0)
  assert arrived.sum() == 2  # One of the three real clients dropped.
  settings = aggregation.SecureAggregation(bits=32, clip=2.0)
  out = _call([_secure(settings)], messages, weights, secagg=inputs)
  survivors = np.flatnonzero(arrived)
  want = sum(weights[i] * _flat(messages, i) for i in survivors)
  want = want / weights[survivors].sum()
  got = np.concatenate([np.ravel(out.message['w']), out.message['b']])
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_array_equal(out.arrived, arrived)


@pytest.mark.slow
def test_secure_dp_sum_equals_plain_dp_sum_within_quantization():
  messages = _messages(scale=2.0)
  config = dp.DPConfig(clip_norm=1.0, noise_multiplier=0.0,
                       expected_clients=3.0, target_quantile=0.5,
                       count_stddev=1e-3)
  settings = aggregation.SecureAggregation(bits=32, clip=1.0)
  weights = np.ones(4, np.float32)
  plain = _call([_dp(config), aggregation.mean()], messages, weights)
  secure = _call([_dp(config), _secure(settings)], messages, weights,
                 secagg=_secagg_inputs())
  for key in ('w', 'b'):
    np.testing.assert_allclose(secure.message[key], plain.message[key],
                               atol=1e-6)
  np.testing.assert_allclose(secure.state['clip_norm'],
                             plain.state['clip_norm'], rtol=1e-6)
  assert 'secagg_clipped_fraction' in secure.metrics


def test_secure_aggregation_refuses_a_cohort_that_could_overflow():
  settings = aggregation.SecureAggregation(bits=8, clip=1.0, scale=64.0)
  with pytest.raises(ValueError, match='could overflow'):
    settings.config(4)


def _nearest_mean(vectors, f):
  """Nearest-neighbour mixing in numpy: each vector -> the mean of its
  n - f nearest (itself included)."""
  dist = ((vectors[:, None] - vectors[None]) ** 2).sum(-1)
  return np.stack([vectors[np.argsort(row)[:len(vectors) - f]].mean(0)
                   for row in dist])


def _tree_flat(message):
  return np.concatenate([np.ravel(message['w']), np.ravel(message['b'])])


def test_mixing_then_the_mean_keeps_the_algorithms_weights():
  """--nnm with the mean; the padding client's NaN stays out."""
  messages = _messages()
  # Clients 0 and 1 are each other's nearest, so they mix to one vector;
  # weights 1, 1, 4 then tell the weighted mean from the uniform one.
  weights = np.array([1.0, 1.0, 4.0, 0.0], np.float32)
  robust = aggregation.RobustAggregation('mean', num_byzantine=1, nnm=True)
  out = _call([aggregation.robust_stage(robust)], messages, weights)
  mixed = _nearest_mean(np.stack([_flat(messages, i) for i in range(3)]), 1)
  np.testing.assert_allclose(_tree_flat(out.message),
                             (weights[:3, None] * mixed).sum(0) / 6,
                             rtol=1e-5, atol=1e-6)


def test_monna_averages_the_messages_nearest_its_previous_aggregate():
  """The m - f = 2 real clients nearest the state's center are averaged
  uniformly, and the average becomes the next center: from 0, and from a
  center at client 2 (which must then be picked)."""
  messages = _messages()
  weights = np.array([1.0, 1.0, 4.0, 0.0], np.float32)
  robust = aggregation.RobustAggregation('monna', num_byzantine=1)
  aggregator = [aggregation.robust_stage(robust)]
  state = aggregator[0].init(jax.tree.map(lambda x: x[0], messages))
  flat, _ = placement.flatten_clients(jax.tree.map(jnp.asarray, messages))
  vectors = np.stack([_flat(messages, i) for i in range(3)])
  picked = []
  for center, state_center in ((np.zeros(8), state),
                               (vectors[2], flat[2])):
    out = _call(aggregator, messages, weights, state=state_center)
    nearest = np.argsort(((vectors - center) ** 2).sum(1))[:2]
    picked.append(sorted(nearest))
    np.testing.assert_allclose(_tree_flat(out.message),
                               vectors[nearest].mean(0), rtol=1e-5,
                               atol=1e-6)
    next_center, _ = placement.flatten_clients(
        jax.tree.map(lambda x: x[None], out.message))
    np.testing.assert_array_equal(out.state, next_center[0])
  assert picked[0] != picked[1]


def test_median_rule_through_the_aggregator_keeps_the_tree():
  messages = _messages()
  robust = aggregation.RobustAggregation('median', num_byzantine=1)
  out = _call([aggregation.robust_stage(robust)], messages,
              np.array([1.0, 1.0, 1.0, 0.0], np.float32))
  want = np.median(np.stack([_flat(messages, i) for i in range(3)]), axis=0)
  np.testing.assert_allclose(_tree_flat(out.message), want, rtol=1e-6)
  assert out.message['w'].shape == (3, 2)


def test_centered_clipping_carries_its_center_in_the_state():
  messages = _messages()
  weights = np.array([1.0, 3.0, 2.0, 0.0], np.float32)
  robust = aggregation.RobustAggregation('centered_clip', clip_radius=0.3)
  aggregator = [aggregation.robust_stage(robust)]
  template = jax.tree.map(lambda x: x[0], messages)
  state = aggregator[0].init(template)
  np.testing.assert_array_equal(state, np.zeros(8))
  vectors = np.stack([_flat(messages, i) for i in range(3)])
  center = np.zeros(8)
  for _ in range(2):
    out = _call(aggregator, messages, weights, state=state)
    diffs = vectors - center
    scale = np.minimum(1, 0.3 / np.linalg.norm(diffs, axis=1))
    center = center + (weights[:3, None] * diffs * scale[:, None]).sum(
        0) / weights.sum()
    np.testing.assert_allclose(_tree_flat(out.message), center, rtol=1e-5,
                               atol=1e-6)
    state = out.state
