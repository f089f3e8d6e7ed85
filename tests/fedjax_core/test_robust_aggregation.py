"""Robust aggregation rules against plain numpy re-statements and by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.channel import robust_aggregation as ra

# The rules as the engine calls them: jitted, integer hyperparameters static.
median = jax.jit(ra.coordinate_median)
trimmed_mean = jax.jit(ra.trimmed_mean, static_argnames='num_trimmed')
krum_scores = jax.jit(ra.krum_scores, static_argnames='num_byzantine')
multi_krum = jax.jit(ra.multi_krum,
                     static_argnames=('num_byzantine', 'num_selected'))
geometric_median = jax.jit(ra.geometric_median, static_argnames='num_iters')
centered_clip = jax.jit(ra.centered_clip, static_argnames='num_iters')
nnm = jax.jit(ra.nearest_neighbor_mixing, static_argnames='num_byzantine')
nna = jax.jit(ra.nearest_neighbor_average, static_argnames='num_byzantine')


def _cohort(num_clients=7, dim=5, seed=0):
  rng = np.random.default_rng(seed)
  updates = rng.normal(size=(num_clients, dim)).astype(np.float32)
  weights = rng.uniform(0.5, 3.0, size=num_clients).astype(np.float32)
  return updates, weights


def _with_absent(updates, weights, absent_rows):
  """Inserts absent clients (weight 0) with the given rows at the front."""
  rows = np.asarray(absent_rows, np.float32).reshape(-1, updates.shape[1])
  return (np.concatenate([rows, updates]),
          np.concatenate([np.zeros(len(rows), np.float32), weights]))


def _scattered(updates, weights, num_slots=12):
  """Places the clients at random slots of a cohort of `num_slots`; the
  other slots are absent and hold huge, infinite and NaN values."""
  slots = np.random.default_rng(len(updates)).permutation(num_slots)
  slots = slots[:len(updates)]
  garbage = np.resize([1e30, -1e30, np.inf, -np.inf, np.nan],
                      (num_slots, updates.shape[1]))
  all_updates = garbage.astype(np.float32)
  all_updates[slots] = updates
  all_weights = np.zeros(num_slots, np.float32)
  all_weights[slots] = weights
  return jnp.asarray(all_updates), jnp.asarray(all_weights)


def _np_weighted_median(values, weights):
  """First sorted value whose cumulative weight reaches half the total; the
  average with the next value when it is exactly half."""
  order = np.argsort(values, kind='stable')
  values, weights = values[order], weights[order]
  cumulative = np.cumsum(weights)
  half = cumulative[-1] / 2
  k = int(np.argmax((cumulative >= half) | np.isclose(cumulative, half)))
  if np.isclose(cumulative[k], half):
    return (values[k] + values[k + 1]) / 2
  return values[k]


def _np_sq_distance(a, b):
  return float(np.sum((np.float64(a) - np.float64(b))**2))


def _np_krum_scores(points, num_byzantine):
  """Krum's scores of `points` (all present)."""
  m = len(points)
  k = min(max(m - num_byzantine - 2, 1), m - 1)
  scores = []
  for i in range(m):
    others = sorted(_np_sq_distance(points[i], points[j])
                    for j in range(m) if j != i)
    scores.append(sum(others[:k]))
  return np.array(scores)


def _np_weiszfeld(points, weights, num_iters, smoothing):
  points, weights = np.float64(points), np.float64(weights)
  v = weights @ points / weights.sum()
  for _ in range(num_iters):
    beta = weights / np.maximum(smoothing,
                                np.linalg.norm(points - v, axis=1))
    v = beta @ points / beta.sum()
  return v


def _np_centered_clip(points, weights, center, radius, num_iters):
  points, weights = np.float64(points), np.float64(weights)
  v = np.float64(center)
  for _ in range(num_iters):
    step = np.zeros_like(v)
    for x, w in zip(points, weights):
      norm = np.linalg.norm(x - v)
      step += w * (x - v) * (min(1.0, radius / norm) if norm > 0 else 1.0)
    v = v + step / weights.sum()
  return v


