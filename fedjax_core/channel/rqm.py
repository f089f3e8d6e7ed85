"""The Randomized Quantization Mechanism (RQM) and its Renyi-DP accounting.

Youn, Hu, Ziani and Abernethy 2023, "Randomized Quantization is All You
Need for Differential Privacy in Federated Learning" (arXiv 2306.11913):
privacy "through a two-levels of randomization. More precisely, we randomly
sub-sample feasible quantization levels, then employ a randomized rounding
procedure using these sub-sampled discrete levels" (abstract).

The mechanism, per coordinate, for an input clipped to [-c, c]:

- m evenly spaced levels B(k) = -(c + Delta) + 2 k (c + Delta) / (m - 1),
  k = 0..m-1, i.e. the grid spans [-(c + Delta), c + Delta]; Delta > 0 is
  what makes the output distributions of x = -c and x = c overlap;
- the two end levels are always kept; each interior level is kept
  independently with probability q;
- x is rounded to one of the two kept levels around it, up with
  probability (x - B_lo) / (B_up - B_lo), so E[output] = x.

Only the two kept neighbours of x matter, and the number of dropped levels
below (above) x before the first kept one is geometric with parameter q,
truncated at the end level; `rqm_quantize` samples those two gaps instead
of a keep mask over all m levels, so it needs O(1) memory per coordinate.

Privacy accounting: `rqm_renyi_dp` is NOT a transcription of the paper's
closed-form theorem (its text was not available when this was written). It
computes the exact Renyi DP of the scalar mechanism: the output law P_x is
piecewise affine in x with breaks at the levels, and for alpha > 1
sum_k P_x(k)^alpha P_x'(k)^(1 - alpha) is jointly convex in (P_x, P_x'),
so its maximum over the input pairs is attained at a vertex of the pieces;
enumerating those vertices gives sup D_alpha(P_x || P_x') exactly (the
worst pair is not always (-c, c): e.g. m = 8, q = 0.104, Delta = 1.127,
alpha = 64 peaks at x = the first level inside [-c, c]). Renyi
divergence adds over independent coordinates (Mironov 2017, Prop. 1), so a
d-coordinate vector whose coordinates may all change costs d times that.
`rqm_epsilon` converts T compositions to (epsilon, delta)-DP with
`dp_accounting`'s conversion (Canonne, Kamath and Steinke 2020, Prop. 12).

In the simulator, `rqm_stage` quantizes every client's message (each
coordinate clipped to [-c, c]) as a 'client' stage of the channel, alone or
under secure aggregation. Its accountant (`RQMPrivacy`) reports the epsilon
of one client's messages over the rounds run, as if the client took part in
every round, each message released in the clear: no amplification by
sampling and no credit for secure aggregation, which only post-processes
the quantized messages, so the bound holds in both settings.
"""

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from dp_accounting.rdp import rdp_privacy_accountant

from fedjax_core import streams
from fedjax_core.channel.stage import Stage
from fedjax_core.errors import SettingError

PyTree = Any
_DEFAULT_ORDERS = (1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0,
                   10.0, 12.0, 16.0, 20.0, 24.0, 32.0, 48.0, 64.0, 128.0,
                   256.0)


def _check(clip, num_levels, keep_probability, extension):
  if not isinstance(num_levels, (int, np.integer)) or num_levels < 2:
    raise ValueError(f'num_levels must be an int >= 2, got {num_levels}.')
  if not clip > 0:
    raise ValueError(f'clip must be > 0, got {clip}.')
  if not extension >= 0:
    raise ValueError(f'extension must be >= 0, got {extension}.')
  if isinstance(keep_probability, (int, float, np.floating)):
    if not 0.0 <= keep_probability <= 1.0:
      raise ValueError(
          f'keep_probability must be in [0, 1], got {keep_probability}.')


