"""The reducers of the channel: how the compiled round turns the cohort's
messages into one (`fedjax_core.channel`'s 'reduce' stages).

- `mean()`: the weighted mean of the messages that arrived.
- `secure_sum_stage`: secure aggregation (`fedjax_core.channel.secure_aggregation`,
  Bonawitz et al. 2017), which encodes each client's weighted message in
  Z_(2^b), masks it, and recovers only the modular sum of the survivors.
- `robust_stage`: a Byzantine-robust rule over the individual messages
  (`fedjax_core.channel.robust_aggregation`, optionally after nearest-neighbour
  mixing).

The mean and the secure sum provide a 'sum' (client-level DP's noise is
calibrated to it); robust rules do not, except through `centering_stage`
(centered clipping with one iteration written as centering, clipping and a
sum: DP-BREM's rule).

Secure aggregation cannot weight after the fact, so each client encodes
`(w_i / w_max) message_i` and `w_i / w_max` itself, w_max being the
cohort's largest weight (in a deployment, a public cap such as the round's
step budget times the batch); the ratio of the two sums is the weighted
mean. Clients that dropped after masking count nowhere: not in the sum, not
in `CohortInfo.num_clients`, and their new client state is discarded.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from fedjax_core import cohort
from fedjax_core.channel import robust_aggregation
from fedjax_core.channel import secagg_protocol
from fedjax_core.channel import secure_aggregation
from fedjax_core import streams
from fedjax_core.channel.stage import Aggregate, Stage
from fedjax_core.errors import SettingError

PyTree = Any
ROBUST_RULES = ('median', 'trimmed_mean', 'krum', 'multi_krum',
                'geometric_median', 'centered_clip', 'monna')
AGGREGATORS = ('mean', 'secure') + ROBUST_RULES


@dataclasses.dataclass(frozen=True)
class SecureAggregation:
  """Settings of secure aggregation.

  Attributes:
    bits: words live in Z_(2^bits), 2 <= bits <= 32.
    clip: every coordinate is clipped to [-clip, clip] before encoding.
    scale: fixed-point scale; None takes the largest power of two for which
      the cohort's sum cannot wrap.
    dropout_fraction: share of each round's cohort that drops after masking.
    threshold: t of the t-of-n secret sharing; None: a majority.
  """

  bits: int = 32
  clip: float = 1.0
  scale: float | None = None
  dropout_fraction: float = 0.0
  threshold: int | None = None

  def __post_init__(self):
    if not 2 <= self.bits <= 32:
      raise SettingError(
          'secure_aggregation.bits', 'Secure aggregation bits must be in '
          f'[2, 32] (words are uint32), got {self.bits}.')
    if not self.clip > 0:
      raise SettingError('secure_aggregation.clip', 'Secure aggregation '
                         f'clip must be positive, got {self.clip!r}.')
    if self.scale is not None and not self.scale > 0:
      raise SettingError(
          'secure_aggregation.scale', 'Secure aggregation scale must be '
          f'positive (or None for the largest safe one), got {self.scale!r}.')
    if not 0 <= self.dropout_fraction < 1:
      raise SettingError(
          'secure_aggregation.dropout_fraction', 'Secure aggregation '
          'dropout_fraction must be in [0, 1), got '
          f'{self.dropout_fraction!r}.')

  def check_cohort(self, cohort_size: int) -> None:
    """Raises ValueError if rounds of `cohort_size` participants cannot
    unmask: a threshold out of range, or too few survivors of the
    dropouts."""
    secagg_protocol.check_threshold(cohort_size, self.dropout_fraction,
                                    self.threshold)

  def config(self, cohort_capacity: int) -> secure_aggregation.SecAggConfig:
    """The encoding for cohorts of up to `cohort_capacity` clients; raises
    ValueError if their sum could overflow the modulus."""
    scale = self.scale
    if scale is None:
      scale = secure_aggregation.max_scale(cohort_capacity, self.clip,
                                           self.bits)
    config = secure_aggregation.SecAggConfig(self.bits, self.clip, scale)
    secure_aggregation.check_overflow(cohort_capacity, config)
    return config


@dataclasses.dataclass(frozen=True)
class RobustAggregation:
  """Settings of a Byzantine-robust aggregation rule.

  The rules see each client's flattened message (all leaves concatenated).
  Weights (the algorithm's, e.g. example counts) enter the median,
  geometric median, centered clipping, Multi-Krum's average of the selected
  and the mean after mixing; trimmed mean, Krum's scores, nearest-neighbour
  mixing and MoNNA count clients, not weight (a Byzantine client reports its
  own weight). Absent clients (padding, weight 0) count nowhere. MoNNA
  (Farhadkhani et al. 2023) is client momentum (`fedjax_core.channel.uplink`) plus
  the average of the n - f messages nearest the previous round's
  aggregate.

  Attributes:
    rule: one of `ROBUST_RULES`, or 'mean' with `nnm`.
    num_byzantine: f, the Byzantine clients per round the rule tolerates.
    nnm: nearest-neighbour mixing before the rule (Allouah et al. 2023).
    num_selected: Multi-Krum's m; None: the cohort size minus f.
    rfa_iters: smoothed Weiszfeld iterations of the geometric median.
    rfa_smoothing: its smoothing nu.
    clip_radius: centered clipping's radius tau.
    clip_iters: centered clipping's iterations.
    momentum: MoNNA's client momentum beta.
  """

  rule: str
  num_byzantine: int = 1
  nnm: bool = False
  num_selected: int | None = None
  rfa_iters: int = 3
  rfa_smoothing: float = 1e-6
  clip_radius: float = 1.0
  clip_iters: int = 1
  momentum: float = 0.9

  def __post_init__(self):
    if self.rule not in ROBUST_RULES + ('mean',):
      raise SettingError('robust.rule', f'Unknown robust rule {self.rule!r}; '
                         f'valid: {", ".join(ROBUST_RULES)}.')
    if self.rule == 'mean' and not self.nnm:
      raise SettingError('robust.nnm', 'The plain mean is not a robust '
                         'rule; turn on nnm (nearest-neighbour mixing) or '
                         'pick a robust rule.')
    if self.num_byzantine < 0:
      raise SettingError(
          'robust.num_byzantine', 'Robust aggregation\'s num_byzantine (the '
          'Byzantine clients tolerated) must be >= 0, got '
          f'{self.num_byzantine}.')
    iterations = {'rfa_iters': ('The geometric median\'s', self.rfa_iters),
                  'clip_iters': ('Centered clipping\'s', self.clip_iters)}
    for name, (whose, value) in iterations.items():
      if value < 1:
        raise SettingError(f'robust.{name}', f'{whose} {name} must be >= 1, '
                           f'got {value}.')
    if not self.clip_radius > 0:
      raise SettingError('robust.clip_radius', 'Centered clipping\'s '
                         'clip_radius must be positive, got '
                         f'{self.clip_radius!r}.')
    if not self.rfa_smoothing > 0:
      raise SettingError('robust.rfa_smoothing', 'The geometric median\'s '
                         'rfa_smoothing must be positive, got '
                         f'{self.rfa_smoothing!r}.')

  def check_cohort(self, cohort_size: int) -> None:
    """Raises `SettingError` if `cohort_size` clients are too few for f,
    or Multi-Krum's m is out of [1, cohort_size]."""
    f = self.num_byzantine
    needed = 2 * f + 1
    if self.rule in ('krum', 'multi_krum'):
      needed = 2 * f + 3  # Blanchard et al. 2017: n > 2f + 2.
    if cohort_size < needed:
      raise SettingError(
          'robust.num_byzantine',
          f'The robust rule {self.rule} tolerating num_byzantine={f} '
          f'Byzantine clients needs at least {needed} clients a round, got '
          f'{cohort_size}; lower num_byzantine or raise clients_per_round.')
    if self.num_selected is not None and not (
        1 <= self.num_selected <= cohort_size):
      raise SettingError(
          'robust.num_selected', 'Multi-Krum\'s num_selected (the clients '
          f'averaged) must be in [1, {cohort_size}] (the cohort), got '
          f'{self.num_selected}.')


def mean() -> Stage:
  """The weighted mean of the messages that arrived, as a 'reduce' stage.

  Examples:
    >>> pipeline = channel.chain(mean())
  """

  def apply(state, packets, ctx):
    weights = packets.weight * ctx.arrived
    aggregate = Aggregate(
        cohort.reduce_weighted_mean(packets.message, weights),
        jnp.sum(weights),
        {k: jnp.sum(v * ctx.arrived) for k, v in packets.tallies.items()},
        ctx.arrived)
    return aggregate, state, {}

  return Stage('mean', 'reduce', apply, provides=frozenset({'sum'}))


def secure_sum_stage(config: secure_aggregation.SecAggConfig) -> Stage:
  """Secure aggregation's masked modular sum as a 'reduce' stage.

  Secure aggregation cannot weight after the fact, so each client encodes
  `(w_i / w_max) message_i` and `w_i / w_max` itself, w_max being the
  cohort's largest weight (in a deployment, a public cap such as the
  round's step budget times the batch); the ratio of the two sums is the
  weighted mean. The tallies (scalars in [0, 1]) travel as `clip * value`,
  inside the encoding's clipping range whatever the clip. Clients that
  dropped after masking count nowhere.

  Examples:
    >>> stage = secure_sum_stage(SecureAggregation().config(10))
  """

  def apply(state, packets, ctx):
    participating = ctx.is_real
    weights = packets.weight * ctx.arrived
    flat, unravel = cohort.flatten_clients(packets.message)
    w_max = jnp.max(weights)
    relative = weights / jnp.where(w_max > 0, w_max, 1.0)
    names = sorted(packets.tallies)
    scalars = jnp.stack([relative] + [packets.tallies[k] for k in names],
                        axis=1) * config.clip
    vectors = jnp.where(participating[:, None], jnp.concatenate(
        [flat * relative[:, None], scalars], axis=1), 0.0)
    sums, metrics = secure_aggregation.secure_sum(
        vectors, ctx.client_ids, participating, ctx.arrived, ctx.secagg,
        jax.random.fold_in(ctx.key, streams.SECURE_SUM), config)
    size = flat.shape[1]
    scalar_sums = sums[size:] / config.clip
    total_weight = scalar_sums[0]
    scale = jnp.where(total_weight > 0,
                      1.0 / jnp.where(total_weight > 0, total_weight, 1.0),
                      0.0)
    aggregate = Aggregate(
        jax.tree.map(lambda x: x * scale, unravel(sums[:size])),
        total_weight * w_max,
        {k: scalar_sums[1 + i] for i, k in enumerate(names)}, ctx.arrived)
    return aggregate, state, metrics

  return Stage('secure aggregation', 'reduce', apply,
               stream=streams.AGGREGATION, provides=frozenset({'sum'}))


def robust_stage(settings: RobustAggregation) -> Stage:
  """A Byzantine-robust rule over the flattened messages as a 'reduce'
  stage; its state is the previous round's aggregate under centered
  clipping and MoNNA.

  Examples:
    >>> stage = robust_stage(RobustAggregation('median', num_byzantine=1))
  """
  keeps_center = settings.rule in ('centered_clip', 'monna')

  def init(template):
    if not keeps_center:
      return ()
    size = sum(x.size for x in jax.tree.leaves(template))
    return jnp.zeros((size,), jnp.float32)

  def apply(center, packets, ctx):
    weights = packets.weight * ctx.is_real
    flat, unravel = cohort.flatten_clients(packets.message)
    estimate = _robust_estimate(settings, flat, weights, center)
    if keeps_center:
      center = estimate
    return (Aggregate(unravel(estimate), jnp.sum(weights), {}, ctx.arrived),
            center, {})

  return Stage(f'robust {settings.rule}', 'reduce', apply, init=init)


def _robust_estimate(robust: RobustAggregation, flat: jax.Array,
                     weights: jax.Array, center: jax.Array) -> jax.Array:
  """The robust rule over `[cohort, d]` messages (`weights` 0 for absent
  clients)."""
  f = robust.num_byzantine
  if robust.nnm:
    flat = robust_aggregation.nearest_neighbor_mixing(flat, weights, f)
  if robust.rule == 'mean':
    return cohort.reduce_weighted_mean(flat, weights)
  if robust.rule == 'monna':
    return robust_aggregation.nearest_neighbor_average(flat, weights, center,
                                                       f)
  if robust.rule == 'median':
    return robust_aggregation.coordinate_median(flat, weights)
  if robust.rule == 'trimmed_mean':
    return robust_aggregation.trimmed_mean(flat, weights, f)
  if robust.rule in ('krum', 'multi_krum'):
    selected = 1
    if robust.rule == 'multi_krum':
      selected = robust.num_selected or flat.shape[0] - f
    return robust_aggregation.multi_krum(flat, weights, f, selected)
  if robust.rule == 'geometric_median':
    return robust_aggregation.geometric_median(
        flat, weights, robust.rfa_iters, robust.rfa_smoothing)
  return robust_aggregation.centered_clip(flat, weights, center,
                                          robust.clip_radius,
                                          robust.clip_iters)


def centering_stage() -> Stage:
  """Messages centered on the previous round's aggregate v: `x_i - v` on
  the way in, `v + aggregate` on the way out (the new v). Followed by
  client-level DP's clipping and a sum, this is centered clipping with one
  iteration, v + (1/m) sum_i clip(x_i - v, S): DP-BREM's robust rule, whose
  sensitivity is the clip norm S (Gu et al. 2023).

  Examples:
    >>> pipeline = channel.chain(centering_stage(), dp.client_dp_stage(c),
    ...                          mean())
  """

  def init(template):
    return jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), template)

  def apply(center, packets, ctx):
    del ctx
    centered = jax.tree.map(lambda x, v: x - v[None], packets.message,
                            center)
    return packets._replace(message=centered), center, {}

  def finish(center, aggregate, ctx):
    del ctx
    mean = jax.tree.map(jnp.add, aggregate.mean, center)
    return aggregate._replace(mean=mean), mean, {}

  return Stage('centering', 'cohort', apply, init=init, finish=finish)