def _np_nnm(points, num_byzantine):
  """NNM of `points` (all present): the mean of each point's m - f nearest,
  itself first."""
  m = len(points)
  k = max(m - num_byzantine, 1)
  mixed = []
  for i in range(m):
    others = sorted((_np_sq_distance(points[i], points[j]), j)
                    for j in range(m) if j != i)
    chosen = [i] + [j for _, j in others[:k - 1]]
    mixed.append(np.mean(np.float64(points[chosen]), axis=0))
  return np.array(mixed)


# Ten float32 0.1s sum to a hair under twice five of them; eight 0.3s to a
# hair over twice four: the exact half must survive the rounding both ways.
@pytest.mark.parametrize('num_present,weight', [(1, 0.1), (5, 0.1),
                                                (10, 0.1), (8, 0.3)])
def test_median_with_equal_weights_is_numpys_median_exactly(num_present,
                                                            weight):
  updates, _ = _cohort(num_present)
  weights = np.full(num_present, weight, np.float32)
  got = median(*_scattered(updates, weights))
  np.testing.assert_array_equal(got, np.median(updates, axis=0))


def test_weighted_median_by_hand():
  # Weights 1, 3, 1, 1 (total 6). Column 0 sorted: 0 (3), 5, 6, 7: the 0
  # holds exactly half, so the median is the midpoint of 0 and 5. Column 1
  # sorted: 0, 1, 2, 10 (3): the cumulative weight reaches 3 at the 2, the
  # midpoint of 2 and 10. Weights 1, 5, 1: the heavy client wins outright.
  updates = np.array([[5.0, 2.0], [0.0, 10.0], [7.0, 1.0], [6.0, 0.0]],
                     np.float32)
  got = median(jnp.asarray(updates), jnp.array([1.0, 3.0, 1.0, 1.0]))
  np.testing.assert_allclose(got, [2.5, 6.0])
  got = median(jnp.asarray(updates), jnp.array([1.0, 5.0, 1.0, 0.0]))
  np.testing.assert_allclose(got, [0.0, 10.0])
  # 0.1 + 0.2 is half of 0.6 on paper; float32 rounding must not break it.
  got = median(jnp.array([[1.0], [2.0], [4.0]]), jnp.array([0.1, 0.2, 0.3]))
  np.testing.assert_allclose(got, [3.0])


def test_weighted_median_against_numpy_with_absent_clients():
  updates, weights = _cohort(9, seed=1)
  got = median(*_scattered(updates, weights))
  want = [_np_weighted_median(updates[:, j], weights) for j in range(5)]
  np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.parametrize('num_present,num_trimmed', [(7, 1), (7, 3), (6, 2),
                                                     (5, 0)])
def test_trimmed_mean_against_sorted_slices(num_present, num_trimmed):
  updates, weights = _cohort(num_present, seed=2)
  all_updates, all_weights = _scattered(updates, weights)
  got = trimmed_mean(all_updates, all_weights, num_trimmed)
  kept = np.sort(np.float64(updates), axis=0)[
      num_trimmed:num_present - num_trimmed]
  np.testing.assert_allclose(got, kept.mean(axis=0), rtol=1e-5, atol=1e-6)
  # Unweighted: other positive weights give the same result.
  again = trimmed_mean(all_updates, all_weights**3, num_trimmed)
  np.testing.assert_allclose(again, got, rtol=1e-6)


@pytest.mark.parametrize('num_present', [2, 3, 4])
def test_trimmed_mean_falls_back_to_the_median(num_present):
  updates, weights = _cohort(num_present, seed=3)
  got = trimmed_mean(*_scattered(updates, weights), num_trimmed=2)
  np.testing.assert_allclose(got, np.median(updates, axis=0), rtol=1e-6)


def _krum_case():
  """Six honest clients near (1, 1, 1), two outliers far off."""
  rng = np.random.default_rng(4)
  honest = 1.0 + 0.1 * rng.normal(size=(6, 3))
  outliers = np.array([[20.0, -20.0, 5.0], [-30.0, 10.0, 40.0]])
  return np.concatenate([honest[:3], outliers, honest[3:]]).astype(
      np.float32)


def test_krum_scores_against_numpy_and_outliers_score_highest():
  updates = _krum_case()
  scores = np.asarray(krum_scores(jnp.asarray(updates), jnp.ones(8),
                                  num_byzantine=2))
  np.testing.assert_allclose(scores, _np_krum_scores(updates, 2), rtol=1e-4)
  assert set(np.argsort(scores)[-2:]) == {3, 4}