def rqm_levels(*, clip: float, num_levels: int,
               extension: float) -> np.ndarray:
  """The m levels B(k) = -X + 2 k X / (m - 1), X = clip + extension."""
  _check(clip, num_levels, 0.5, extension)
  top = float(clip) + float(extension)
  return -top + (2.0 * top / (num_levels - 1)) * np.arange(num_levels)


def rqm_quantize(key: jax.Array, x: jax.Array, *, clip: float,
                 num_levels: int, keep_probability: float | jax.Array,
                 extension: float) -> jax.Array:
  """Applies RQM independently to every coordinate of a float array.

  `clip`, `num_levels` and `extension` (Delta in the paper) are Python
  numbers fixed at trace time; `keep_probability` (q) may be traced.

  Args:
    key: a PRNG key.
    x: a float array; values outside [-clip, clip] are clipped first.
    clip: c, the clipping radius of the input.
    num_levels: m >= 2, the number of quantization levels.
    keep_probability: q, the probability that an interior level is kept.
    extension: Delta >= 0, how far the grid extends past [-c, c].

  Returns:
    An array of x's shape and dtype whose entries are levels of
    `rqm_levels(...)`, so in [-(clip + extension), clip + extension] (not
    [-clip, clip]), with E[output] = clip(x).

  Examples:
    >>> y = rqm_quantize(key, update, clip=0.1, num_levels=16,
    ...                  keep_probability=0.5, extension=0.05)
  """
  _check(clip, num_levels, keep_probability, extension)
  return _quantize(key, jnp.asarray(x), keep_probability, clip=float(clip),
                   num_levels=int(num_levels), extension=float(extension))


@functools.partial(jax.jit,
                   static_argnames=('clip', 'num_levels', 'extension'))
def _quantize(key, x, keep_probability, *, clip, num_levels, extension):
  """`rqm_quantize`, compiled once per (clip, num_levels, extension)."""
  dtype = x.dtype
  m = num_levels
  levels_np = rqm_levels(clip=clip, num_levels=m, extension=extension)
  levels = jnp.asarray(levels_np, dtype)
  top = float(clip) + float(extension)
  x = jnp.clip(x, -clip, clip)

  # i_star: the highest level <= x among 0..m-2, fixed up after the float
  # division so that it agrees with the level table.
  step = 2.0 * top / (m - 1)
  i_star = jnp.clip(jnp.floor((x + top) / step), 0, m - 2).astype(jnp.int32)
  i_star = i_star - ((levels[i_star] > x) & (i_star > 0)).astype(jnp.int32)
  nxt = jnp.minimum(i_star + 1, m - 2)
  i_star = i_star + ((levels[nxt] <= x) & (nxt > i_star)).astype(jnp.int32)

  # Dropped interior levels below / above x before the first kept one:
  # P(G >= k) = (1 - q)^k, via G = floor(log U / log(1 - q)), U in (0, 1].
  u = jax.random.uniform(key, (3,) + x.shape, jnp.float32)
  q = jnp.asarray(keep_probability, jnp.float32)
  log_drop = jnp.log1p(-jnp.minimum(q, 1.0 - 1e-7))

  def gap(v):
    g = jnp.floor(jnp.log1p(-v) / log_drop)  # log U for U = 1 - v in (0, 1].
    g = jnp.where(q >= 1.0, 0.0, jnp.where(q <= 0.0, float(m), g))
    return jnp.minimum(g, float(m)).astype(jnp.int32)

  lower = jnp.maximum(i_star - gap(u[0]), 0)
  upper = jnp.minimum(i_star + 1 + gap(u[1]), m - 1)
  b_lo, b_up = levels[lower], levels[upper]
  p_up = jnp.clip((x - b_lo) / (b_up - b_lo), 0.0, 1.0)
  go_up = u[2] < p_up
  return jnp.where(go_up, b_up, b_lo).astype(dtype)


