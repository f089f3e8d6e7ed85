"""Byzantine-robust aggregation rules over the cohort's flattened messages.

Every rule takes `updates`, `[n, d]` float32 (one flattened message per
cohort slot), and `weights`, `[n]` float32 >= 0. A slot of weight 0 is
absent (padding, or a client that did not take part) and has no influence
on any result: not as a point, not as a neighbour, not in a count. The
number of present clients m = #{i: w_i > 0} is traced; n and the integer
hyperparameters are static Python ints. With no client present every rule
returns zeros (`centered_clip` returns its center) and none produces NaN.

- Coordinate-wise median and trimmed mean (Yin, Chen, Ramchandran and
  Bartlett, ICML 2018, "Byzantine-Robust Distributed Learning: Towards
  Optimal Statistical Rates").
- Krum and Multi-Krum (Blanchard, El Mhamdi, Guerraoui and Stainer, NeurIPS
  2017, "Machine Learning with Adversaries: Byzantine Tolerant Gradient
  Descent").
- The geometric median by smoothed Weiszfeld iterations, RFA (Pillutla,
  Kakade and Harchaoui, IEEE TSP 2022, "Robust Aggregation for Federated
  Learning").
- Centered clipping (Karimireddy, He and Jaggi, ICML 2021, "Learning from
  History for Byzantine Robust Optimization").
- Nearest-neighbour mixing, NNM (Allouah, Farhadkhani, Guerraoui, Gupta,
  Pinot and Stephan, AISTATS 2023, "Fixing by Mixing: A Recipe for Optimal
  Byzantine ML under Heterogeneity"), a pre-aggregation step.
- Nearest-neighbour averaging around a reference, the aggregation step of
  MoNNA (Farhadkhani, Guerraoui, Gupta, Hoang, Pinot and Stephan, ICML
  2023, "Robust Collaborative Learning with Linear Gradient Overhead"):
  there each honest node averages the n - f vectors nearest its own; the
  server, which has no vector of its own, centres on its previous
  aggregate.

Pairwise distances use the Gram form |a|^2 + |b|^2 - 2 a.b (one n x n
matmul, so d ~ 1e5 with n ~ 100 is cheap). All functions are pure and
jittable; the caller jits them with the integer hyperparameters static.
"""

import jax
import jax.numpy as jnp
from jax import lax

# Comparisons of float32 cumulative weights with half the total allow this
# relative error, so a split that is exactly half on paper counts as half.
_HALF_RTOL = 1e-5
_FLOAT32_MAX = float(jnp.finfo(jnp.float32).max)


def coordinate_median(updates: jax.Array, weights: jax.Array) -> jax.Array:
  """The coordinate-wise weighted median of the present clients.

  Per coordinate, with the present clients' values sorted, x_(1) <= ... <=
  x_(m), c_k the cumulative weight of the first k and W = c_m: k* is the
  first k with c_k >= W / 2. If c_k* = W / 2 (half the weight lies on each
  side), the median is (x_(k*) + x_(k*+1)) / 2, else x_(k*). The
  comparisons with W / 2 allow a relative 1e-5 for the float32 rounding of
  the cumulative sums (ten weights of 0.1 do not sum to exactly twice five),
  so equal weights give `np.median` bit for bit (the middle value, or the
  average of the two middle ones) in any cohort of fewer than 10^5 clients,
  where one client's share 1/m exceeds the tolerance.

  Args:
    updates: `[n, d]` the clients' messages.
    weights: `[n]` the clients' weights, 0 for absent clients.

  Returns:
    `[d]` the weighted median; zeros if no client is present.

  Examples:
    >>> coordinate_median(jnp.array([[1.0], [2.0], [9.0], [5.0]]),
    ...                   jnp.array([1.0, 1.0, 1.0, 0.0])).tolist()
    [2.0]
  """
  present, x, w = _masked(updates, weights)
  values, sorted_weights = _sort_present(x, present, w)
  return _median_of_sorted(values, sorted_weights)


