"""RQM (Youn et al. 2023) against brute-force numpy re-statements: the
output law by enumerating every kept subset of levels, unbiasedness and
histograms of the JAX sampler, and the Renyi-DP value against exact
divergences on dense grids of input pairs."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from fedjax_core.channel import rqm

# (clip, num_levels, keep_probability, extension)
CONFIGS = [(1.0, 2, 0.5, 1.0), (1.0, 3, 0.5, 1.0), (1.0, 5, 0.4, 0.8),
           (0.5, 6, 0.3, 0.2), (2.0, 8, 0.7, 1.5), (1.0, 7, 0.0, 0.5),
           (1.0, 6, 1.0, 0.5)]


def _kw(config):
  c, m, q, d = config
  return dict(clip=c, num_levels=m, keep_probability=q, extension=d)


def _grid(c, m, d):
  top = c + d
  return np.array([-top + 2 * top * k / (m - 1) for k in range(m)])


def _brute_pmf(x, c, m, q, d):
  """Enumerates all 2^(m-2) kept subsets of the interior levels."""
  levels = _grid(c, m, d)
  x = min(max(x, -c), c)
  pmf = np.zeros(m)
  for bits in itertools.product([0, 1], repeat=m - 2):
    kept = [0] + [k + 1 for k, b in enumerate(bits) if b] + [m - 1]
    weight = np.prod([q if b else 1 - q for b in bits])
    lo = max(k for k in kept if levels[k] <= x)
    if lo == m - 1:
      pmf[lo] += weight
      continue
    hi = min(k for k in kept if k > lo)
    up = (x - levels[lo]) / (levels[hi] - levels[lo])
    pmf[hi] += weight * up
    pmf[lo] += weight * (1 - up)
  return pmf


def _renyi(p, q, alpha):
  """Plain D_alpha(p || q) over a finite support."""
  if np.any((p > 0) & (q == 0)):
    return np.inf
  s = p > 0
  return np.log(np.sum(p[s]**alpha * q[s]**(1 - alpha))) / (alpha - 1)


def _inputs(c, m, d):
  """Clip edges, the levels inside (-c, c) and points between."""
  levels = _grid(c, m, d)
  inner = levels[(levels > -c) & (levels < c)]
  return np.unique(np.concatenate([np.linspace(-c, c, 9), inner,
                                   inner - 1e-3, inner + 1e-3, [-c, c]]))


def test_levels_span_the_extended_range():
  levels = rqm.rqm_levels(clip=1.0, num_levels=5, extension=0.5)
  np.testing.assert_allclose(levels, [-1.5, -0.75, 0.0, 0.75, 1.5])


@pytest.mark.parametrize('config', CONFIGS)
def test_output_distribution_matches_enumeration(config):
  c, m, q, d = config
  levels = _grid(c, m, d)
  for x in np.concatenate([_inputs(c, m, d), [-5 * c, 5 * c]]):
    got = rqm.rqm_output_distribution(x, **_kw(config))
    np.testing.assert_allclose(got, _brute_pmf(x, c, m, q, d), atol=1e-12,
                               err_msg=f'x={x}')
    np.testing.assert_allclose(got.sum(), 1.0, atol=1e-12)
    np.testing.assert_allclose(got @ levels, np.clip(x, -c, c), atol=1e-12)
    assert np.all(got >= -1e-15)


def test_output_distribution_by_hand():
  """m = 3, c = Delta = 1: levels -2, 0, 2. For x = 1 the middle level is
  kept w.p. q, giving 0 or 2 with 1/2 each, else -2 or 2 w.p. 1/4, 3/4."""
  q = 0.5
  got = rqm.rqm_output_distribution(1.0, clip=1.0, num_levels=3,
                                    keep_probability=q, extension=1.0)
  np.testing.assert_allclose(
      got, [(1 - q) / 4, q / 2, q / 2 + 3 * (1 - q) / 4], atol=1e-15)


def test_sampler_is_unbiased():
  config = (1.0, 6, 0.3, 0.5)
  c, m, q, d = config
  xs = np.array([-c, -c + 1e-3, -0.37, 0.0, 0.41, c - 1e-3, c, 3 * c])
  n = 200_000
  x = jnp.asarray(np.repeat(xs[:, None], n, axis=1), jnp.float32)
  y = np.asarray(rqm.rqm_quantize(jax.random.key(0), x, **_kw(config)),
                 np.float64)
  levels = _grid(c, m, d)
  for row, x0 in zip(y, xs):
    pmf = _brute_pmf(x0, c, m, q, d)
    target = np.clip(x0, -c, c)
    se = np.sqrt((pmf @ levels**2 - target**2) / n)
    assert abs(row.mean() - target) < 5 * se, (x0, row.mean(), se)


def test_outputs_lie_on_the_grid():
  config = (0.5, 6, 0.3, 0.2)
  c, m, _, d = config
  x = jax.random.uniform(jax.random.key(1), (50_000,), minval=-1.5,
                         maxval=1.5)
  y = np.asarray(rqm.rqm_quantize(jax.random.key(2), x, **_kw(config)))
  levels = rqm.rqm_levels(clip=c, num_levels=m,
                          extension=d).astype(np.float32)
  assert np.all(np.isin(y, levels))
  assert np.all(np.abs(y) <= c + d + 1e-6)
  assert y.dtype == np.float32 and y.shape == (50_000,)


@pytest.mark.parametrize('config', CONFIGS[2:])
def test_histogram_matches_output_distribution(config):
  c, m, _, d = config
  xs = np.array([-c, 0.1 * c, 0.45 * c])
  n = 60_000
  x = jnp.asarray(np.repeat(xs[:, None], n, axis=1), jnp.float32)
  y = np.asarray(rqm.rqm_quantize(jax.random.key(3), x, **_kw(config)))
  levels = rqm.rqm_levels(clip=c, num_levels=m,
                          extension=d).astype(np.float32)
  for row, x0 in zip(y, xs):
    counts = np.array([np.sum(row == v) for v in levels])
    assert counts.sum() == n
    expected = n * rqm.rqm_output_distribution(x0, **_kw(config))
    zero = expected < 1e-9
    assert np.all(counts[zero] == 0)
    if np.sum(~zero) > 1:
      obs, exp = counts[~zero], expected[~zero]
      pvalue = stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue
      assert pvalue > 1e-3, (x0, obs, exp)


def test_extreme_keep_probabilities():
  x = jnp.linspace(-1.0, 1.0, 1001)
  kw = dict(clip=1.0, num_levels=5, extension=1.0)
  levels = rqm.rqm_levels(**kw)
  y0 = np.asarray(rqm.rqm_quantize(jax.random.key(4), x,
                                   keep_probability=0.0, **kw))
  assert set(np.unique(y0)) <= {-2.0, 2.0}
  y1 = np.asarray(rqm.rqm_quantize(jax.random.key(4), x,
                                   keep_probability=1.0, **kw))
  below = levels[np.clip(np.searchsorted(levels, x, 'right') - 1, 0, 3)]
  gap = levels[1] - levels[0]
  assert np.all((y1 >= below - 1e-6) & (y1 <= below + gap + 1e-6))


@pytest.mark.parametrize('config', CONFIGS[:6])
def test_renyi_dp_bounds_every_pair_on_a_dense_grid(config):
  c, m, q, d = config
  xs = np.unique(np.concatenate([np.linspace(-c, c, 41),
                                 _inputs(c, m, d)]))
  pmfs = [_brute_pmf(x, c, m, q, d) for x in xs]
  for alpha in (1.5, 2.0, 5.0, 16.0):
    bound = rqm.rqm_renyi_dp(alpha, **_kw(config))
    worst = max(_renyi(p, r, alpha) for p in pmfs for r in pmfs)
    assert worst <= bound + 1e-9, (alpha, worst, bound)
    # The grid holds the vertices, so the value is attained: it is exact.
    np.testing.assert_allclose(worst, bound, rtol=1e-9)


def test_renyi_dp_with_sensitivity_bounds_close_pairs():
  c, m, q, d = 1.0, 6, 0.3, 0.4
  s = 0.35
  kw = _kw((c, m, q, d))
  xs = np.unique(np.concatenate([np.linspace(-c, c, 81),
                                 _inputs(c, m, d)]))
  pmfs = {x: _brute_pmf(x, c, m, q, d) for x in xs}
  for alpha in (2.0, 8.0):
    bound = rqm.rqm_renyi_dp(alpha, sensitivity=s, **kw)
    worst = max(_renyi(pmfs[a], pmfs[b], alpha)
                for a in xs for b in xs if abs(a - b) <= s)
    assert worst <= bound + 1e-9
    assert bound >= 0.9 * worst
    assert bound < rqm.rqm_renyi_dp(alpha, **kw)


def test_renyi_dp_by_hand():
  # m = 2: levels -2, 2 for c = Delta = 1; P_1 = (1/4, 3/4),
  # P_-1 = (3/4, 1/4); D_2 = log((3/4)^2/(1/4) + (1/4)^2/(3/4)) = log(7/3).
  got = rqm.rqm_renyi_dp(2.0, clip=1.0, num_levels=2, keep_probability=0.3,
                         extension=1.0)
  np.testing.assert_allclose(got, np.log(7 / 3), rtol=1e-12)
  # m = 3, q = 1/2: P_1 = (1/8, 1/4, 5/8), P_-1 reversed:
  # D_2 = log(1/40 + 1/4 + 25/8) = log(3.4).
  got = rqm.rqm_renyi_dp(2.0, clip=1.0, num_levels=3, keep_probability=0.5,
                         extension=1.0)
  np.testing.assert_allclose(got, np.log(3.4), rtol=1e-12)
  vec = rqm.rqm_renyi_dp([2.0], clip=1.0, num_levels=3, keep_probability=0.5,
                         extension=1.0, num_coordinates=10)
  np.testing.assert_allclose(vec, [10 * np.log(3.4)], rtol=1e-12)


def test_renyi_dp_is_infinite_without_overlap():
  assert rqm.rqm_renyi_dp(2.0, clip=1.0, num_levels=5, keep_probability=0.5,
                          extension=0.0) == np.inf
  assert rqm.rqm_renyi_dp(2.0, clip=1.0, num_levels=5, keep_probability=1.0,
                          extension=0.5) == np.inf
  with pytest.raises(ValueError):
    rqm.rqm_renyi_dp(1.0, clip=1.0, num_levels=5, keep_probability=0.5,
                     extension=0.5)


def test_epsilon_composes_and_beats_the_classical_conversion():
  kw = _kw((1.0, 6, 0.3, 1.0))
  orders = [1.5, 2.0, 4.0, 8.0, 16.0, 32.0]
  eps10, _ = rqm.rqm_epsilon(num_compositions=10, target_delta=1e-5,
                             orders=orders, **kw)
  eps100, _ = rqm.rqm_epsilon(num_compositions=100, target_delta=1e-5,
                              orders=orders, **kw)
  rdp = rqm.rqm_renyi_dp(orders, **kw)
  mironov = min(10 * r + np.log(1e5) / (a - 1) for a, r in zip(orders, rdp))
  assert 0 < eps10 <= mironov + 1e-9
  assert eps100 > eps10


def test_jit_matches_eager_and_keys_matter():
  x = jnp.linspace(-1.2, 1.2, 257)
  kw = _kw((1.0, 8, 0.5, 0.5))
  eager = rqm.rqm_quantize(jax.random.key(5), x, **kw)
  jitted = jax.jit(lambda k, v: rqm.rqm_quantize(k, v, **kw))(
      jax.random.key(5), x)
  np.testing.assert_array_equal(eager, jitted)
  other = rqm.rqm_quantize(jax.random.key(6), x, **kw)
  assert np.mean(np.asarray(other) != np.asarray(eager)) > 0.3


def test_keep_probability_can_be_traced():
  x = jnp.full((4000,), 0.3)
  f = jax.jit(lambda q: rqm.rqm_quantize(
      jax.random.key(7), x, clip=1.0, num_levels=5, keep_probability=q,
      extension=1.0))
  assert set(np.unique(np.asarray(f(0.0)))) <= {-2.0, 2.0}
  assert len(np.unique(np.asarray(f(0.9)))) > 2


def test_tree_uses_independent_keys_per_leaf():
  tree = {'a': jnp.full((1000,), 0.2), 'b': {'c': jnp.full((1000,), 0.2)}}
  out = rqm.rqm_tree(jax.random.key(8), tree, **_kw((1.0, 8, 0.5, 0.5)))
  assert jax.tree.structure(out) == jax.tree.structure(tree)
  assert not np.array_equal(out['a'], out['b']['c'])
  levels = rqm.rqm_levels(clip=1.0, num_levels=8,
                          extension=0.5).astype(np.float32)
  assert np.all(np.isin(np.asarray(out['b']['c']), levels))


def test_worst_pair_need_not_be_the_clip_edges():
  """With m = 8, q ~ 0.104, Delta ~ 1.127 and alpha = 64 the largest
  divergence is at (x, x') = (B_2, c) = (-0.9116..., 1), the first level
  inside [-c, c], above that of (-c, c)."""
  c, m, q, d = 1.0, 8, 0.10444, 1.12707
  edges = _renyi(_brute_pmf(c, c, m, q, d), _brute_pmf(-c, c, m, q, d), 64.0)
  inner = _grid(c, m, d)[2]
  assert -c < inner < -0.9
  worst = _renyi(_brute_pmf(inner, c, m, q, d), _brute_pmf(c, c, m, q, d),
                 64.0)
  assert worst > edges + 5e-3
  bound = rqm.rqm_renyi_dp(64.0, **_kw((c, m, q, d)))
  np.testing.assert_allclose(bound, worst, rtol=1e-9)