def rqm_tree(key: jax.Array, tree: PyTree, **kwargs) -> PyTree:
  """`rqm_quantize` on every leaf of `tree`, with an independent key each.

  Examples:
    >>> q_update = rqm_tree(key, update, clip=0.1, num_levels=16,
    ...                     keep_probability=0.5, extension=0.05)
  """
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, max(len(leaves), 1))
  return jax.tree.unflatten(
      treedef, [rqm_quantize(k, leaf, **kwargs)
                for k, leaf in zip(keys, leaves)])


def rqm_output_distribution(x: float, *, clip: float, num_levels: int,
                            keep_probability: float,
                            extension: float) -> np.ndarray:
  """Exact probability of each of the m levels as RQM's output for x.

  Closed form in O(m^2): the kept neighbours below and above x are
  independent; the lower one is level i <= i_star with probability
  pi_i (1 - q)^(i_star - i), the upper one level j > i_star with
  probability pi_j (1 - q)^(j - i_star - 1) (pi = 1 at the two ends, q
  inside); given them, x goes up with probability
  (x - B_i) / (B_j - B_i).

  Args:
    x: a scalar input, clipped to [-clip, clip].
    clip: c.
    num_levels: m.
    keep_probability: q.
    extension: Delta.

  Returns:
    A float64 array of shape [m] that sums to 1 and has mean x.
  """
  _check(clip, num_levels, keep_probability, extension)
  m, q = num_levels, float(keep_probability)
  levels = rqm_levels(clip=clip, num_levels=m, extension=extension)
  x = float(np.clip(x, -clip, clip))
  i_star = int(np.searchsorted(levels, x, side='right')) - 1
  i_star = min(max(i_star, 0), m - 2)
  keep = np.full(m, q)
  keep[0] = keep[-1] = 1.0
  idx = np.arange(m)
  low = np.where(idx <= i_star, keep * (1.0 - q)**np.maximum(i_star - idx, 0),
                 0.0)
  high = np.where(idx > i_star,
                  keep * (1.0 - q)**np.maximum(idx - i_star - 1, 0), 0.0)
  gap = levels[None, :] - levels[:, None]
  with np.errstate(divide='ignore', invalid='ignore'):
    w = np.where(gap > 0, low[:, None] * high[None, :] / gap, 0.0)
  out = w.T @ (x - levels)       # Mass rounded up to j.
  out += w @ (levels - x)        # Mass rounded down to i.
  return out


def _pair_divergences(log_p, log_q, alpha):
  """D_alpha(P_r || Q_r) for each row r; +inf where supp P not in supp Q."""
  with np.errstate(invalid='ignore'):
    t = alpha * log_p + (1.0 - alpha) * log_q
  t = np.where(np.isneginf(log_p), -np.inf, t)
  t = np.where(np.isneginf(log_q) & ~np.isneginf(log_p), np.inf, t)
  top = np.max(t, axis=1, keepdims=True)
  with np.errstate(invalid='ignore', over='ignore'):
    s = top[:, 0] + np.log(np.sum(np.exp(t - top), axis=1))
  s = np.where(np.isposinf(top[:, 0]), np.inf, s)
  return s / (alpha - 1.0)


def _candidate_pairs(clip, levels, sensitivity):
  """Vertices of the affine pieces of (x, x') -> (P_x, P_x')."""
  inner = levels[(levels > -clip) & (levels < clip)]
  points = np.unique(np.concatenate([[-clip, clip], inner]))
  a, b = np.meshgrid(points, points, indexing='ij')
  a, b = a.ravel(), b.ravel()
  if sensitivity is None or sensitivity >= 2 * clip:
    return a, b
  s = float(sensitivity)
  keep = np.abs(a - b) <= s
  a, b = list(a[keep]), list(b[keep])
  for p in points:
    for shifted in (p - s, p + s):
      if -clip <= shifted <= clip:
        a += [p, shifted]
        b += [shifted, p]
  return np.asarray(a), np.asarray(b)