def trimmed_mean(updates: jax.Array, weights: jax.Array,
                 num_trimmed: int) -> jax.Array:
  """The coordinate-wise trimmed mean of the present clients, unweighted.

  Per coordinate, the `num_trimmed` largest and `num_trimmed` smallest of
  the m present values are dropped and the other m - 2 num_trimmed are
  averaged with equal weights. Trimming is by count of clients, so the
  weights only say who is present: a Byzantine client reports its own
  weight, and weighting the survivors would let it buy influence back. If
  m <= 2 num_trimmed nothing would survive, and the result is the
  (unweighted) coordinate-wise median of the present clients instead.

  Args:
    updates: `[n, d]` the clients' messages.
    weights: `[n]` the clients' weights, 0 for absent clients.
    num_trimmed: b, how many values to drop at each end (static).

  Returns:
    `[d]` the trimmed mean; zeros if no client is present.

  Examples:
    >>> trimmed_mean(jnp.array([[1.0], [2.0], [3.0], [100.0]]),
    ...              jnp.ones(4), num_trimmed=1).tolist()
    [2.5]
  """
  if num_trimmed < 0:
    raise ValueError(f'num_trimmed must be >= 0, got {num_trimmed}.')
  present, x, _ = _masked(updates, weights)
  m = jnp.sum(present)
  rank = jnp.arange(x.shape[0])
  values, unit = _sort_present(x, present, present.astype(x.dtype))
  kept = (rank >= num_trimmed) & (rank < m - num_trimmed)
  mean = jnp.tensordot(kept.astype(x.dtype), values, axes=1) / jnp.maximum(
      m - 2 * num_trimmed, 1).astype(x.dtype)
  return jnp.where(m > 2 * num_trimmed, mean,
                   _median_of_sorted(values, unit))


def krum_scores(updates: jax.Array, weights: jax.Array,
                num_byzantine: int) -> jax.Array:
  """Krum's score of every client (Blanchard et al. 2017).

  score_i is the sum of the squared distances from client i to its k
  nearest other present clients, k = max(m - f - 2, 1) (at most the m - 1
  others; a lone client scores 0). Weights only say who is present.
  Distances that overflow float32 saturate at its maximum.

  Args:
    updates: `[n, d]` the clients' messages.
    weights: `[n]` the clients' weights, 0 for absent clients.
    num_byzantine: f, the number of Byzantine clients tolerated (static).

  Returns:
    `[n]` the scores, +inf for absent clients.

  Examples:
    >>> krum_scores(jnp.array([[0.0], [1.0], [3.0]]), jnp.ones(3),
    ...             num_byzantine=0).tolist()
    [1.0, 1.0, 4.0]
  """
  if num_byzantine < 0:
    raise ValueError(f'num_byzantine must be >= 0, got {num_byzantine}.')
  present, x, _ = _masked(updates, weights)
  n = x.shape[0]
  m = jnp.sum(present)
  others = jnp.where(jnp.eye(n, dtype=bool), jnp.inf,
                     _pairwise_sq_distances(x, present))
  num_neighbours = jnp.minimum(jnp.maximum(m - num_byzantine - 2, 1), m - 1)
  nearest = jnp.arange(n) < num_neighbours
  scores = jnp.sum(jnp.where(nearest, jnp.sort(others, axis=1), 0.0), axis=1)
  return jnp.where(present, scores, jnp.inf)


def multi_krum(updates: jax.Array, weights: jax.Array, num_byzantine: int,
               num_selected: int) -> jax.Array:
  """Multi-Krum: the weighted mean of the clients with the lowest scores.

  The `num_selected` present clients with the lowest `krum_scores` (all
  present clients if fewer; ties go to the lower index) are averaged with
  their weights. `num_selected=1` is Krum.

  Args:
    updates: `[n, d]` the clients' messages.
    weights: `[n]` the clients' weights, 0 for absent clients.
    num_byzantine: f, the number of Byzantine clients tolerated (static).
    num_selected: how many clients to average (static, >= 1).

  Returns:
    `[d]` the weighted mean of the selected clients; zeros if no client is
    present.

  Examples:
    >>> multi_krum(jnp.array([[0.0], [1.0], [3.0]]), jnp.array([1., 3., 1.]),
    ...            num_byzantine=0, num_selected=2).tolist()
    [0.75]
  """
  if num_selected < 1:
    raise ValueError(f'num_selected must be >= 1, got {num_selected}.')
  present, x, w = _masked(updates, weights)
  scores = krum_scores(updates, weights, num_byzantine)
  # Present clients first, then by score, then by index.
  *_, order = lax.sort((~present, scores, jnp.arange(x.shape[0])),
                       num_keys=3)
  selected = jnp.zeros_like(present).at[order[:num_selected]].set(True)
  return _weighted_mean(jnp.where(selected, w, 0.0), x)


