"""Channel stages: the chain's build-time checks, and compositions the old
aggregator could not express, each against a numpy re-statement."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.channel import aggregation
from fedjax_core.channel import attacks
from fedjax_core import channel
from fedjax_core.channel import dp
from fedjax_core import errors
from fedjax_core.channel import privacy
from fedjax_core.channel import rqm
from fedjax_core.channel import secagg_protocol
from fedjax_core import streams
from fedjax_core.channel import uplink
from fedjax_core.channel import assembly

IDS = jnp.array([4, 9, 2, 7, 1, 0], jnp.int32)
IS_REAL = np.array([True, True, True, True, True, False])  # One pads.
ROUND_KEY = jax.random.key(11)


def _messages(scale=1.0, seed=0):
  rng = np.random.default_rng(seed)
  return {'w': (scale * rng.normal(size=(6, 3, 2))).astype(np.float32),
          'b': (scale * rng.normal(size=(6, 2))).astype(np.float32)}


def _flat(tree):
  """`[cohort, 8]` numpy rows of a stacked message tree (w then b)."""
  return np.concatenate([np.asarray(tree['w']).reshape(len(IDS), -1),
                         np.asarray(tree['b'])], axis=1)


def _tree(row):
  return {'w': row[:6].reshape(3, 2), 'b': row[6:]}


def _template():
  return {'w': jax.ShapeDtypeStruct((3, 2), jnp.float32),
          'b': jax.ShapeDtypeStruct((2,), jnp.float32)}


def _round(pipeline, messages, weights, state=None, client_states=None,
           secagg=None):
  """One round of `pipeline` on the cohort's `messages`: the client stages
  vmapped (client keys folded from the round key), then the cohort side.
  Returns the aggregate, the new states and the metrics."""
  if state is None:
    state = pipeline.init(_template(), None)
  if client_states is None:
    one = pipeline.client_init(_template())
    client_states = jax.tree.map(
        lambda x: jnp.broadcast_to(x, (len(IDS),) + jnp.shape(x)), one)
  weights = jnp.asarray(weights, jnp.float32) * IS_REAL
  packets = channel.Packet(jax.tree.map(jnp.asarray, messages), weights, {})
  client_keys = jax.vmap(lambda i: jax.random.fold_in(ROUND_KEY, i))(IDS)
  packets, client_states, _ = jax.vmap(pipeline.client)(
      client_states, packets, client_keys)
  is_real = jnp.asarray(IS_REAL)
  arrived = is_real if secagg is None else is_real & secagg.arrived
  ctx = channel.RoundContext(IDS, is_real, arrived, secagg, ROUND_KEY)
  aggregate, state, metrics = jax.jit(pipeline.aggregate)(state, packets,
                                                          ctx)
  return aggregate, state, client_states, metrics


def _secagg_inputs():
  return jax.tree.map(jnp.asarray, secagg_protocol.round_setup(
      seed=0, round_num=1, client_ids=np.asarray(IDS), participating=IS_REAL,
      dropout_fraction=0.0, threshold=None))


def _clip(v, bound):
  return v * min(1.0, bound / np.linalg.norm(v))


def _top(v, k):
  """The k largest magnitudes of v (stable on ties), zeros elsewhere."""
  out = np.zeros_like(v)
  keep = np.argsort(-np.abs(v), kind='stable')[:k]
  out[keep] = v[keep]
  return out


# --- Build-time checks -------------------------------------------------------


def test_chain_refuses_stages_out_of_phase_order():
  with pytest.raises(errors.SettingError, match='cannot follow'):
    channel.chain(aggregation.mean(), uplink.momentum_stage(0.9))


def test_chain_needs_exactly_one_reducer():
  with pytest.raises(errors.SettingError, match='no reduce stage'):
    channel.chain(uplink.momentum_stage(0.9))
  secure = aggregation.secure_sum_stage(
      aggregation.SecureAggregation().config(6))
  robust = aggregation.robust_stage(aggregation.RobustAggregation('median'))
  with pytest.raises(errors.SettingError, match='in the clear'):
    channel.chain(secure, robust)


def test_dp_noise_needs_a_reducer_with_a_bounded_sensitivity():
  stage = dp.client_dp_stage(dp.DPConfig(1.0, 1.0, expected_clients=5.0))
  robust = aggregation.robust_stage(aggregation.RobustAggregation('median'))
  with pytest.raises(errors.SettingError, match='provides sum'):
    channel.chain(stage, robust)
  with pytest.raises(errors.SettingError, match='bounded sensitivity'):
    assembly.check_robust_dp(aggregation.RobustAggregation('krum'), 1.0)
  with pytest.raises(errors.SettingError, match='radius is the DP clip'):
    assembly.check_robust_dp(
        aggregation.RobustAggregation('centered_clip', clip_radius=0.5), 1.0)


def test_two_privacy_accountants_are_refused():
  settings = rqm.RQMSettings()
  accountant = rqm.RQMPrivacy(settings, num_coordinates=8)
  stage = dp.client_dp_stage(dp.DPConfig(1.0, 1.0, expected_clients=5.0),
                             accountant)
  with pytest.raises(errors.SettingError, match='account privacy'):
    channel.chain(rqm.rqm_stage(settings, accountant), stage,
                  aggregation.mean())


# --- Compositions --------------------------------------------------------------


@pytest.mark.slow
def test_dp_brem_momentum_centered_clipping_and_calibrated_noise():
  """DP-BREM (Gu et al. 2023): client momentum, then centered clipping
  with one iteration (centering + DP clipping + sum over the fixed m), two
  rounds, without noise against numpy; then the noise's std on zero
  messages is z * tau / m, tau being the clip norm (the sum's
  sensitivity)."""
  beta, tau, m = 0.8, 0.7, 5.0
  client_dp = privacy.ClientLevelPrivacy(
      privacy.ClientDPSettings(clip_norm=tau, noise_multiplier=0.0),
      num_clients=5, clients_per_round=5, participation='fixed',
      num_rounds=2)
  pipeline = assembly.build_chain(
      robust=aggregation.RobustAggregation('centered_clip', clip_radius=tau,
                                           momentum=beta),
      uplink=uplink.Uplink(momentum=beta), client_dp=client_dp,
      clients_per_round=5)
  assert [s.name for s in pipeline.stages] == [
      'client momentum', 'centering', 'client-level DP', 'mean']
  rounds = [_messages(seed=1), _messages(seed=2)]
  state = client_states = None
  momenta, center = None, np.zeros(8)
  for messages in rounds:
    aggregate, state, client_states, _ = _round(
        pipeline, messages, np.full(6, 3.0), state, client_states)
    x = _flat(messages)[:5]
    momenta = x if momenta is None else beta * momenta + (1 - beta) * x
    center = center + sum(_clip(mi - center, tau) for mi in momenta) / m
    np.testing.assert_allclose(_flat(jax.tree.map(
        lambda a: jnp.broadcast_to(a, (6,) + a.shape), aggregate.mean))[0],
                               center, rtol=1e-5, atol=1e-6)

  noisy = dp.DPConfig(clip_norm=tau, noise_multiplier=2.0, expected_clients=m)
  pipeline = channel.chain(aggregation.centering_stage(),
                           dp.client_dp_stage(noisy), aggregation.mean())
  big = {'w': jnp.zeros((6, 400, 100)), 'b': jnp.zeros((6, 10))}
  template = {'w': jax.ShapeDtypeStruct((400, 100), jnp.float32),
              'b': jax.ShapeDtypeStruct((10,), jnp.float32)}
  ctx = channel.RoundContext(IDS, jnp.asarray(IS_REAL), jnp.asarray(IS_REAL),
                             None, ROUND_KEY)
  aggregate, _, _ = pipeline.aggregate(
      pipeline.init(template, None),
      channel.Packet(big, jnp.ones(6), {}), ctx)
  assert float(np.std(aggregate.mean['w'])) == pytest.approx(
      2.0 * tau / m, rel=0.02)


def _rqm_settings():
  return rqm.RQMSettings(clip=1.0, num_levels=5, keep_probability=0.6,
                         extension=0.5, delta=1e-5)


@pytest.mark.slow
def test_rqm_stage_quantizes_each_message_onto_the_levels_unbiasedly():
  settings = _rqm_settings()
  levels = rqm.rqm_levels(clip=1.0, num_levels=5, extension=0.5)
  pipeline = channel.chain(rqm.rqm_stage(settings), aggregation.mean())
  messages = _messages(scale=0.6)
  aggregate, _, _, _ = _round(pipeline, messages, np.ones(6))
  one = channel.Packet({'x': jnp.full((20000,), 0.3)}, jnp.float32(1), {})
  out, _, _ = pipeline.client(((),), one, jax.random.key(3))
  values = np.asarray(out.message['x'])
  assert set(np.unique(values)) <= set(levels.astype(np.float32))
  assert values.mean() == pytest.approx(0.3, abs=0.02)
  assert np.isfinite(_flat(jax.tree.map(
      lambda a: jnp.broadcast_to(a, (6,) + a.shape), aggregate.mean))).all()


def test_rqm_under_secure_aggregation_sums_the_same_quantized_messages():
  """The same client keys give the same quantized messages; secure
  aggregation's sum of them equals the plain mean within its fixed-point
  quantization, and both are the numpy mean of the quantized rows."""
  settings = _rqm_settings()
  messages = _messages(scale=0.6)
  weights = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 0.0])
  plain = channel.chain(rqm.rqm_stage(settings), aggregation.mean())
  secure = channel.chain(
      rqm.rqm_stage(settings),
      aggregation.secure_sum_stage(
          aggregation.SecureAggregation(clip=1.5).config(6)))
  quantized = jax.vmap(plain.client)(
      ((),), channel.Packet(jax.tree.map(jnp.asarray, messages),
                         jnp.asarray(weights), {}),
      jax.vmap(lambda i: jax.random.fold_in(ROUND_KEY, i))(IDS))[0]
  rows = _flat(quantized.message)[:5]
  want = (weights[:5, None] * rows).sum(0) / weights[:5].sum()
  got_plain, _, _, _ = _round(plain, messages, weights)
  got_secure, _, _, metrics = _round(secure, messages, weights,
                                     secagg=_secagg_inputs())
  for got, atol in ((got_plain, 1e-6), (got_secure, 1e-5)):
    flat = np.concatenate([np.ravel(got.mean['w']), got.mean['b']])
    np.testing.assert_allclose(flat, want, rtol=1e-5, atol=atol)
  assert 'secagg_clipped_fraction' in metrics


def test_rqm_accountant_composes_the_rounds_renyi_dp():
  settings = _rqm_settings()
  accountant = rqm.RQMPrivacy(settings, num_coordinates=8)
  want, _ = rqm.rqm_epsilon(num_compositions=3, target_delta=1e-5,
                            num_coordinates=8, **settings.mechanism())
  assert accountant.epsilon(3) == pytest.approx(want, rel=1e-9)
  assert accountant.epsilon(0) == 0.0
  assert 0 < accountant.epsilon(1) < accountant.epsilon(3)


@pytest.mark.slow
def test_compression_under_secure_aggregation():
  """Top-k of each layer (k = ceil(0.5 d): 3 of w's 6, 1 of b's 2), then
  the secure weighted mean of the decoded messages."""
  compress = uplink.Uplink('topk', fraction=0.5)
  pipeline = channel.chain(
      uplink.compression_stage(compress),
      aggregation.secure_sum_stage(
          aggregation.SecureAggregation(clip=3.0).config(6)))
  messages = _messages()
  weights = np.array([2.0, 1.0, 1.0, 3.0, 1.0, 0.0])
  aggregate, _, client_states, metrics = _round(
      pipeline, messages, weights, secagg=_secagg_inputs())
  rows = _flat(messages)[:5]
  decoded = np.stack([np.concatenate([_top(r[:6], 3), _top(r[6:], 1)])
                      for r in rows])
  want = (weights[:5, None] * decoded).sum(0) / weights[:5].sum()
  got = np.concatenate([np.ravel(aggregate.mean['w']), aggregate.mean['b']])
  np.testing.assert_allclose(got, want, atol=1e-5)
  # Top-k keeps what it dropped as the client's residual.
  np.testing.assert_allclose(_flat(client_states[0])[:5], rows - decoded,
                             atol=1e-6)


def test_attack_robust_rule_and_compression():
  """Sign compression (per layer: mean |v| times sign v), then sign
  flipping by 2 of the 5 real clients (as the server receives their
  compressed messages), then the coordinate-wise median of the five."""
  attack = attacks.Attack('sign_flip', fraction=0.4, scale=3.0)
  pipeline = assembly.build_chain(
      uplink=uplink.Uplink('sign'), attack=attack,
      robust=aggregation.RobustAggregation('median', num_byzantine=2),
      clients_per_round=5)
  assert [s.phase for s in pipeline.stages] == ['client', 'cohort', 'reduce']
  messages = _messages()
  aggregate, _, _, metrics = _round(pipeline, messages, np.ones(6))
  rows = _flat(messages)[:5]

  def sign(v):
    return np.abs(v).mean() * np.sign(v)

  sent = np.stack([np.concatenate([sign(r[:6]), sign(r[6:])]) for r in rows])
  byzantine = np.asarray(attacks.byzantine_mask(
      jax.random.fold_in(jax.random.fold_in(ROUND_KEY, streams.ATTACK),
                         streams.BYZANTINE_MASK), jnp.asarray(IS_REAL),
      0.4))[:5]
  assert byzantine.sum() == 2 and metrics['byzantine_clients'] == 2
  sent[byzantine] *= -3.0
  got = np.concatenate([np.ravel(aggregate.mean['w']), aggregate.mean['b']])
  np.testing.assert_allclose(got, np.median(sent, axis=0), rtol=1e-6)