def rqm_renyi_dp(alpha: float | Sequence[float], *, clip: float,
                 num_levels: int, keep_probability: float, extension: float,
                 sensitivity: float | None = None,
                 num_coordinates: int = 1) -> float | np.ndarray:
  """Exact Renyi-DP epsilon(alpha) of one application of RQM.

  NOT the closed-form bound of Youn et al. 2023 (whose theorem text was not
  available here) but the exact value it would bound: the supremum of
  D_alpha(P_x || P_x') over inputs x, x' in [-clip, clip] with
  |x - x'| <= sensitivity (any pair if None), found by enumerating the
  vertices of the pieces on which (x, x') -> (P_x, P_x') is affine (the
  objective is convex there, so the maximum is at a vertex), times
  `num_coordinates` for a vector whose coordinates are quantized
  independently and may all change (Renyi divergence adds over independent
  coordinates).

  Args:
    alpha: one order > 1 or a sequence of them.
    clip: c.
    num_levels: m.
    keep_probability: q.
    extension: Delta.
    sensitivity: the largest |x - x'| of neighbouring inputs per
      coordinate; None for any pair in [-clip, clip].
    num_coordinates: d, the number of coordinates released.

  Returns:
    epsilon(alpha) (a float, or an array for a sequence); +inf when the
    output supports differ (e.g. extension == 0 or keep_probability == 1).

  Examples:
    >>> rqm_renyi_dp([2.0, 8.0], clip=1.0, num_levels=8,
    ...              keep_probability=0.5, extension=1.0)
  """
  _check(clip, num_levels, keep_probability, extension)
  orders = np.atleast_1d(np.asarray(alpha, np.float64))
  if np.any(orders <= 1.0):
    raise ValueError(f'Renyi orders must be > 1, got {alpha}.')
  levels = rqm_levels(clip=clip, num_levels=num_levels, extension=extension)
  a, b = _candidate_pairs(float(clip), levels, sensitivity)
  xs, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
  pmfs = np.stack([
      rqm_output_distribution(v, clip=clip, num_levels=num_levels,
                              keep_probability=keep_probability,
                              extension=extension) for v in xs])
  with np.errstate(divide='ignore'):
    log_pmfs = np.log(np.maximum(pmfs, 0.0))
  ia, ib = inverse[:len(a)], inverse[len(a):]
  eps = np.array([np.max(_pair_divergences(log_pmfs[ia], log_pmfs[ib], o))
                  for o in orders])
  eps = np.maximum(eps, 0.0) * num_coordinates
  return float(eps[0]) if np.ndim(alpha) == 0 else eps


def rqm_epsilon(*, num_compositions: int, target_delta: float,
                orders: Sequence[float] = _DEFAULT_ORDERS,
                **mechanism) -> tuple[float, float]:
  """(epsilon, delta)-DP of `num_compositions` adaptive uses of RQM.

  RDP composes additively (Mironov 2017, Prop. 1): the curve is T times
  `rqm_renyi_dp(orders, **mechanism)`, converted to epsilon at
  `target_delta` by `dp_accounting`'s `rdp_privacy_accountant.
  compute_epsilon`. No amplification by client sampling is applied.

  Args:
    num_compositions: T, e.g. the number of rounds a client takes part in.
    target_delta: delta.
    orders: Renyi orders > 1 to optimize over.
    **mechanism: the keyword arguments of `rqm_renyi_dp`.

  Returns:
    (epsilon, the optimal order).

  Examples:
    >>> eps, order = rqm_epsilon(num_compositions=100, target_delta=1e-5,
    ...                          clip=1.0, num_levels=8,
    ...                          keep_probability=0.5, extension=1.0)
  """
  rdp = num_compositions * np.asarray(rqm_renyi_dp(list(orders),
                                                   **mechanism))
  eps, order = rdp_privacy_accountant.compute_epsilon(
      list(orders), list(rdp), target_delta)
  return float(eps), float(order)