def geometric_median(updates: jax.Array, weights: jax.Array,
                     num_iters: int = 3,
                     smoothing: float = 1e-6) -> jax.Array:
  """RFA's smoothed Weiszfeld approximation of the weighted geometric median.

  From the weighted mean, `num_iters` times (Pillutla et al. 2022):
  v <- sum_i beta_i x_i / sum_i beta_i, beta_i = w_i / max(nu, ||v - x_i||),
  with nu = `smoothing`.

  Args:
    updates: `[n, d]` the clients' messages.
    weights: `[n]` the clients' weights, 0 for absent clients.
    num_iters: the number of Weiszfeld iterations (static).
    smoothing: nu > 0, the floor on the distances.

  Returns:
    `[d]` the estimate; zeros if no client is present.

  Examples:
    >>> geometric_median(jnp.array([[0.0], [1.0], [10.0]]), jnp.ones(3),
    ...                  num_iters=50).tolist()  # doctest: +ELLIPSIS
    [1.0...]
  """
  _, x, w = _masked(updates, weights)

  def step(_, v):
    distances = jnp.linalg.norm(x - v, axis=1)
    return _weighted_mean(w / jnp.maximum(smoothing, distances), x)

  return lax.fori_loop(0, num_iters, step, _weighted_mean(w, x))


def centered_clip(updates: jax.Array, weights: jax.Array, center: jax.Array,
                  radius: float | jax.Array, num_iters: int = 1) -> jax.Array:
  """Centered clipping (Karimireddy et al. 2021).

  From v = `center`, `num_iters` times:
  v <- v + sum_i w_i (x_i - v) min(1, r / ||x_i - v||) / sum_i w_i.
  Each step is a weighted average of vectors of norm at most r, so v moves
  by at most r per iteration. With no client present the step is zero and
  the center comes back unchanged.

  Args:
    updates: `[n, d]` the clients' messages.
    weights: `[n]` the clients' weights, 0 for absent clients.
    center: `[d]` the starting point (in the paper, the previous round's
      aggregate momentum).
    radius: r >= 0, the clipping radius.
    num_iters: the number of clipping iterations (static).

  Returns:
    `[d]` the clipped aggregate.

  Examples:
    >>> centered_clip(jnp.array([[3.0, 4.0], [0.0, 0.0]]), jnp.array([1., 0.]),
    ...               jnp.zeros(2), radius=1.0).tolist()
    [0.6000000238418579, 0.800000011920929]
  """
  _, x, w = _masked(updates, weights)

  def step(_, v):
    offsets = x - v
    norms = jnp.linalg.norm(offsets, axis=1)
    scale = jnp.minimum(1.0, radius / jnp.where(norms > 0, norms, 1.0))
    return v + _weighted_mean(w * scale, offsets, w)

  return lax.fori_loop(0, num_iters, step, center.astype(x.dtype))


def nearest_neighbor_mixing(updates: jax.Array, weights: jax.Array,
                            num_byzantine: int) -> jax.Array:
  """NNM: each present client's message becomes its neighbourhood's mean.

  Client i's new message is the plain average of the m - f present clients
  nearest to it, itself included (itself first; other ties go to the lower
  index); at least itself. Weights only say who is present (Allouah et al.
  2023 average uniformly).

  Args:
    updates: `[n, d]` the clients' messages.
    weights: `[n]` the clients' weights, 0 for absent clients.
    num_byzantine: f, the number of Byzantine clients tolerated (static).

  Returns:
    `[n, d]` the mixed messages; zeros in the rows of absent clients.

  Examples:
    >>> nearest_neighbor_mixing(jnp.array([[0.0], [1.0], [5.0]]), jnp.ones(3),
    ...                         num_byzantine=1).tolist()
    [[0.5], [0.5], [3.0]]
  """
  if num_byzantine < 0:
    raise ValueError(f'num_byzantine must be >= 0, got {num_byzantine}.')
  present, x, _ = _masked(updates, weights)
  n = x.shape[0]
  m = jnp.sum(present)
  distances = jnp.where(jnp.eye(n, dtype=bool), -1.0,
                        _pairwise_sq_distances(x, present))
  rank = jnp.argsort(jnp.argsort(distances, axis=1), axis=1)
  num_neighbours = jnp.maximum(m - num_byzantine, 1)
  mixing = (rank < num_neighbours) & present[:, None]
  return jnp.matmul(mixing.astype(x.dtype), x,
                    precision=lax.Precision.HIGHEST) / num_neighbours


