"""Gossip kernels against a plain numpy `W @ x`: dense and gather on a random
sparse graph, ring and torus shifts on their documented slot orders,
several steps, pytrees, consensus measures, errors and jit; and (slow) the
`ppermute` kernels on 8 forced CPU devices in a subprocess."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eight_devices
from fedjax_core.channel import gossip
from fedjax_core.channel import gossip_shifts
from fedjax_core.channel import mixing_weights
from fedjax_core.channel import topology
from fedjax_core.channel.mixing_weights import Mixing
from fedjax_core.errors import SettingError

_TOL = dict(rtol=1e-5, atol=1e-6)

def _reference_matrix(neighbours, weights, self_weight):
  """W[i, j] = self_weight[i] [i == j] + sum_k weights[i, k] [nbr == j]."""
  n, k = neighbours.shape
  w = np.diag(self_weight.astype(np.float64))
  for i in range(n):
    for slot in range(k):
      w[i, neighbours[i, slot]] += weights[i, slot]
  return w


def _apply(w, x):
  return np.tensordot(w, np.asarray(x, np.float64), axes=1)


def _random_mixing(rng, n=9, k=4):
  """A random graph with random weights; about a third of the slots are
  padding (the node itself, weight 0)."""
  neighbours = rng.integers(0, n, size=(n, k))
  weights = rng.uniform(0.05, 0.3, size=(n, k))
  padding = rng.uniform(size=(n, k)) < 0.3
  neighbours[padding] = np.broadcast_to(np.arange(n)[:, None], (n, k))[padding]
  weights[padding] = 0.0
  self_weight = rng.uniform(0.1, 1.0, size=n)
  return (Mixing(jnp.asarray(neighbours, jnp.int32),
                 jnp.asarray(weights, jnp.float32),
                 jnp.asarray(self_weight, jnp.float32)),
          _reference_matrix(neighbours, weights.astype(np.float32),
                            self_weight.astype(np.float32)))


def _shift_mixing(rng, expected):
  """Random per-slot weights on the ring/torus slot order, one dead link
  (weight 0, naming the node itself)."""
  n, k = expected.shape
  neighbours = expected.copy()
  weights = rng.uniform(0.05, 0.3, size=(n, k)).astype(np.float32)
  neighbours[1, 0] = 1
  weights[1, 0] = 0.0
  self_weight = rng.uniform(0.1, 1.0, size=n).astype(np.float32)
  return (Mixing(jnp.asarray(neighbours, jnp.int32), jnp.asarray(weights),
                 jnp.asarray(self_weight)),
          _reference_matrix(neighbours, weights, self_weight))


def _tree(rng, n):
  return {'w': jnp.asarray(rng.normal(size=(n, 3, 2)), jnp.float32),
          'b': jnp.asarray(rng.normal(size=(n,)), jnp.float32)}


def _assert_tree_close(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert g.shape == np.shape(w) and g.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(g), w, **_TOL)


def test_dense_and_gather_equal_numpy_on_a_random_graph():
  rng = np.random.default_rng(0)
  mixing, w = _random_mixing(rng)
  tree = _tree(rng, 9)
  want = jax.tree.map(lambda x: _apply(w, x), tree)
  got = jax.jit(lambda t, m: dict(
      matrix=mixing_weights.mixing_matrix(m), dense=gossip.mix_dense(t, m),
      gather=gossip.mix_gather(t, m), mix_dense=gossip.mix(t, m, 'dense'),
      mix_gather=gossip.mix(t, m, 'gather')))(tree, mixing)
  np.testing.assert_allclose(np.asarray(got.pop('matrix')), w, **_TOL)
  for name, value in got.items():
    _assert_tree_close(value, want)


def test_ring_roll_equals_dense():
  rng = np.random.default_rng(1)
  mixing, w = _shift_mixing(rng, topology.ring_slots(7))
  tree = _tree(rng, 7)
  want = jax.tree.map(lambda x: _apply(w, x), tree)
  got = jax.jit(lambda t, m: (gossip_shifts.mix_ring(t, m), gossip.mix(t, m, 'ring'),
                              gossip.mix_dense(t, m)))(tree, mixing)
  for value in got:
    _assert_tree_close(value, want)


def test_torus_roll_equals_dense():
  rng = np.random.default_rng(2)
  expected = topology.torus_slots(3, 4)
  # Node 5 = (1, 1): up 1, down 9, left 4, right 6.
  np.testing.assert_array_equal(expected[5], [1, 9, 4, 6])
  mixing, w = _shift_mixing(rng, expected)
  tree = _tree(rng, 12)
  want = jax.tree.map(lambda x: _apply(w, x), tree)
  got = jax.jit(lambda t, m: (gossip_shifts.mix_torus(t, m, (3, 4)),
                              gossip.mix(t, m, 'torus', grid=(3, 4))))(
                                  tree, mixing)
  for value in got:
    _assert_tree_close(value, want)


def test_three_steps_equal_w_cubed():
  rng = np.random.default_rng(3)
  mixing, w = _random_mixing(rng)
  tree = _tree(rng, 9)
  ring, w_ring = _shift_mixing(rng, topology.ring_slots(7))
  x = jnp.asarray(rng.normal(size=(7, 2)), jnp.float32)
  dense, gather, on_ring = jax.jit(lambda t, m, x, r: (
      gossip.mix(t, m, 'dense', steps=3), gossip.mix(t, m, 'gather', steps=3),
      gossip.mix(x, r, 'ring', steps=3)))(tree, mixing, x, ring)
  want = jax.tree.map(lambda x: _apply(np.linalg.matrix_power(w, 3), x),
                      tree)
  _assert_tree_close(dense, want)
  _assert_tree_close(gather, want)
  np.testing.assert_allclose(
      on_ring, _apply(np.linalg.matrix_power(w_ring, 3), x), **_TOL)


def test_bfloat16_leaf_keeps_its_dtype():
  rng = np.random.default_rng(4)
  mixing, w = _random_mixing(rng)
  x = jnp.asarray(rng.normal(size=(9, 4)), jnp.bfloat16)
  got = jax.jit(lambda x, m: (gossip.mix(x, m, 'dense'),
                              gossip.mix(x, m, 'gather')))(x, mixing)
  for y in got:
    assert y.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y, np.float32), _apply(w, x),
                               rtol=2e-2, atol=2e-2)


def test_consensus_distance_and_average_against_numpy():
  rng = np.random.default_rng(5)
  tree = _tree(rng, 6)
  flat = np.concatenate([np.asarray(tree['b'])[:, None],
                         np.asarray(tree['w']).reshape(6, -1)], axis=1)
  live = np.array([True, False, True, True, False, True])
  poisoned = jax.tree.map(lambda x: np.asarray(x).copy(), tree)
  for x in poisoned.values():
    x[1] = np.nan

  @jax.jit
  def measures(tree, poisoned, live):
    none = jnp.zeros(6, bool)
    return dict(
        all=(gossip.consensus_distance(tree), gossip.average(tree)),
        live=(gossip.consensus_distance(tree, live),
              gossip.average(tree, live)),
        poisoned=(gossip.consensus_distance(poisoned, live),
                  gossip.average(poisoned, live)),
        none=(gossip.consensus_distance(tree, none),
              gossip.average(tree, none)))

  got = measures(tree, poisoned, live)
  for name, mask in (('all', None), ('live', live), ('poisoned', live)):
    rows = flat if mask is None else flat[mask]
    mean = rows.mean(axis=0)
    want = np.mean(np.sum((rows - mean) ** 2, axis=1))
    distance, average = got[name]
    np.testing.assert_allclose(distance, want, rtol=1e-5, err_msg=name)
    np.testing.assert_allclose(average['b'], mean[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(average['w'], mean[1:].reshape(3, 2),
                               rtol=1e-5, atol=1e-6)
  # No live node: zeros, not NaN.
  distance, average = got['none']
  assert float(distance) == 0.0
  assert not np.any(np.asarray(average['w']))


def test_consensus_distance_is_zero_at_agreement_and_falls_with_mixing():
  rng = np.random.default_rng(6)
  n = 7
  same = jnp.asarray(np.broadcast_to(rng.normal(size=(1, 5)), (n, 5)))
  mixing = Mixing(jnp.asarray(topology.ring_slots(n), jnp.int32),
                  jnp.full((n, 2), 1 / 3), jnp.full((n,), 1 / 3))
  x = jnp.asarray(rng.normal(size=(n, 5)), jnp.float32)

  @jax.jit
  def measures(same, x, mixing):
    mixed = gossip.mix(x, mixing, 'ring')
    return (gossip.consensus_distance(same), gossip.consensus_distance(x),
            gossip.consensus_distance(mixed), gossip.average(x),
            gossip.average(mixed))

  at_agreement, before, after, mean, mixed_mean = measures(same, x, mixing)
  assert float(at_agreement) == pytest.approx(0, abs=1e-9)
  assert after < before
  # A doubly stochastic W keeps the mean.
  np.testing.assert_allclose(mixed_mean, mean, atol=1e-6)


def test_errors_name_the_setting():
  rng = np.random.default_rng(7)
  mixing, _ = _random_mixing(rng, n=9, k=3)
  x = jnp.zeros((9, 2))
  with pytest.raises(SettingError, match='Unknown gossip method') as err:
    gossip.mix(x, mixing, 'allreduce')
  assert err.value.setting == 'gossip.method'
  with pytest.raises(SettingError, match='needs 2 neighbour slots'):
    gossip.mix(x, mixing, 'ring')
  with pytest.raises(SettingError, match='needs 4 neighbour slots'):
    gossip.mix(x, mixing, 'torus', grid=(3, 3))
  with pytest.raises(SettingError) as err:
    gossip.mix(x, mixing, 'dense', steps=0)
  assert err.value.setting == 'gossip.steps'
  ring, _ = _shift_mixing(rng, topology.ring_slots(7))
  shuffled = ring._replace(neighbours=ring.neighbours[:, ::-1])
  with pytest.raises(SettingError, match='expects neighbour slot 0'):
    gossip.mix(jnp.zeros((7, 2)), shuffled, 'ring')
  torus, _ = _shift_mixing(rng, topology.torus_slots(3, 4))
  with pytest.raises(SettingError, match='4x4 torus') as err:
    gossip.mix(jnp.zeros((12, 2)), torus, 'torus', grid=(4, 4))
  assert err.value.setting == 'gossip.grid'
  with pytest.raises(SettingError, match='needs the grid'):
    gossip.mix(jnp.zeros((12, 2)), torus, 'torus')
  with pytest.raises(TypeError, match='floating-point'):
    gossip.mix(jnp.zeros((9, 2), jnp.int32), mixing, 'gather')


def test_choose_method():
  # Shifts for the ring and the torus on any device count (ppermute or roll).
  assert gossip.choose_method('ring', 1024, 2, 8) == 'ring'
  assert gossip.choose_method('ring', 1020, 2, 8) == 'ring'
  assert gossip.choose_method('ring', 1024, 2, 1) == 'ring'
  assert gossip.choose_method('torus', 32, 4, 8, grid=(8, 4)) == 'torus'
  assert gossip.choose_method('torus', 32, 4, 1, grid=(4, 8)) == 'torus'
  assert gossip.choose_method('torus', 32, 4, 8) == 'dense'  # No grid.
  assert gossip.choose_method('complete', 32, 31, 8) == 'dense'
  assert gossip.choose_method('erdos_renyi', 200, 60, 8) == 'dense'
  assert gossip.choose_method('erdos_renyi', 200, 12, 8) == 'gather'


def test_jit_compiles_once_and_takes_traced_mixings():
  """Mixings passed as arguments (new weights every round) reuse one
  compiled program."""
  traces = []

  @jax.jit
  def run(tree, mixing):
    traces.append(1)
    return gossip.mix(tree, mixing, 'ring', steps=2)

  tree = _tree(np.random.default_rng(8), 7)
  for seed in range(3):
    mixing, w = _shift_mixing(np.random.default_rng(seed),
                              topology.ring_slots(7))
    want = jax.tree.map(lambda x: _apply(w @ w, x), tree)
    _assert_tree_close(run(tree, mixing), want)
  assert len(traces) == 1


@pytest.mark.slow
def test_ppermute_kernels_on_eight_devices():
  """Ring N=32 and torus 8x4 sharded over 8 forced CPU devices equal the
  dense reference, and the compiled ring has collective-permutes and no
  all-gather (`gossip_sharded.py`)."""
  proc = eight_devices.run(
      os.path.join(os.path.dirname(__file__), 'gossip_sharded.py'),
      timeout=120)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert 'gossip sharded: ok' in proc.stdout


def test_mix_preserving_variance_matches_numpy():
  """Kernels get the W-weighted mean variance of what was mixed, about the
  plainly mixed mean; biases are mixed plainly; steps repeat it."""
  rng = np.random.default_rng(3)
  mixing, w = _random_mixing(rng)
  n = w.shape[0]
  tree = {'kernel': rng.normal(size=(n, 3, 2)).astype(np.float32),
          'bias': rng.normal(size=(n, 2)).astype(np.float32)}

  def numpy_step(kernel, bias):
    flat = kernel.reshape(n, -1).astype(np.float64)
    target = w @ flat.var(axis=1)
    mixed = w @ flat
    mean = mixed.mean(axis=1, keepdims=True)
    scale = np.sqrt(target / mixed.var(axis=1))[:, None]
    return (mean + (mixed - mean) * scale).reshape(kernel.shape), w @ bias

  kernel, bias = numpy_step(tree['kernel'], tree['bias'])
  got = gossip.mix_preserving_variance(tree, mixing, 'gather')
  np.testing.assert_allclose(got['kernel'], kernel, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got['bias'], bias, rtol=1e-5, atol=1e-6)
  twice = gossip.mix_preserving_variance(tree, mixing, 'dense', steps=2)
  np.testing.assert_allclose(twice['kernel'], numpy_step(kernel, bias)[0],
                             rtol=1e-4, atol=1e-5)
  plain = gossip.mix(tree, mixing, 'dense')
  assert np.var(np.asarray(plain['kernel'])) < np.var(kernel)
