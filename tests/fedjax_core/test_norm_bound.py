"""fedjax_core/channel/norm_bound.py against a numpy re-statement."""

import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core import channel
from fedjax_core.channel import aggregation
from fedjax_core.channel.norm_bound import norm_bound_stage
from fedjax_core.channel.stage import Packet, RoundContext
from fedjax_core.errors import SettingError


def _cohort():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(4, 2)).astype(np.float32)
  b = rng.normal(size=(4, 3)).astype(np.float32)
  a[1] *= 0.01  # Client 1 is well inside the bound.
  b[1] *= 0.01
  a[3] *= 100  # Client 3 is a long padding row.
  is_real = np.array([True, True, True, False])
  ctx = RoundContext(jnp.arange(4), jnp.asarray(is_real),
                     jnp.asarray(is_real), None, None)
  return a, b, is_real, ctx


def _numpy_bound(a, b, bound):
  flat = np.concatenate([a, b], axis=1).astype(np.float64)
  norms = np.linalg.norm(flat, axis=1)
  scale = np.minimum(1.0, bound / norms)
  return a * scale[:, None], b * scale[:, None], norms


def test_clips_each_message_to_the_bound():
  a, b, is_real, ctx = _cohort()
  bound = 1.0
  packets = Packet({'a': jnp.asarray(a), 'b': jnp.asarray(b)}, jnp.ones(4),
                   {})
  out, _, metrics = norm_bound_stage(bound).apply((), packets, ctx)
  want_a, want_b, norms = _numpy_bound(a, b, bound)
  np.testing.assert_allclose(out.message['a'], want_a, rtol=1e-5)
  np.testing.assert_allclose(out.message['b'], want_b, rtol=1e-5)
  np.testing.assert_array_equal(out.message['a'][1], a[1])  # Untouched.
  clipped = (norms > bound) & is_real
  assert clipped.tolist()[:3] == [True, False, True]
  assert float(metrics['norm_bound_clipped']) == pytest.approx(2 / 3)


def test_mean_of_bounded_messages_in_a_chain():
  a, b, _, ctx = _cohort()
  weights = np.array([1.0, 2.0, 3.0, 0.0], np.float32)
  pipeline = channel.chain(norm_bound_stage(0.5), aggregation.mean())
  packets = Packet({'a': jnp.asarray(a), 'b': jnp.asarray(b)},
                   jnp.asarray(weights), {})
  aggregate, _, _ = pipeline.aggregate({}, packets, ctx)
  want_a, _, _ = _numpy_bound(a, b, 0.5)
  np.testing.assert_allclose(
      aggregate.mean['a'], (weights[:, None] * want_a).sum(0) / 6.0,
      rtol=1e-5)


@pytest.mark.parametrize('bound', [0.0, -1.0])
def test_refuses_a_non_positive_bound(bound):
  with pytest.raises(SettingError, match='must be positive'):
    norm_bound_stage(bound)