def nearest_neighbor_average(updates: jax.Array, weights: jax.Array,
                             center: jax.Array,
                             num_byzantine: int) -> jax.Array:
  """MoNNA's averaging: the mean of the m - f present messages nearest to
  `center` (at least one; ties go to the lower index), unweighted as in
  Farhadkhani et al. 2023.

  Args:
    updates: `[n, d]` the clients' messages.
    weights: `[n]` the clients' weights, 0 for absent clients.
    center: `[d]` the reference the neighbours are nearest to.
    num_byzantine: f, the number of Byzantine clients tolerated (static).

  Returns:
    `[d]` the average; zeros when no client is present.

  Examples:
    >>> nearest_neighbor_average(jnp.array([[0.0], [1.0], [9.0]]),
    ...                          jnp.ones(3), jnp.array([0.5]),
    ...                          num_byzantine=1).tolist()
    [0.5]
  """
  if num_byzantine < 0:
    raise ValueError(f'num_byzantine must be >= 0, got {num_byzantine}.')
  present, x, _ = _masked(updates, weights)
  distances = jnp.sum((x - center) ** 2, axis=1)
  distances = jnp.where(present, jnp.nan_to_num(
      distances, nan=_FLOAT32_MAX, posinf=_FLOAT32_MAX), jnp.inf)
  rank = jnp.argsort(jnp.argsort(distances))
  num_neighbours = jnp.maximum(jnp.sum(present) - num_byzantine, 1)
  # Absent clients rank last (and are zeros when m = 0 picks one).
  chosen = (rank < num_neighbours).astype(x.dtype)
  return _weighted_mean(chosen, x)


def _masked(updates: jax.Array, weights: jax.Array
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Who is present, and the messages and weights with absent slots zeroed
  (so that not even an infinite or NaN absent message reaches a result)."""
  present = weights > 0
  x = jnp.where(present[:, None], updates, 0.0)
  return present, x, jnp.where(present, weights, 0.0).astype(x.dtype)


def _sort_present(x: jax.Array, present: jax.Array, weights: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
  """Sorts every coordinate's values, present clients first, carrying each
  value's client weight along; returns `[n, d]` values and weights."""
  absent = jnp.broadcast_to(~present[:, None], x.shape)
  _, values, sorted_weights = lax.sort(
      (absent, x, jnp.broadcast_to(weights[:, None], x.shape)),
      dimension=0, num_keys=2)
  return values, sorted_weights


def _median_of_sorted(values: jax.Array, weights: jax.Array) -> jax.Array:
  """The weighted median (as in `coordinate_median`) of values sorted along
  axis 0 with their weights. Where the total weight is 0 it picks the first
  value, which `_masked` has zeroed."""
  cumulative = jnp.cumsum(weights, axis=0)
  half = cumulative[-1] / 2
  low = jnp.argmax(cumulative >= half * (1 - _HALF_RTOL), axis=0)
  at_half = jnp.take_along_axis(cumulative, low[None], axis=0)[0] <= (
      half * (1 + _HALF_RTOL))
  high = jnp.minimum(low + 1, values.shape[0] - 1)
  low_value = jnp.take_along_axis(values, low[None], axis=0)[0]
  high_value = jnp.take_along_axis(values, high[None], axis=0)[0]
  return jnp.where(at_half, (low_value + high_value) / 2, low_value)


def _pairwise_sq_distances(x: jax.Array, present: jax.Array) -> jax.Array:
  """`[n, n]` squared distances between present clients by the Gram form,
  clamped at 0, overflow saturated at the float32 maximum (so a present
  client still orders before an absent one) and +inf wherever an absent
  client is involved. The callers set the diagonal."""
  sq_norms = jnp.sum(x * x, axis=1)
  gram = jnp.matmul(x, x.T, precision=lax.Precision.HIGHEST)
  distances = jnp.maximum(sq_norms[:, None] + sq_norms[None, :] - 2 * gram,
                          0.0)
  distances = jnp.nan_to_num(distances, nan=_FLOAT32_MAX,
                             posinf=_FLOAT32_MAX)
  return jnp.where(present[:, None] & present[None, :], distances, jnp.inf)


def _weighted_mean(weights: jax.Array, x: jax.Array,
                   denominator_weights: jax.Array | None = None
                   ) -> jax.Array:
  """sum_i weights_i x_i / sum_i denominator_weights_i (default: `weights`),
  zeros when the denominator is 0."""
  if denominator_weights is None:
    denominator_weights = weights
  total = jnp.sum(denominator_weights)
  return jnp.where(total > 0, jnp.tensordot(weights, x, axes=1)
                   / jnp.where(total > 0, total, 1.0), 0.0)