@pytest.mark.parametrize('absent_row', [[1e30, -1e30, 1e30],
                                        [np.nan, np.inf, 0.0],
                                        'copy_of_client_0'])
def test_absent_clients_do_not_change_krum_scores(absent_row):
  updates = _krum_case()
  if absent_row == 'copy_of_client_0':
    absent_row = updates[0] + 1e-3
  all_updates, all_weights = _with_absent(updates, np.ones(8, np.float32),
                                          [absent_row])
  scores = np.asarray(krum_scores(jnp.asarray(all_updates),
                                  jnp.asarray(all_weights), 2))
  assert scores[0] == np.inf
  np.testing.assert_allclose(scores[1:], _np_krum_scores(updates, 2),
                             rtol=1e-4)


def test_duplicate_clients_are_at_distance_zero_not_below():
  # The Gram form rounds |x|^2 + |x|^2 - 2 x.x away from 0 for large |x|.
  x = np.random.default_rng(0).normal(size=1000) * 10 + 3
  updates = np.stack([x, x, x[::-1]]).astype(np.float32)
  scores = np.asarray(krum_scores(jnp.asarray(updates), jnp.ones(3),
                                  num_byzantine=0))
  assert (scores[:2] >= 0).all()
  assert (scores[:2] <= 1e-6 * np.sum(x**2)).all()


def test_overflowing_clients_still_count_as_present():
  """Squared distances to messages of 1e25 overflow float32."""
  honest = _krum_case()[[0, 1, 2, 5, 6, 7]]
  huge = np.array([[1e25, 1e25, 1e25], [1e25, 1e25, 1.0001e25]], np.float32)
  updates = np.concatenate([honest, huge])
  all_updates, all_weights = _with_absent(
      updates, np.ones(8, np.float32), [[0.0] * 3, honest[0] + 1e-3])
  scores = np.asarray(krum_scores(jnp.asarray(all_updates),
                                  jnp.asarray(all_weights), num_byzantine=2))
  assert not np.isnan(scores).any()
  np.testing.assert_allclose(scores[2:8], _np_krum_scores(updates, 2)[:6],
                             rtol=1e-4)
  assert (scores[8:] > scores[2:8].max()).all()
  # With f = 0 every present client mixes in all the others, the overflowing
  # ones included, and none of the absent.
  mixed = np.asarray(nnm(jnp.asarray(all_updates), jnp.asarray(all_weights),
                         num_byzantine=0))
  np.testing.assert_allclose(mixed[2:], np.tile(updates.mean(axis=0), (8, 1)),
                             rtol=1e-5)


def test_krum_selects_the_best_scored_client():
  updates = _krum_case()
  weights = np.arange(1, 9, dtype=np.float32)
  got = multi_krum(jnp.asarray(updates), jnp.asarray(weights),
                   num_byzantine=2, num_selected=1)
  best = np.argmin(_np_krum_scores(updates, 2))
  np.testing.assert_allclose(got, updates[best], rtol=1e-6)


@pytest.mark.parametrize('num_selected', [3, 6])
def test_multi_krum_is_the_weighted_mean_of_the_selected(num_selected):
  updates = _krum_case()
  weights = np.arange(1, 9, dtype=np.float32)
  all_updates, all_weights = _with_absent(updates, weights, [[0.0] * 3])
  got = multi_krum(jnp.asarray(all_updates), jnp.asarray(all_weights),
                   num_byzantine=2, num_selected=num_selected)
  chosen = np.argsort(_np_krum_scores(updates, 2),
                      kind='stable')[:num_selected]
  want = weights[chosen] @ np.float64(updates[chosen]) / weights[chosen].sum()
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert not {3, 4} & set(chosen)


def test_multi_krum_with_fewer_present_than_selected_takes_all():
  updates, weights = _cohort(3, seed=5)
  all_updates, all_weights = _with_absent(updates, weights, [[1e30] * 5])
  got = multi_krum(jnp.asarray(all_updates), jnp.asarray(all_weights),
                   num_byzantine=1, num_selected=10)
  np.testing.assert_allclose(got, weights @ updates / weights.sum(),
                             rtol=1e-5)