@dataclasses.dataclass(frozen=True)
class RQMSettings:
  """Settings of RQM on the clients' messages.

  Attributes:
    clip: c, every coordinate is clipped to [-c, c].
    num_levels: m >= 2 quantization levels.
    keep_probability: q, the chance an interior level is kept.
    extension: Delta > 0, how far the grid extends past [-c, c].
    delta: the delta of the reported (epsilon, delta).
  """

  clip: float = 0.01
  num_levels: int = 16
  keep_probability: float = 0.5
  extension: float = 0.01
  delta: float = 1e-5

  def __post_init__(self):
    if not self.clip > 0:
      raise SettingError('rqm.clip', f'RQM\'s clip must be positive, got '
                         f'{self.clip!r}.')
    if self.num_levels < 2:
      raise SettingError('rqm.num_levels', 'RQM needs at least 2 levels, '
                         f'got {self.num_levels}.')
    if not 0 < self.keep_probability <= 1:
      raise SettingError('rqm.keep_probability', 'RQM\'s keep probability '
                         f'must be in (0, 1], got {self.keep_probability!r}.')
    if not self.extension > 0:
      raise SettingError('rqm.extension', 'RQM\'s extension must be '
                         f'positive (0 gives no privacy), got '
                         f'{self.extension!r}.')
    if not 0 < self.delta < 1:
      raise SettingError('rqm.delta', f'delta must be in (0, 1), got '
                         f'{self.delta!r}.')

  def mechanism(self) -> dict[str, float]:
    """The keyword arguments of `rqm_quantize` and `rqm_renyi_dp`."""
    return dict(clip=self.clip, num_levels=self.num_levels,
                keep_probability=self.keep_probability,
                extension=self.extension)


class RQMPrivacy:
  """The (epsilon, delta) of one client's RQM messages after T rounds.

  Examples:
    >>> RQMPrivacy(RQMSettings(), num_coordinates=100).epsilon(10)
  """

  def __init__(self, settings: RQMSettings, num_coordinates: int,
               orders: Sequence[float] = _DEFAULT_ORDERS):
    self.settings = settings
    self._orders = list(orders)
    self._rdp = np.asarray(rqm_renyi_dp(
        self._orders, num_coordinates=num_coordinates,
        **settings.mechanism()))

  def epsilon(self, rounds: int) -> float:
    """epsilon after `rounds` rounds; 0 before the first."""
    if rounds == 0:
      return 0.0
    eps, _ = rdp_privacy_accountant.compute_epsilon(
        self._orders, list(rounds * self._rdp), self.settings.delta)
    return float(eps)

  def describe(self, rounds: int) -> str:
    """One line on the mechanism and what `rounds` rounds spend."""
    s = self.settings
    return (f'RQM on every coordinate (clip {s.clip:g}, {s.num_levels} '
            f'levels, keep probability {s.keep_probability:g}, extension '
            f'{s.extension:g}); each client\'s messages over {rounds} rounds '
            f'spend epsilon {self.epsilon(rounds):.4g} at delta {s.delta:g} '
            '(every round, no amplification by sampling)')

  def summary(self, rounds: int) -> dict[str, float]:
    """The run summary's privacy entries."""
    return {'epsilon': self.epsilon(rounds), 'dp_delta': self.settings.delta,
            'privacy_mechanism': 'rqm'}


def rqm_stage(settings: RQMSettings, accountant: RQMPrivacy | None = None
              ) -> Stage:
  """RQM on every coordinate of the client's message, as a 'client' stage.

  Examples:
    >>> stage = rqm_stage(RQMSettings(clip=0.05))
  """

  def apply(state, packet, key):
    message = rqm_tree(key, packet.message, **settings.mechanism())
    return packet._replace(message=message), state, {}

  return Stage('RQM', 'client', apply, stream=streams.RQM,
               accountant=accountant)
