"""Byzantine peers and robust gossip against plain numpy re-statements."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedjax_core.channel import peer_robust
from fedjax_core.channel.mixing_weights import Mixing
from fedjax_core.errors import SettingError

D = 3

# Compiling is most of this file's time, so tests share jitted functions (the
# mixing, models and Byzantine set are traced; one compile per shape and
# setting). The degree check needs concrete weights, so its tests call the
# functions eagerly.
_received = jax.jit(peer_robust.received, static_argnames=(
    'attack', 'scale', 'stddev', 'alie_z', 'ipm_epsilon',
    'dissensus_epsilon'))
_aggregate = jax.jit(peer_robust.aggregate,
                     static_argnames=('rule', 'num_byzantine', 'clip_radius'))


def _mixing(neighbours, weights, self_weight):
  return Mixing(jnp.asarray(neighbours, jnp.int32),
                jnp.asarray(weights, jnp.float32),
                jnp.asarray(self_weight, jnp.float32))


def _ring4():
  """Ring 0-1-2-3-0, weight 1/3 on each neighbour and on the node itself."""
  neighbours = [[3, 1], [0, 2], [1, 3], [2, 0]]
  return _mixing(neighbours, np.full((4, 2), 1 / 3), np.full(4, 1 / 3))


def _complete(n):
  """The complete graph K_n, weight 1/n everywhere."""
  neighbours = [[j for j in range(n) if j != i] for i in range(n)]
  return _mixing(neighbours, np.full((n, n - 1), 1 / n), np.full(n, 1 / n))


def _k4_dead_link_and_padding():
  """K_4 with the link 0-1 dead (weight 0, its mass on the node itself)
  and a padding slot (naming the node itself, weight 0) on every node."""
  neighbours = np.array([[1, 2, 3, 0], [0, 2, 3, 1], [0, 1, 3, 2],
                         [0, 1, 2, 3]])
  weights = np.array([[0.0, 0.3, 0.2, 0.0], [0.0, 0.25, 0.25, 0.0],
                      [0.1, 0.2, 0.3, 0.0], [0.25, 0.25, 0.25, 0.0]])
  return _mixing(neighbours, weights, 1 - weights.sum(1))


def _models(n, seed=0):
  return np.random.default_rng(seed).uniform(-1, 1, (n, D)).astype(
      np.float32)


def _per_edge_messages(mixing, seed=1):
  """Arbitrary received values, one per slot; NaN in dead and padding
  slots, which no rule may read."""
  weights = np.asarray(mixing.weights)
  msgs = np.random.default_rng(seed).normal(size=weights.shape + (D,))
  msgs[weights == 0] = np.nan
  return msgs.astype(np.float32)


def _node_values(x, msgs, mixing, i):
  """Node i's own model first, then the values on its live slots, and the
  live slots' weights."""
  live = np.asarray(mixing.weights)[i] > 0
  return (np.concatenate([x[i:i + 1], msgs[i][live]]).astype(np.float64),
          np.asarray(mixing.weights, np.float64)[i][live])


def _close(actual, expected, atol=1e-5):
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-5,
                             atol=atol)


# What each node receives.


@pytest.mark.parametrize('attack', peer_robust.PEER_ATTACKS)
def test_received_without_byzantine_gathers_the_neighbours(attack):
  x = _models(4)
  expected = np.stack([np.stack([x[3], x[1]]), np.stack([x[0], x[2]]),
                       np.stack([x[1], x[3]]), np.stack([x[2], x[0]])])
  _close(_received(x, _ring4(), jnp.zeros(4, bool), attack,
                   jax.random.key(0)), expected)


def test_attack_none_has_byzantine_nodes_behave():
  x = _models(4)
  out = _received(x, _ring4(), jnp.array([True, False] * 2), 'none',
                  jax.random.key(0))
  _close(out[1], np.stack([x[0], x[2]]))


def test_sign_flip_on_a_ring_per_edge():
  x = _models(4)
  out = np.asarray(_received(
      x, _ring4(), jnp.array([True, False, False, False]), 'sign_flip',
      jax.random.key(0), scale=2.0))
  expected = np.stack([np.stack([x[3], x[1]]), np.stack([-2 * x[0], x[2]]),
                       np.stack([x[1], x[3]]), np.stack([x[2], -2 * x[0]])])
  _close(out, expected)