def test_krum_breaks_ties_by_index():
  # Clients 1 and 2 coincide, as do 0 and 3: all four score 0.
  updates = jnp.array([[5.0], [1.0], [1.0], [5.0]])
  got = multi_krum(updates, jnp.array([1.0, 1.0, 1.0, 1.0]),
                   num_byzantine=1, num_selected=1)
  np.testing.assert_array_equal(got, [5.0])
  got = multi_krum(updates, jnp.array([0.0, 1.0, 1.0, 1.0]),
                   num_byzantine=1, num_selected=1)
  np.testing.assert_array_equal(got, [1.0])


def test_geometric_median_against_numpy_weiszfeld():
  updates, weights = _cohort(8, dim=4, seed=6)
  updates[2] += 50.0
  all_updates, all_weights = _with_absent(updates, weights,
                                          [[1e30] * 4, [np.nan] * 4])
  for num_iters in (0, 6):
    got = geometric_median(jnp.asarray(all_updates),
                           jnp.asarray(all_weights), num_iters, 1e-3)
    want = _np_weiszfeld(updates, weights, num_iters, 1e-3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_geometric_median_known_answers():
  # A symmetric cloud stays at its centre, whatever an absent client says.
  square = np.array([[1.0, 1.0], [-1.0, 1.0], [1.0, -1.0], [-1.0, -1.0],
                     [3.0, 0.0], [-3.0, 0.0]], np.float32)
  all_updates, all_weights = _with_absent(
      square + [2.0, -1.0], np.ones(6, np.float32), [[1e6, 1e6]])
  got = geometric_median(jnp.asarray(all_updates),
                         jnp.asarray(all_weights), num_iters=5)
  np.testing.assert_allclose(got, [2.0, -1.0], atol=1e-5)
  # In 1-d it is the median, far from the mean (21.2).
  got = geometric_median(jnp.array([[0.0], [1.0], [2.0], [3.0], [100.0]]),
                         jnp.ones(5), num_iters=30)
  np.testing.assert_allclose(got, [2.0], atol=1e-4)
  # A point holding half the weight is the geometric median.
  got = geometric_median(
      jnp.array([[10.0, 0.0], [0.0, 0.0], [0.0, 10.0], [-7.0, -7.0]]),
      jnp.array([1.0, 3.0, 1.0, 1.0]), num_iters=20)
  np.testing.assert_allclose(got, [0.0, 0.0], atol=1e-4)


def test_centered_clip_against_numpy_and_moves_at_most_the_radius():
  updates, weights = _cohort(6, dim=4, seed=7)
  updates[1] += 30.0
  updates[4] -= 10.0
  all_updates, all_weights = _with_absent(updates, weights, [[1e30] * 4])
  center = np.full(4, 0.5, np.float32)
  radius = 1.5
  iterate = center
  for num_iters in range(1, 5):  # One iteration at a time.
    previous = iterate
    iterate = np.asarray(centered_clip(
        jnp.asarray(all_updates), jnp.asarray(all_weights),
        jnp.asarray(previous), radius))
    assert np.linalg.norm(iterate - previous) <= radius * (1 + 1e-6)
    want = _np_centered_clip(updates, weights, center, radius, num_iters)
    np.testing.assert_allclose(iterate, want, rtol=1e-5, atol=1e-6)
  got = centered_clip(jnp.asarray(all_updates), jnp.asarray(all_weights),
                      jnp.asarray(center), radius, num_iters=4)
  np.testing.assert_allclose(got, iterate, rtol=1e-5, atol=1e-6)


def test_centered_clip_with_a_large_radius_is_the_weighted_mean():
  updates, weights = _cohort(5, seed=8)
  got = centered_clip(jnp.asarray(updates), jnp.asarray(weights),
                      jnp.full(5, -3.0), radius=1e6)
  np.testing.assert_allclose(got, weights @ updates / weights.sum(),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('num_byzantine', [0, 2, 5])
def test_nnm_against_a_numpy_loop(num_byzantine):
  updates, _ = _cohort(6, dim=3, seed=9)
  updates[5] += 20.0
  # Absent clients: one far away, one right next to client 0.
  all_updates, all_weights = _with_absent(
      updates, np.linspace(0.5, 2.0, 6, dtype=np.float32),
      [[1e30] * 3, updates[0] + 1e-3])
  got = np.asarray(nnm(
      jnp.asarray(all_updates), jnp.asarray(all_weights), num_byzantine))
  np.testing.assert_array_equal(got[:2], 0.0)
  np.testing.assert_allclose(got[2:], _np_nnm(updates, num_byzantine),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('num_byzantine', [0, 2, 6])
def test_nearest_neighbor_average_against_numpy(num_byzantine):
  """The plain mean of the m - f present clients nearest the center (at
  least one); absent clients, far or right at the center, are never
  picked."""
  updates, weights = _cohort(6, dim=3, seed=11)
  updates[4] += 20.0
  center = updates[0] + 0.1
  all_updates, all_weights = _scattered(
      np.concatenate([updates, center[None]]),
      np.concatenate([weights, [0.0]]).astype(np.float32))
  got = nna(all_updates, all_weights, jnp.asarray(center), num_byzantine)
  order = np.argsort(((updates - center) ** 2).sum(1))
  want = updates[order[:max(6 - num_byzantine, 1)]].mean(0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_no_client_present_gives_zeros_and_no_nan():
  updates = jnp.array([[1e30, np.nan], [np.inf, -1.0], [2.0, 3.0]])
  weights = jnp.zeros(3)
  for got in (median(updates, weights),
              trimmed_mean(updates, weights, 1),
              multi_krum(updates, weights, 1, 2),
              geometric_median(updates, weights),
              nnm(updates, weights, 1),
              nna(updates, weights, jnp.zeros(2), 1)):
    np.testing.assert_array_equal(got, 0.0)
  np.testing.assert_array_equal(krum_scores(updates, weights, 1), np.inf)
  # Centered clipping has nothing to move toward: the center comes back.
  np.testing.assert_array_equal(
      centered_clip(updates, weights, jnp.array([1.0, -2.0]), 1.0),
      [1.0, -2.0])


def test_one_present_client_is_returned_by_every_rule():
  updates = jnp.array([[1e30, np.nan], [4.0, -3.0], [np.inf, 0.0]])
  weights = jnp.array([0.0, 2.0, 0.0])
  for got in (median(updates, weights),
              trimmed_mean(updates, weights, 1),
              multi_krum(updates, weights, 1, 2),
              geometric_median(updates, weights),
              centered_clip(updates, weights, jnp.zeros(2), 100.0),
              nnm(updates, weights, 1)[1],
              nna(updates, weights, jnp.zeros(2), 1)):
    np.testing.assert_allclose(got, [4.0, -3.0], rtol=1e-6)
  np.testing.assert_array_equal(krum_scores(updates, weights, 1),
                                [np.inf, 0.0, np.inf])


def test_one_compilation_serves_every_cohort_size():
  updates, weights = _cohort(8, dim=5, seed=10)
  updates[6] += 15.0
  center = np.zeros(5, np.float32)

  @jax.jit
  def all_rules(u, w):
    return (ra.coordinate_median(u, w), ra.trimmed_mean(u, w, 2),
            ra.krum_scores(u, w, 1), ra.multi_krum(u, w, 1, 3),
            ra.geometric_median(u, w, 4),
            ra.centered_clip(u, w, jnp.asarray(center), 0.7, 3),
            ra.nearest_neighbor_mixing(u, w, 2))

  for present in ([0, 1, 2, 3, 4, 5, 6, 7], [1, 2, 4, 6, 7]):
    w = np.zeros(8, np.float32)
    w[present] = weights[present]
    x, v = updates[present], weights[present]
    (med, trimmed, scores, mkrum, gm, cclip, mixed) = map(
        np.asarray, all_rules(jnp.asarray(updates), jnp.asarray(w)))
    absent = np.setdiff1d(np.arange(8), present)
    assert np.isinf(scores[absent]).all()
    np.testing.assert_array_equal(mixed[absent], 0.0)
    chosen = np.argsort(_np_krum_scores(x, 1), kind='stable')[:3]
    for got, want in [
        (med, [_np_weighted_median(x[:, j], v) for j in range(5)]),
        (trimmed, np.sort(np.float64(x), axis=0)[2:len(x) - 2].mean(axis=0)),
        (scores[present], _np_krum_scores(x, 1)),
        (mkrum, v[chosen] @ np.float64(x[chosen]) / v[chosen].sum()),
        (gm, _np_weiszfeld(x, v, 4, 1e-6)),
        (cclip, _np_centered_clip(x, v, center, 0.7, 3)),
        (mixed[present], _np_nnm(x, 2))]:
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert all_rules._cache_size() == 1
