"""Client-level differential privacy: clipping, Gaussian noise, adaptive clip.

DP-FedAvg (McMahan, Ramage, Talwar and Zhang, ICLR 2018, "Learning
Differentially Private Recurrent Language Models", Algorithm 1): each
client's update is clipped to L2 norm S (flat, or per layer with the layer
bounds S_l summing in squares to S^2), the server sums the clipped updates,
adds N(0, (z S)^2) to every coordinate and divides by the expected cohort
size m = qN, not the realized one (the fixed-denominator estimator, whose
sensitivity does not depend on who was sampled).

Adaptive clipping (Andrew, Thakkar, McMahan and Ramaswamy, NeurIPS 2021,
"Differentially Private Learning with Adaptive Clipping"): each client also
reports b_i = 1[||Delta_i|| <= C]; the server estimates the unclipped
fraction from the noised sum of b_i - 1/2 (noise std sigma_b) and moves C
geometrically toward the target quantile gamma,
C <- C exp(-eta (b_bar - gamma)). Paying for the count out of the same
budget leaves the updates the noise multiplier
z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2).

All functions are pure and jittable; `client_dp_stage` runs them inside
the compiled round as a 'cohort' stage of the channel: it clips the
messages on their way to the reducer, and on the aggregate's way out adds
the noise, applies the fixed denominator and moves the clip.

The noise is calibrated to the sensitivity of the reducer's sum of clipped
messages, S for adding or removing one client; so the stage needs a
reducer that provides a 'sum' (the mean or secure aggregation). A robust
rule in DP-BREM (Gu et al. 2023, "DP-BREM: Differentially-Private and
Byzantine-Robust Federated Learning with Client Momentum") is centered
clipping of the clients' momenta with one iteration: v + (1/m) sum_i
clip(x_i - v, S), i.e. this stage on the centered messages x_i - v
(`fedjax_core.channel.aggregation.centering_stage`), whose sensitivity is again S.
"""

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from fedjax_core import streams
from fedjax_core.channel.stage import Packet, Stage
from fedjax_core.errors import SettingError

PyTree = Any
_NORM_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class DPConfig:
  """Client-level DP-FedAvg settings.

  Attributes:
    clip_norm: S, the L2 bound of every client's update (the initial bound
      under adaptive clipping).
    noise_multiplier: z; the sum of the clipped updates gets noise of std
      z * S per coordinate (z_Delta * S under adaptive clipping). 0 clips
      without noise (no privacy).
    expected_clients: the fixed denominator m = qN, the expected cohort.
    per_layer: clip each leaf of the update to S / sqrt(L) instead of the
      whole update to S (both bound the update's norm by S).
    target_quantile: gamma of adaptive clipping; None keeps S fixed.
    clip_learning_rate: eta of the geometric clip update (Andrew et al.: 0.2).
    count_stddev: sigma_b, the noise std of the unclipped count; None takes
      Andrew et al.'s m / 20.
  """

  clip_norm: float
  noise_multiplier: float
  expected_clients: float
  per_layer: bool = False
  target_quantile: float | None = None
  clip_learning_rate: float = 0.2
  count_stddev: float | None = None

  def __post_init__(self):
    if not self.clip_norm > 0:
      raise SettingError('client_dp.clip_norm', 'Client-level DP clip_norm '
                         f'must be positive, got {self.clip_norm!r}.')
    if not self.noise_multiplier >= 0:
      raise SettingError('client_dp.noise_multiplier', 'Client-level DP '
                         'noise_multiplier must be >= 0, got '
                         f'{self.noise_multiplier!r}.')
    if not self.expected_clients > 0:
      raise ValueError('The expected cohort must be positive, got '
                       f'{self.expected_clients!r}.')
    if self.target_quantile is not None:
      if not 0 < self.target_quantile < 1:
        raise SettingError('client_dp.target_quantile', 'Adaptive '
                           'clipping\'s target_quantile must be in (0, 1), '
                           f'got {self.target_quantile!r}.')
      if not self.clip_learning_rate > 0:
        raise SettingError('client_dp.clip_learning_rate', 'Adaptive '
                           'clipping\'s clip_learning_rate must be '
                           f'positive, got {self.clip_learning_rate!r}.')
      self.update_noise_multiplier()  # Raises if sigma_b is too small.

  @property
  def adaptive(self) -> bool:
    return self.target_quantile is not None

  @property
  def clipped_count_stddev(self) -> float:
    """sigma_b: the given one, else m / 20."""
    if self.count_stddev is not None:
      return self.count_stddev
    return self.expected_clients / 20

  def update_noise_multiplier(self) -> float:
    """The noise multiplier of the update sum: z, or z_Delta when adaptive
    clipping spends part of the budget on the unclipped count."""
    z = self.noise_multiplier
    if not self.adaptive or z == 0:
      return z
    two_sigma_b = 2 * self.clipped_count_stddev
    if not two_sigma_b > z:
      raise SettingError(
          'client_dp.count_stddev',
          'Adaptive clipping needs 2 * sigma_b > z: sigma_b = count_stddev '
          f'= {self.clipped_count_stddev:g} leaves no budget for the '
          f'updates at noise_multiplier z = {z:g}. Raise count_stddev (or '
          'the cohort) or lower the noise multiplier.')
    return (z**-2 - two_sigma_b**-2)**-0.5