def test_dissensus_sends_each_neighbour_its_own_message():
  x = _models(4)
  eps = 1.5
  out = np.asarray(_received(
      x, _ring4(), jnp.array([True, False, False, False]), 'dissensus',
      jax.random.key(0), dissensus_epsilon=eps))
  # Node 1's neighbours: 0 (Byzantine) and 2, weight 1/3 each, so the
  # message is x1 - eps (1/3)(x2 - x1) / (1/3); node 3's likewise with x2.
  to_1 = x[1] - eps * (x[2] - x[1])
  to_3 = x[3] - eps * (x[2] - x[3])
  _close(out[1, 0], to_1)
  _close(out[3, 1], to_3)
  assert not np.allclose(to_1, to_3)
  # Honest slots are untouched.
  _close(out[1, 1], x[2])
  _close(out[3, 0], x[2])
  _close(out[2], np.stack([x[1], x[3]]))


def test_dissensus_with_eps_one_freezes_plain_gossip():
  x = _models(4)
  mixing = _ring4()
  out = _received(x, mixing, jnp.array([True, False, False, False]),
                  'dissensus', jax.random.key(0))
  mixed = np.asarray(_aggregate(x, out, mixing, 'mean'))
  # (x1 + (x1 - (x2 - x1)) + x2) / 3 = x1: node 1 never moves.
  _close(mixed[1], x[1])
  _close(mixed[3], x[3])


def test_dissensus_weighs_by_the_gossip_weights():
  x = _models(4)
  mixing = _k4_dead_link_and_padding()
  out = np.asarray(_received(
      x, mixing, jnp.array([False, False, False, True]), 'dissensus',
      jax.random.key(0), dissensus_epsilon=2.0))
  # Node 0: honest live neighbour 2 (0.3); Byzantine 3 (0.2); 1 is dead.
  _close(out[0, 2], x[0] - 2.0 * 0.3 * (x[2] - x[0]) / 0.2)
  # Node 2: honest 0 (0.1) and 1 (0.2); Byzantine 3 (0.3).
  _close(out[2, 2], x[2] - 2.0 * (0.1 * (x[0] - x[2]) + 0.2 * (x[1] - x[2]))
         / 0.3)


def test_alie_per_receiver_over_the_honest_models_it_holds():
  x = _models(4)
  byzantine = jnp.array([True, False, False, False])
  held = np.stack([x[1], x[2]])  # Node 1's own and its honest neighbour's.
  for z, expected_z in [(0.7, 0.7), (None, stats.norm.ppf(2 / 3))]:
    out = np.asarray(_received(x, _ring4(), byzantine, 'alie',
                               jax.random.key(0), alie_z=z))
    _close(out[1, 0], held.mean(0) - expected_z * held.std(0))
    held_3 = np.stack([x[3], x[2]])
    _close(out[3, 1], held_3.mean(0) - expected_z * held_3.std(0))


def test_ipm_per_receiver():
  x = _models(4)
  out = np.asarray(_received(
      x, _ring4(), jnp.array([True, False, False, False]), 'ipm',
      jax.random.key(0), ipm_epsilon=0.5))
  _close(out[1, 0], -0.5 * (x[1] + x[2]) / 2)
  _close(out[3, 1], -0.5 * (x[3] + x[2]) / 2)
  _close(out[1, 1], x[2])


def test_gaussian_draws_per_edge_and_is_seeded():
  x = _models(4)
  byzantine = jnp.array([True, False, False, False])
  out = np.asarray(_received(x, _ring4(), byzantine, 'gaussian',
                             jax.random.key(3), stddev=5.0))
  assert not np.allclose(out[1, 0], out[3, 1])
  assert not np.allclose(out[1, 0], x[0])
  _close(out[1, 1], x[2])
  _close(out[2], np.stack([x[1], x[3]]))
  again = _received(x, _ring4(), byzantine, 'gaussian',
                    jax.random.key(3), stddev=5.0)
  np.testing.assert_array_equal(out, np.asarray(again))


def test_byzantine_nodes_counts_and_seeds():
  mask = np.asarray(peer_robust.byzantine_nodes(jax.random.key(0), 10, 0.3))
  assert mask.shape == (10,) and mask.sum() == 3
  np.testing.assert_array_equal(
      mask, peer_robust.byzantine_nodes(jax.random.key(0), 10, 0.3))


# The rules against numpy.


def _dense(mixing):
  """The mixing as a dense N x N matrix."""
  n = mixing.neighbours.shape[0]
  w = np.diag(np.asarray(mixing.self_weight, np.float64))
  for i in range(n):
    for j, weight in zip(np.asarray(mixing.neighbours)[i],
                         np.asarray(mixing.weights)[i]):
      w[i, j] += weight
  return w


