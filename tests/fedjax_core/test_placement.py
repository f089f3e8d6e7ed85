"""Tests of fedjax_core.engine.placement."""

import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import eight_devices
from fedjax_core.engine import placement


def _tree():
  rng = np.random.default_rng(0)
  return {'a': rng.normal(size=(4,)).astype(np.float32),
          'b': {'c': rng.normal(size=(4, 3)).astype(np.float32),
                'd': rng.normal(size=(4, 2, 2)).astype(np.float32)}}


def test_reduce_weighted_mean_matches_numpy():
  """sum_i w_i x_i / sum_i w_i per leaf, including a zero weight."""
  tree = _tree()
  w = np.array([1.0, 0.0, 2.0, 3.5], np.float32)
  out = placement.reduce_weighted_mean(jax.tree.map(jnp.asarray, tree),
                                       jnp.asarray(w))
  chex.assert_trees_all_equal_shapes(
      out, {'a': np.zeros(()), 'b': {'c': np.zeros(3), 'd': np.zeros((2, 2))}})
  for got, x in zip(jax.tree.leaves(out), jax.tree.leaves(tree)):
    expected = np.tensordot(w, x.astype(np.float64), axes=1) / w.sum()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_reduce_weighted_mean_of_all_zero_weights_is_zero_not_nan():
  """All-zero weights give zeros, not 0/0 = NaN."""
  tree = jax.tree.map(jnp.asarray, _tree())
  out = placement.reduce_weighted_mean(tree, jnp.zeros(4))
  for leaf in jax.tree.leaves(out):
    chex.assert_tree_all_finite(leaf)
    np.testing.assert_array_equal(leaf, np.zeros(leaf.shape))


def test_reduce_weighted_mean_ignores_non_finite_padding():
  """A zero-weight client's NaN or inf does not reach the mean."""
  x = jnp.array([[1.0, 2.0], [np.nan, np.inf], [3.0, 5.0]])
  out = placement.reduce_weighted_mean(x, jnp.array([1.0, 0.0, 3.0]))
  np.testing.assert_allclose(out, [2.5, 4.25], rtol=1e-6)


def test_reduce_sum_matches_numpy():
  """reduce_sum sums every leaf over the leading axis."""
  tree = _tree()
  out = placement.reduce_sum(jax.tree.map(jnp.asarray, tree))
  for got, x in zip(jax.tree.leaves(out), jax.tree.leaves(tree)):
    np.testing.assert_allclose(got, x.sum(axis=0), rtol=1e-5, atol=1e-6)


def _fn(client):
  """A small nonlinear per-client function with a scalar and a vector out."""
  x, y = client['x'], client['y']
  return {'p': jnp.tanh(x) * y, 's': jnp.sum(x ** 2) + jnp.exp(y)}


@pytest.mark.parametrize('unroll', [False, True])
@pytest.mark.parametrize('chunk_size', [None, 1, 2, 5, 8])
def test_map_clients_matches_a_loop_over_clients(chunk_size, unroll):
  """vmap, chunks (a `lax.map` or straight-line code, incl. a ragged last
  chunk) and one-by-one all equal a numpy loop over the 5 clients."""
  rng = np.random.default_rng(1)
  x = rng.normal(size=(5, 3)).astype(np.float32)
  y = rng.normal(size=(5,)).astype(np.float32)
  out = placement.map_clients(_fn, {'x': jnp.asarray(x), 'y': jnp.asarray(y)},
                              chunk_size, unroll=unroll)
  chex.assert_shape(out['p'], (5, 3))
  chex.assert_shape(out['s'], (5,))
  for i in range(5):
    np.testing.assert_allclose(out['p'][i], np.tanh(x[i]) * y[i], rtol=1e-5)
    np.testing.assert_allclose(out['s'][i], np.sum(x[i] ** 2) + np.exp(y[i]),
                               rtol=1e-5)


_SHARDED = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from fedjax_core.engine import placement
    assert jax.device_count() == 8, jax.devices()
    mesh = placement.client_mesh()
    assert mesh.shape == {'clients': 8}, mesh.shape
    x_np = np.arange(24, dtype=np.float32).reshape(8, 3) / 10.0
    w_np = np.arange(1, 9, dtype=np.float32)
    x = jax.device_put(x_np, placement.cohort_sharding(mesh))
    w = jax.device_put(w_np, placement.cohort_sharding(mesh))
    assert len(x.sharding.device_set) == 8, x.sharding
    shapes = {s.data.shape for s in x.addressable_shards}
    assert shapes == {(1, 3)}, shapes
    assert len(x.addressable_shards) == 8

    @jax.jit
    def f(x, w):
      y = placement.map_clients(lambda r: jnp.sin(r) * 2.0, x)
      return placement.reduce_weighted_mean(y, w)

    out = f(x, w)
    expected = (w_np[:, None] * np.sin(x_np) * 2.0).sum(0) / w_np.sum()
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5)
    print('OK')
''')


@pytest.mark.slow
def test_sharded_round_trip_on_eight_host_devices():
  """On an 8-device mesh a cohort is sharded one client per device and the
  jitted map + weighted mean still matches numpy."""
  proc = eight_devices.run('-c', _SHARDED, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert 'OK' in proc.stdout


def test_use_cpu_device_per_core_rejects_non_positive_counts():
  """0 or a negative count is an error, not a silent default."""
  with pytest.raises(ValueError, match='num_devices must be positive'):
    placement.use_cpu_device_per_core(0)
  with pytest.raises(ValueError, match='num_devices must be positive'):
    placement.use_cpu_device_per_core(-2)