def clip_update(update: PyTree, clip_norm: jax.Array, per_layer: bool = False
                ) -> tuple[PyTree, jax.Array]:
  """Scales `update` so its L2 norm is at most `clip_norm`.

  Flat: u * min(1, S / ||u||). Per layer: each of the L leaves is clipped
  the same way to S / sqrt(L), so the whole update's norm is at most S.

  Returns:
    The clipped update and the norm of the update before clipping.

  Examples:
    >>> clipped, norm = clip_update({'w': jnp.array([3.0, 4.0])}, 1.0)
    >>> float(norm), clipped['w'].tolist()
    (5.0, [0.6000000238418579, 0.800000011920929])
  """
  norm = optax.tree.norm(update)
  if per_layer:
    bound = clip_norm / math.sqrt(len(jax.tree.leaves(update)))
    return jax.tree.map(lambda x: _clip_array(x, bound), update), norm
  scale = jnp.minimum(1.0, clip_norm / (norm + _NORM_EPS))
  return jax.tree.map(lambda x: x * scale.astype(x.dtype), update), norm


def clip_cohort(messages: PyTree, clip_norm: jax.Array, counted: jax.Array,
                per_layer: bool = False
                ) -> tuple[PyTree, jax.Array, jax.Array]:
  """Every message of a cohort (leading axis) clipped by `clip_update`.

  Args:
    messages: the cohort's messages, stacked.
    clip_norm: S.
    counted: `[cohort]` float, 1 for the clients the share counts.
    per_layer: clip each layer to S / sqrt(L).

  Returns:
    The clipped messages, `[cohort]` float 1 where a message's norm was at
    most S, and the share of the counted clients whose message was clipped.
  """
  clipped, norms = jax.vmap(
      lambda m: clip_update(m, clip_norm, per_layer))(messages)
  unclipped = (norms <= clip_norm).astype(jnp.float32)
  share = (jnp.sum(counted * (1 - unclipped))
           / jnp.maximum(jnp.sum(counted), 1.0))
  return clipped, unclipped, share


def _clip_array(x: jax.Array, bound: jax.Array) -> jax.Array:
  norm = jnp.linalg.norm(x.ravel())
  return x * jnp.minimum(1.0, bound / (norm + _NORM_EPS)).astype(x.dtype)


def add_gaussian_noise(tree: PyTree, key: jax.Array, stddev: jax.Array
                       ) -> PyTree:
  """Adds independent N(0, stddev^2) to every coordinate of every leaf.

  One draw for the whole flattened tree: a draw per leaf compiles a random
  generator per leaf, which doubled the MLP round's compile time.
  """
  flat, unravel = ravel_pytree(tree)
  return unravel(flat + stddev * jax.random.normal(key, flat.shape,
                                                   flat.dtype))