@pytest.mark.parametrize('mixing', [_ring4(), _k4_dead_link_and_padding()])
def test_mean_is_the_mixing_matrix(mixing):
  x = _models(4)
  got = _received(x, mixing, jnp.zeros(4, bool), 'none',
                  jax.random.key(0))
  # Eagerly, which also runs the degree check on concrete weights.
  _close(peer_robust.aggregate(x, got, mixing, 'mean'), _dense(mixing) @ x)


@pytest.mark.parametrize('mixing', [_ring4(), _k4_dead_link_and_padding()])
def test_median_and_trimmed_mean_per_node(mixing):
  x = _models(4)
  msgs = _per_edge_messages(mixing)
  median = np.asarray(_aggregate(x, msgs, mixing, 'median'))
  trimmed = np.asarray(_aggregate(x, msgs, mixing, 'trimmed_mean',
                                  num_byzantine=1))
  for i in range(4):
    values, _ = _node_values(x, msgs, mixing, i)
    _close(median[i], np.median(values, axis=0))
    _close(trimmed[i], np.sort(values, axis=0)[1:-1].mean(0))


def test_trimmed_mean_differs_from_median_with_five_values():
  x = _models(5)
  mixing = _complete(5)
  msgs = _per_edge_messages(mixing)
  trimmed = np.asarray(_aggregate(x, msgs, mixing, 'trimmed_mean',
                                  num_byzantine=1))
  for i in range(5):
    values, _ = _node_values(x, msgs, mixing, i)
    _close(trimmed[i], np.sort(values, axis=0)[1:4].mean(0))
    assert not np.allclose(trimmed[i], np.median(values, axis=0))


def _numpy_clipped(x, msgs, mixing, i, tau):
  values, weights = _node_values(x, msgs, mixing, i)
  out = values[0].copy()
  for r, w in zip(values[1:], weights):
    z = r - values[0]
    out += w * z * min(1.0, tau / np.linalg.norm(z))
  return out


@pytest.mark.parametrize('mixing', [_ring4(), _k4_dead_link_and_padding()])
def test_clipped_gossip_with_a_fixed_radius(mixing):
  x = _models(4)
  msgs = _per_edge_messages(mixing)
  out = np.asarray(_aggregate(x, msgs, mixing, 'clipped_gossip',
                              clip_radius=0.8))
  for i in range(4):
    _close(out[i], _numpy_clipped(x, msgs, mixing, i, 0.8))


def test_clipped_gossip_adaptive_radius_clips_the_b_farthest():
  x = _models(5)
  mixing = _complete(5)
  msgs = _per_edge_messages(mixing)
  radius = np.asarray(jax.jit(peer_robust.adaptive_clip_radius,
                              static_argnums=3)(x, msgs, mixing, 1))
  out = np.asarray(_aggregate(x, msgs, mixing, 'clipped_gossip',
                              num_byzantine=1))
  for i in range(5):
    values, _ = _node_values(x, msgs, mixing, i)
    distances = np.linalg.norm(values[1:] - values[0], axis=1)
    tau = np.sort(distances)[-2]
    _close(radius[i], tau)
    _close(out[i], _numpy_clipped(x, msgs, mixing, i, tau))
  # b = 0 clips nothing: plain gossip.
  plain = _aggregate(x, msgs, mixing, 'clipped_gossip')
  _close(plain, _aggregate(x, msgs, mixing, 'mean'))


@pytest.mark.parametrize('mixing', [_ring4(), _k4_dead_link_and_padding()])
def test_nna_averages_the_values_nearest_the_own_model(mixing):
  x = _models(4)
  msgs = _per_edge_messages(mixing)
  out = np.asarray(_aggregate(x, msgs, mixing, 'nna', num_byzantine=1))
  for i in range(4):
    values, _ = _node_values(x, msgs, mixing, i)
    order = np.argsort(np.linalg.norm(values - values[0], axis=1),
                       kind='stable')
    _close(out[i], values[order[:len(values) - 1]].mean(0))


# Robustness: one Byzantine node of K_6 sends huge models.


@pytest.fixture(scope='module')
def huge_byzantine():
  """K_6 whose node 5 sends -1e6 to everyone; node 5's model is 1."""
  x = np.random.default_rng(2).uniform(0, 1, (6, D)).astype(np.float32)
  x[5] = 1.0
  mixing = _complete(6)
  got = _received(x, mixing, jnp.array([False] * 5 + [True]), 'sign_flip',
                  jax.random.key(0), scale=1e6)
  return x, mixing, got


