"""How the compiled round turns the cohort's messages into one.

Either a Byzantine-robust rule over the individual messages
(`fedjax_core.robust_aggregation`, optionally after nearest-neighbour
mixing), or three composable stages, all inside the jitted round:

1. Client-level DP (`fedjax_core.dp`, McMahan et al. 2018): each message is
   clipped to the clip norm and the clients are weighted equally.
2. The sum over the clients whose messages arrived: a plain weighted sum, or
   secure aggregation (`fedjax_core.secure_aggregation`, Bonawitz et al.
   2017), which encodes each client's weighted message in Z_(2^b), masks it,
   and recovers only the modular sum of the survivors.
3. The server's estimate: with DP, Gaussian noise on the sum and the fixed
   denominator m; without, the sum over the total weight.

Secure aggregation cannot weight after the fact, so each client encodes
`(w_i / w_max) message_i` and `w_i / w_max` itself, w_max being the
cohort's largest weight (in a deployment, a public cap such as the round's
step budget times the batch); the ratio of the two sums is the weighted
mean. Clients that dropped after masking count nowhere: not in the sum, not
in `CohortInfo.num_clients`, and their new client state is discarded.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_core import dp
from fedjax_core import placement
from fedjax_core import robust_aggregation
from fedjax_core import secagg_protocol
from fedjax_core import secure_aggregation
from fedjax_core.secagg_protocol import SecAggRoundInputs

PyTree = Any
ROBUST_RULES = ('median', 'trimmed_mean', 'krum', 'multi_krum',
                'geometric_median', 'centered_clip', 'monna')
AGGREGATORS = ('mean', 'secure') + ROBUST_RULES
_SECAGG_STREAM, _NOISE_STREAM, _COUNT_STREAM = 0, 1, 2


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
      raise ValueError(f'--secagg_bits must be in [2, 32], got {self.bits}.')
    if not self.clip > 0:
      raise ValueError(f'--secagg_clip must be positive, got {self.clip!r}.')
    if self.scale is not None and not self.scale > 0:
      raise ValueError(f'--secagg_scale must be positive, got '
                       f'{self.scale!r}.')
    if not 0 <= self.dropout_fraction < 1:
      raise ValueError('--secagg_dropout_fraction must be in [0, 1), got '
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
  (Farhadkhani et al. 2023) is client momentum (`fedjax_core.uplink`) plus
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
      raise ValueError(f'Unknown robust rule {self.rule!r}; valid: '
                       f'{", ".join(ROBUST_RULES)}.')
    if self.rule == 'mean' and not self.nnm:
      raise ValueError('The plain mean is not a robust rule; add --nnm.')
    if self.num_byzantine < 0:
      raise ValueError(f'--robust_f must be >= 0, got {self.num_byzantine}.')
    positive = {'rfa_iters': self.rfa_iters, 'cc_iters': self.clip_iters}
    for name, value in positive.items():
      if value < 1:
        raise ValueError(f'--{name} must be positive, got {value}.')
    if not self.clip_radius > 0:
      raise ValueError(f'--cc_radius must be positive, got '
                       f'{self.clip_radius!r}.')
    if not self.rfa_smoothing > 0:
      raise ValueError(f'--rfa_smoothing must be positive, got '
                       f'{self.rfa_smoothing!r}.')

  def check_cohort(self, cohort_size: int) -> None:
    """Raises ValueError if `cohort_size` clients are too few for f."""
    f = self.num_byzantine
    needed = 2 * f + 1
    if self.rule in ('krum', 'multi_krum'):
      needed = 2 * f + 3  # Blanchard et al. 2017: n > 2f + 2.
    if cohort_size < needed:
      raise ValueError(
          f'--aggregator={self.rule} with --robust_f={f} needs at least '
          f'{needed} clients a round, got {cohort_size}; lower --robust_f '
          'or raise --clients_per_round.')
    if self.num_selected is not None and not (
        1 <= self.num_selected <= cohort_size):
      raise ValueError(f'--krum_selected must be in [1, {cohort_size}], '
                       f'got {self.num_selected}.')


class Aggregated(NamedTuple):
  """What the aggregation gives the rest of the round.

  Attributes:
    message: the server's estimate of the cohort's mean message.
    state: the aggregator's new state (the adaptive clip norm).
    metrics: scalar diagnostics.
    arrived: `[cohort]` bool, the real clients whose messages were counted.
  """

  message: PyTree
  state: dict[str, jax.Array]
  metrics: dict[str, jax.Array]
  arrived: jax.Array


class Aggregator:
  """Weighted mean, secure sum and client-level DP, as one pure function.

  Examples:
    >>> aggregate = Aggregator(secure=None, dp_config=None)
    >>> out = aggregate(aggregate.init_state(), messages, weights, ids,
    ...                 is_real, None, key)
  """

  def __init__(self, secure: secure_aggregation.SecAggConfig | None,
               dp_config: dp.DPConfig | None,
               robust: RobustAggregation | None = None):
    if robust is not None and (secure is not None or dp_config is not None):
      raise ValueError('A robust --aggregator needs every client\'s message '
                       'in the clear; it does not combine with secure '
                       'aggregation or client-level DP.')
    self.secure = secure
    self.dp = dp_config
    self.robust = robust

  def init_state(self, message_template: PyTree = None
                 ) -> dict[str, jax.Array]:
    """`{'clip_norm': C}` under adaptive clipping; `{'center': zeros}`, the
    size of one flattened message (`message_template`, arrays or
    `jax.ShapeDtypeStruct`s), under centered clipping and MoNNA (the
    previous round's aggregate); else empty."""
    if self.dp is not None and self.dp.adaptive:
      return {'clip_norm': jnp.float32(self.dp.clip_norm)}
    if self.robust is not None and self.robust.rule in ('centered_clip',
                                                          'monna'):
      size = sum(x.size for x in jax.tree.leaves(message_template))
      return {'center': jnp.zeros((size,), jnp.float32)}
    return {}

  def __call__(self, state: dict[str, jax.Array], messages: PyTree,
               weights: jax.Array, client_ids: jax.Array, is_real: jax.Array,
               secagg_inputs: SecAggRoundInputs | None,
               key: jax.Array) -> Aggregated:
    """Aggregates one round.

    Args:
      state: from `init_state` or the previous round.
      messages: the cohort's messages, leading axis = cohort.
      weights: `[cohort]` the algorithm's aggregation weights.
      client_ids: `[cohort]` global client ids.
      is_real: `[cohort]` float, 0 for clients that only pad the cohort.
      secagg_inputs: the round's protocol inputs (secure aggregation only).
      key: this round's aggregation key.
    """
    participating = is_real > 0
    arrived = participating
    if secagg_inputs is not None:
      arrived = participating & secagg_inputs.arrived
    if self.robust is not None:
      message, state = self._robust(state, messages, weights * participating)
      return Aggregated(message, state, {}, arrived)
    if self.dp is None and self.secure is None:
      return Aggregated(placement.reduce_weighted_mean(messages, weights),
                        state, {}, arrived)

    counted = arrived.astype(jnp.float32)
    num_counted = jnp.sum(counted)
    metrics, new_state = {}, dict(state)
    extra = []  # Per-client scalars summed along with the messages.
    if self.dp is None:
      weights = weights * counted
    else:
      clip_norm = state.get('clip_norm', jnp.float32(self.dp.clip_norm))
      messages, norms = jax.vmap(
          lambda m: dp.clip_update(m, clip_norm, self.dp.per_layer))(messages)
      unclipped = (norms <= clip_norm).astype(jnp.float32)
      metrics['dp_clipped_fraction'] = jnp.sum(
          counted * (1 - unclipped)) / jnp.maximum(num_counted, 1.0)
      metrics['dp_clip_norm'] = clip_norm
      weights = counted
      if self.dp.adaptive:
        extra.append(unclipped * counted)

    if self.secure is None:
      total = placement.reduce_weighted_sum(messages, weights)
      sums = [jnp.sum(weights)] + [jnp.sum(e) for e in extra]
    else:
      total, sums, secagg_metrics = self._secure_sum(
          messages, weights, extra, client_ids, participating, arrived,
          secagg_inputs, jax.random.fold_in(key, _SECAGG_STREAM))
      metrics.update(secagg_metrics)

    if self.dp is None:
      total_weight = sums[0]
      scale = jnp.where(total_weight > 0,
                        1.0 / jnp.where(total_weight > 0, total_weight, 1.0),
                        0.0)
      return Aggregated(jax.tree.map(lambda x: x * scale, total), new_state,
                        metrics, arrived)
    stddev = self.dp.update_noise_multiplier() * clip_norm
    noised = dp.add_gaussian_noise(
        total, jax.random.fold_in(key, _NOISE_STREAM), stddev)
    mean = jax.tree.map(lambda x: x / self.dp.expected_clients, noised)
    if self.dp.adaptive:
      fraction = dp.noisy_unclipped_fraction(
          sums[1], num_counted, jax.random.fold_in(key, _COUNT_STREAM),
          self.dp)
      metrics['dp_unclipped_fraction'] = fraction
      new_state['clip_norm'] = dp.next_clip_norm(clip_norm, fraction, self.dp)
    return Aggregated(mean, new_state, metrics, arrived)

  def _robust(self, state, messages, weights):
    """The robust rule over the flattened messages (`weights` 0 for
    absent clients); returns the estimate and the new state."""
    flat, unravel = placement.flatten_clients(messages)
    robust = self.robust
    f = robust.num_byzantine
    if robust.nnm:
      flat = robust_aggregation.nearest_neighbor_mixing(flat, weights, f)
    new_state = dict(state)
    if robust.rule == 'mean':
      estimate = placement.reduce_weighted_mean(flat, weights)
    elif robust.rule == 'monna':
      estimate = robust_aggregation.nearest_neighbor_average(
          flat, weights, state['center'], f)
      new_state['center'] = estimate
    elif robust.rule == 'median':
      estimate = robust_aggregation.coordinate_median(flat, weights)
    elif robust.rule == 'trimmed_mean':
      estimate = robust_aggregation.trimmed_mean(flat, weights, f)
    elif robust.rule in ('krum', 'multi_krum'):
      selected = 1
      if robust.rule == 'multi_krum':
        selected = robust.num_selected or flat.shape[0] - f
      estimate = robust_aggregation.multi_krum(flat, weights, f, selected)
    elif robust.rule == 'geometric_median':
      estimate = robust_aggregation.geometric_median(
          flat, weights, robust.rfa_iters, robust.rfa_smoothing)
    else:
      estimate = robust_aggregation.centered_clip(
          flat, weights, state['center'], robust.clip_radius,
          robust.clip_iters)
      new_state['center'] = estimate
    return unravel(estimate), new_state

  def _secure_sum(self, messages, weights, extra, client_ids, participating,
                  arrived, secagg_inputs, key):
    """Sums `(w_i / w_max) message_i`, `w_i / w_max` and `extra` securely.

    The scalars in [0, 1] travel as `clip * value`, inside the encoding's
    clipping range whatever the clip.
    """
    flat, unravel = placement.flatten_clients(messages)
    w_max = jnp.max(weights)
    relative = weights / jnp.where(w_max > 0, w_max, 1.0)
    scalars = jnp.stack([relative] + extra, axis=1) * self.secure.clip
    vectors = jnp.where(participating[:, None], jnp.concatenate(
        [flat * relative[:, None], scalars], axis=1), 0.0)
    sums, metrics = secure_aggregation.secure_sum(
        vectors, client_ids, participating, arrived, secagg_inputs, key,
        self.secure)
    size = flat.shape[1]
    return (unravel(sums[:size]), list(sums[size:] / self.secure.clip),
            metrics)