def noisy_unclipped_fraction(unclipped_count: jax.Array,
                             num_counted: jax.Array, key: jax.Array,
                             config: DPConfig) -> jax.Array:
  """b_bar = (sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2 (Andrew et al.
  2021; the shift by 1/2 halves the count's sensitivity).

  Args:
    unclipped_count: sum_i b_i over the counted clients, b_i = 1 where the
      client's update norm was at most the clip.
    num_counted: how many clients were counted.
    key: the noise key.
    config: the DP settings.
  """
  noise = config.clipped_count_stddev * jax.random.normal(key, ())
  return ((unclipped_count - num_counted / 2 + noise)
          / config.expected_clients + 0.5)


def next_clip_norm(clip_norm: jax.Array, unclipped_fraction: jax.Array,
                   config: DPConfig) -> jax.Array:
  """The geometric update C exp(-eta (b_bar - gamma)) of Andrew et al."""
  return clip_norm * jnp.exp(-config.clip_learning_rate * (
      unclipped_fraction - config.target_quantile))


def client_dp_stage(config: DPConfig, accountant=None) -> Stage:
  """DP-FedAvg's clipping, noise and fixed denominator (and adaptive
  clipping) as a 'cohort' stage with a `finish`.

  On the way in, every message is clipped to the clip norm and every
  client whose message arrives gets weight 1. On the way out, the sum of
  the clipped messages gets N(0, (z S)^2) per coordinate and is divided by
  the expected cohort m; under adaptive clipping the noised unclipped
  count moves S. Metrics: `dp_clipped_fraction`, `dp_clip_norm` (and
  `dp_unclipped_fraction` when adaptive).

  Args:
    config: the DP settings.
    accountant: the host-side privacy accountant (`epsilon(rounds)`).

  Examples:
    >>> stage = client_dp_stage(DPConfig(1.0, 1.1, expected_clients=10))
  """

  def init(template):
    del template
    return {'clip_norm': jnp.float32(config.clip_norm)} if (
        config.adaptive) else ()

  def clip_norm_of(state):
    return state['clip_norm'] if config.adaptive else jnp.float32(
        config.clip_norm)

  def apply(state, packets, ctx):
    clip_norm = clip_norm_of(state)
    counted = ctx.arrived.astype(jnp.float32)
    messages, unclipped, clipped_fraction = clip_cohort(
        packets.message, clip_norm, counted, config.per_layer)
    metrics = {'dp_clipped_fraction': clipped_fraction,
               'dp_clip_norm': clip_norm}
    tallies = dict(packets.tallies)
    if config.adaptive:
      tallies['dp_unclipped'] = unclipped * counted
    return Packet(messages, counted, tallies), state, metrics

  def finish(state, aggregate, ctx):
    clip_norm = clip_norm_of(state)
    total = jax.tree.map(lambda x: x * aggregate.weight, aggregate.mean)
    noised = add_gaussian_noise(
        total, jax.random.fold_in(ctx.key, streams.DP_NOISE),
        config.update_noise_multiplier() * clip_norm)
    mean = jax.tree.map(lambda x: x / config.expected_clients, noised)
    if not config.adaptive:
      return aggregate._replace(mean=mean), state, {}
    fraction = noisy_unclipped_fraction(
        aggregate.tallies['dp_unclipped'], aggregate.weight,
        jax.random.fold_in(ctx.key, streams.DP_COUNT), config)
    return (aggregate._replace(mean=mean),
            {'clip_norm': next_clip_norm(clip_norm, fraction, config)},
            {'dp_unclipped_fraction': fraction})

  return Stage('client-level DP', 'cohort', apply, init=init, finish=finish,
               stream=streams.AGGREGATION, needs=frozenset({'sum'}),
               accountant=accountant)