def test_one_huge_byzantine_drags_the_mean(huge_byzantine):
  x, mixing, got = huge_byzantine
  mean = np.asarray(_aggregate(x, got, mixing, 'mean'))
  assert np.all(np.abs(mean[:5]) > 1e4)


@pytest.mark.parametrize('rule', ['median', 'trimmed_mean', 'nna'])
def test_one_huge_byzantine_stays_in_the_honest_box(huge_byzantine, rule):
  x, mixing, got = huge_byzantine
  honest = x[:5]
  out = np.asarray(_aggregate(x, got, mixing, rule, num_byzantine=1))[:5]
  assert np.all(out >= honest.min(0) - 1e-6)
  assert np.all(out <= honest.max(0) + 1e-6)


def test_one_huge_byzantine_is_clipped(huge_byzantine):
  x, mixing, got = huge_byzantine
  honest = x[:5]
  diameter = max(np.linalg.norm(a - b) for a in honest for b in honest)
  out = np.asarray(_aggregate(x, got, mixing, 'clipped_gossip',
                              num_byzantine=1))[:5]
  # Every clipped step is at most the farthest honest neighbour's distance.
  assert np.all(np.linalg.norm(out - honest, axis=1) <= diameter + 1e-5)


# Errors.


def test_unknown_rule_and_attack():
  x = _models(4)
  mixing = _ring4()
  with pytest.raises(SettingError, match='Unknown gossip rule') as info:
    peer_robust.aggregate(x, x[mixing.neighbours], mixing, 'krum')
  assert info.value.setting == 'gossip.rule'
  with pytest.raises(SettingError, match='Unknown peer attack') as info:
    peer_robust.received(x, mixing, jnp.zeros(4, bool), 'label_flip',
                         jax.random.key(0))
  assert info.value.setting == 'gossip.attack'


def test_too_many_byzantine_for_a_node_degree():
  x = _models(4)
  mixing = _k4_dead_link_and_padding()  # Nodes 0 and 1 have degree 2.
  msgs = _per_edge_messages(mixing)
  with pytest.raises(SettingError,
                     match=r'Node 0 has degree 2 .*needs degree >= 4') as info:
    peer_robust.aggregate(x, msgs, mixing, 'trimmed_mean', num_byzantine=2)
  assert info.value.setting == 'gossip.num_byzantine'
  with pytest.raises(SettingError, match=r'Node 0 has degree 2 .*>= 3'):
    peer_robust.aggregate(x, msgs, mixing, 'clipped_gossip',
                          num_byzantine=2)
  # More than the K = 2 slots of a ring allow: caught even under jit.
  ring = _ring4()
  jitted = jax.jit(peer_robust.aggregate,
                   static_argnames=('rule', 'num_byzantine', 'clip_radius'))
  with pytest.raises(SettingError, match='at most 2 neighbours'):
    jitted(x, x[ring.neighbours], ring, rule='nna', num_byzantine=2)


def test_other_bad_settings():
  x = _models(4)
  ring = _ring4()
  with pytest.raises(SettingError, match='>= 0'):
    peer_robust.aggregate(x, x[ring.neighbours], ring, 'median',
                          num_byzantine=-1)
  with pytest.raises(SettingError, match='clip_radius') as info:
    peer_robust.aggregate(x, x[ring.neighbours], ring, 'clipped_gossip',
                          clip_radius=0.0)
  assert info.value.setting == 'gossip.clip_radius'
  with pytest.raises(SettingError, match=r'\[0, 1\)'):
    peer_robust.byzantine_nodes(jax.random.key(0), 4, 1.0)


# Jit: one trace per setting.


def test_one_compile_serves_every_byzantine_set_and_weighting():
  traces = []

  def gossip(x, mixing, byzantine, key):
    traces.append(1)
    got = peer_robust.received(x, mixing, byzantine, 'dissensus', key)
    return peer_robust.aggregate(x, got, mixing, 'clipped_gossip',
                                 num_byzantine=1)

  step = jax.jit(gossip)
  x = _models(4)
  mixing = _k4_dead_link_and_padding()
  first = step(x, mixing, jnp.array([False, False, False, True]),
               jax.random.key(0))
  second = step(x, mixing._replace(weights=mixing.weights * 0.5),
                jnp.array([True, False, False, False]), jax.random.key(1))
  assert len(traces) == 1
  assert not np.allclose(first, second)
  assert np.all(np.isfinite(first)) and np.all(np.isfinite(second))
