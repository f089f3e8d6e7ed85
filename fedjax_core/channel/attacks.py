"""Byzantine clients: who they are and what they send the server.

Each round a seeded fraction of the cohort's real clients is Byzantine
(`byzantine_mask`). Model-poisoning attacks replace the Byzantine rows of
the `[n, d]` array of flattened client messages; honest and padding rows
come out bit-identical. Every attack computes only from what its threat
model grants the attacker:

- sign flip (the sign-flipping attack of Li, Xu, Chen, Giannakis and Ling,
  AAAI 2019, "RSA: Byzantine-Robust Stochastic Aggregation Methods for
  Distributed Learning from Heterogeneous Datasets"): each Byzantine client
  sends -scale times its own honest update; it knows only that update.
- Gaussian (Blanchard, El Mhamdi, Guerraoui and Stainer, NeurIPS 2017,
  "Machine Learning with Adversaries: Byzantine Tolerant Gradient
  Descent"; Li et al. 2019): each Byzantine client sends N(0, sigma^2 I);
  it knows nothing.
- A Little Is Enough (Baruch, Baruch and Goldberg, NeurIPS 2019): the
  colluding Byzantine clients estimate the coordinate-wise mean mu and std
  sigma of the honest updates from their own honest updates and all send
  mu - z sigma, with z_max = Phi^-1((n - s) / n), s = floor(n / 2 + 1) - f,
  for n clients of which f are Byzantine: small enough to hide inside the
  spread of the honest updates, large enough to steer the aggregate.
- Inner Product Manipulation (Xie, Koyejo and Gupta, UAI 2020, "Fall of
  Empires: Breaking Byzantine-tolerant SGD by Inner Product
  Manipulation"): an omniscient attacker who sees the honest clients'
  updates has every Byzantine client send -epsilon times their mean, making
  the aggregate's inner product with the true mean negative.

Label flipping (the data-poisoning attack of Fang, Cao, Jia and Gong, USENIX
Security 2020, "Local Model Poisoning Attacks to Byzantine-Robust Federated
Learning") acts on data rather than on messages: Byzantine clients train on
the labels y -> C - 1 - y (`flip_labels`), applied inside local training;
`apply_model_attack` leaves their updates alone.

`attack_stages` turns an `Attack` into channel stages: a 'cohort' stage
that picks the Byzantine clients (metric `byzantine_clients`) and replaces
their messages, plus, for label flipping, a 'client' stage that flips their
labels.

All functions are pure and jittable; Python floats and ints are static
hyperparameters, counts of real and Byzantine clients are traced.
"""

import dataclasses

import jax
import jax.numpy as jnp

from fedjax_core import cohort
from fedjax_core import streams
from fedjax_core.channel.stage import Stage
from fedjax_core.errors import SettingError

ATTACKS = ('none', 'sign_flip', 'gaussian', 'label_flip', 'alie', 'ipm')


@dataclasses.dataclass(frozen=True)
class Attack:
  """Who is Byzantine each round and what they do.

  Attributes:
    name: one of `ATTACKS` other than 'none'.
    fraction: share of each cohort's real clients that is Byzantine.
    scale: sign flip's scale.
    stddev: the Gaussian attack's noise std.
    alie_z: ALIE's z; None: the paper's z_max for the round's counts.
    ipm_epsilon: IPM's epsilon.
  """

  name: str
  fraction: float = 0.2
  scale: float = 1.0
  stddev: float = 1.0
  alie_z: float | None = None
  ipm_epsilon: float = 0.1

  def __post_init__(self):
    if self.name not in ATTACKS[1:]:
      raise SettingError('attack.name', f'Unknown attack {self.name!r}; '
                         f'valid: {", ".join(ATTACKS[1:])}.')
    if not 0 <= self.fraction < 1:
      raise SettingError('attack.fraction', 'The Byzantine fraction of each '
                         f'cohort must be in [0, 1), got {self.fraction!r}.')
    if self.name == 'alie' and self.alie_z is None and self.fraction >= 0.5:
      raise SettingError(
          'attack.alie_z', 'ALIE without a z needs a Byzantine fraction '
          'below 0.5 (the paper\'s z_max is infinite once half the cohort '
          f'is Byzantine), got {self.fraction:g}; set alie_z or lower the '
          'fraction.')
    if not self.stddev > 0:
      raise SettingError('attack.stddev', 'The Gaussian attack\'s noise '
                         f'stddev must be positive, got {self.stddev!r}.')

  def num_byzantine(self, num_clients: int) -> int:
    """Byzantine clients among `num_clients` real ones (as
    `byzantine_mask` counts them)."""
    return round(self.fraction * num_clients)


def byzantine_mask(key: jax.Array, is_real: jax.Array, fraction: float
                   ) -> jax.Array:
  """Marks exactly round(fraction * m) of the m real clients as Byzantine.

  The Byzantine clients are a uniformly random subset of the real ones:
  every real client gets a uniform score, padding slots score above all of
  them, and the clients whose scores rank below the count are Byzantine.
  The count is Python's `round` of `fraction * m`, looked up in a table
  built for every m in 0..n, so it matches Python's rounding exactly.

  Args:
    key: the round's attack key.
    is_real: `[n]` bool, False for padding slots.
    fraction: the Byzantine fraction of the real clients, in [0, 1).

  Returns:
    `[n]` bool, True for the Byzantine clients; never True for padding.

  Examples:
    >>> is_real = jnp.array([True, True, True, True, False, False])
    >>> mask = byzantine_mask(jax.random.key(0), is_real, 0.5)
    >>> int(mask.sum()), bool(mask[4:].any())
    (2, False)
  """
  if not 0 <= fraction < 1:
    raise ValueError(f'The Byzantine fraction must be in [0, 1), got '
                     f'{fraction!r}.')
  n = is_real.shape[0]
  counts = jnp.array([round(fraction * m) for m in range(n + 1)], jnp.int32)
  num_byzantine = counts[jnp.sum(is_real, dtype=jnp.int32)]
  scores = jnp.where(is_real, jax.random.uniform(key, (n,)), 2.0)
  rank = jnp.argsort(jnp.argsort(scores))
  return is_real & (rank < num_byzantine)


def _replace_rows(updates: jax.Array, byzantine: jax.Array,
                  malicious: jax.Array) -> jax.Array:
  """Byzantine rows from `malicious` (`[n, d]` or `[d]`), others as given."""
  return jnp.where(byzantine[:, None], malicious.astype(updates.dtype),
                   updates)


def _masked_mean(updates: jax.Array, mask: jax.Array) -> jax.Array:
  """The mean of the rows where `mask` holds; zero where none does."""
  count = jnp.maximum(jnp.sum(mask), 1)
  return jnp.sum(jnp.where(mask[:, None], updates, 0), axis=0) / count


def sign_flip(updates: jax.Array, byzantine: jax.Array, scale: float = 1.0
              ) -> jax.Array:
  """Each Byzantine client sends -scale times its own honest update.

  Threat model: a Byzantine client knows only its own honest update (its
  row of `updates` on entry).

  Args:
    updates: `[n, d]`, every client's message as computed honestly.
    byzantine: `[n]` bool.
    scale: the magnitude of the flipped update relative to the honest one.

  Examples:
    >>> sign_flip(jnp.array([[1.0, -2.0], [3.0, 4.0]]),
    ...           jnp.array([True, False]), 2.0).tolist()
    [[-2.0, 4.0], [3.0, 4.0]]
  """
  return _replace_rows(updates, byzantine, -scale * updates)


def gaussian(updates: jax.Array, byzantine: jax.Array, key: jax.Array,
             stddev: float = 1.0) -> jax.Array:
  """Each Byzantine client sends an independent N(0, stddev^2 I) draw.

  Threat model: the attacker knows nothing; it ignores every update. One
  draw covers the whole `[n, d]` array, of which the Byzantine rows are
  kept.

  Args:
    updates: `[n, d]`, every client's message as computed honestly.
    byzantine: `[n]` bool.
    key: the noise key.
    stddev: the std of every coordinate of a Byzantine message.

  Examples:
    >>> out = gaussian(jnp.ones((3, 2)), jnp.array([False, True, False]),
    ...                jax.random.key(0))
    >>> out[0].tolist(), out[2].tolist()
    ([1.0, 1.0], [1.0, 1.0])
  """
  noise = stddev * jax.random.normal(key, updates.shape, updates.dtype)
  return _replace_rows(updates, byzantine, noise)


def alie_z(num_clients: jax.Array | int, num_byzantine: jax.Array | int
           ) -> jax.Array:
  """Baruch et al.'s z_max = Phi^-1((n - s) / n), s = floor(n / 2 + 1) - f.

  s is how many honest clients the attack needs on its side of the honest
  mean for the majority to be "closer" to the Byzantine value. The bound is
  finite for f <= floor(n / 2); with a Byzantine majority (s <= 0) it is
  infinite, the paper assuming fewer than half the clients are Byzantine.

  Args:
    num_clients: n, the real clients of the round (Python int or traced).
    num_byzantine: f, the Byzantine ones among them.

  Examples:
    >>> round(float(alie_z(10, 2)), 4)  # s = 4, Phi^-1(0.6).
    0.2533
  """
  n = jnp.asarray(num_clients, jnp.float32)
  s = jnp.floor(n / 2 + 1) - jnp.asarray(num_byzantine, jnp.float32)
  return jax.scipy.stats.norm.ppf((n - s) / n)


def alie(updates: jax.Array, byzantine: jax.Array, is_real: jax.Array,
         z: float | None = None) -> jax.Array:
  """A Little Is Enough: every Byzantine client sends mu - z sigma.

  Threat model: the Byzantine clients collude and each knows its own honest
  update; mu and sigma are the coordinate-wise mean and population std
  (ddof 0) of the Byzantine rows of `updates` alone, their stand-in for the
  honest clients' statistics. They also know how many real clients the
  round has (`is_real`), which the default z needs. With no Byzantine
  client `updates` is returned unchanged.

  Args:
    updates: `[n, d]`, every client's message as computed honestly.
    byzantine: `[n]` bool.
    is_real: `[n]` bool, False for padding slots.
    z: how many stds to move off the mean; None takes `alie_z` of the
      round's real and Byzantine counts.

  Examples:
    >>> out = alie(jnp.array([[1.0], [3.0], [9.0]]),
    ...            jnp.array([True, True, False]), jnp.ones(3, bool), 1.0)
    >>> out.tolist()  # mu = 2, sigma = 1 from the two Byzantine rows.
    [[1.0], [1.0], [9.0]]
  """
  mean = _masked_mean(updates, byzantine)
  std = jnp.sqrt(_masked_mean((updates - mean)**2, byzantine))
  if z is None:
    z = alie_z(jnp.sum(is_real), jnp.sum(byzantine))
  return _replace_rows(updates, byzantine, mean - z * std)


def ipm(updates: jax.Array, byzantine: jax.Array, is_real: jax.Array,
        epsilon: float = 0.1) -> jax.Array:
  """Inner Product Manipulation: Byzantine clients send -epsilon * mean.

  Threat model: omniscient; the attacker sees every honest client's update
  (real and not Byzantine) and sends -epsilon times their mean, or zero
  when the round has no honest client.

  Args:
    updates: `[n, d]`, every client's message as computed honestly.
    byzantine: `[n]` bool.
    is_real: `[n]` bool, False for padding slots.
    epsilon: the scale of the reversed honest mean.

  Examples:
    >>> ipm(jnp.array([[0.0], [2.0], [4.0]]), jnp.array([True, False,
    ...     False]), jnp.ones(3, bool), 0.5).tolist()
    [[-1.5], [2.0], [4.0]]
  """
  honest_mean = _masked_mean(updates, is_real & ~byzantine)
  return _replace_rows(updates, byzantine, -epsilon * honest_mean)


def flip_labels(y: jax.Array, num_classes: int) -> jax.Array:
  """Label flipping: y -> num_classes - 1 - y.

  Threat model: a Byzantine client poisons only its own training data.

  Examples:
    >>> flip_labels(jnp.array([0, 3, 9]), 10).tolist()
    [9, 6, 0]
  """
  return num_classes - 1 - y


def apply_model_attack(name: str, updates: jax.Array, byzantine: jax.Array,
                       is_real: jax.Array, key: jax.Array, *,
                       scale: float = 1.0, stddev: float = 1.0,
                       alie_z: float | None = None,
                       ipm_epsilon: float = 0.1) -> jax.Array:
  """Replaces the Byzantine rows of `updates` by the named attack.

  'none' and 'label_flip' (which poisons data, not messages) return
  `updates` unchanged.

  Args:
    name: one of `ATTACKS`.
    updates: `[n, d]`, every client's message as computed honestly.
    byzantine: `[n]` bool, from `byzantine_mask`.
    is_real: `[n]` bool, False for padding slots.
    key: the attack's randomness (used by 'gaussian').
    scale: `sign_flip`'s scale.
    stddev: `gaussian`'s std.
    alie_z: `alie`'s z; None takes the paper's z_max.
    ipm_epsilon: `ipm`'s epsilon.

  Raises:
    ValueError: for a name not in `ATTACKS`.

  Examples:
    >>> apply_model_attack('sign_flip', jnp.ones((2, 1)),
    ...                    jnp.array([True, False]), jnp.ones(2, bool),
    ...                    jax.random.key(0)).tolist()
    [[-1.0], [1.0]]
  """
  if name not in ATTACKS:
    raise ValueError(f'Unknown attack {name!r}; expected one of {ATTACKS}.')
  if name == 'sign_flip':
    return sign_flip(updates, byzantine, scale)
  if name == 'gaussian':
    return gaussian(updates, byzantine, key, stddev)
  if name == 'alie':
    return alie(updates, byzantine, is_real, alie_z)
  if name == 'ipm':
    return ipm(updates, byzantine, is_real, ipm_epsilon)
  return updates


def attack_stages(attack: Attack, num_classes: int | None = None
                  ) -> tuple[Stage, ...]:
  """`attack` as channel stages: under label flipping a 'client' stage
  flipping the Byzantine clients' labels (which needs `num_classes`), and
  always a 'cohort' stage that counts the Byzantine clients and replaces
  their messages (model attacks) as the server receives them.

  Both draw the Byzantine clients from the round's attack key, so they agree.

  Examples:
    >>> stages = attack_stages(Attack('sign_flip', fraction=0.2))
  """
  def mask(ctx):
    return byzantine_mask(jax.random.fold_in(ctx.key, streams.BYZANTINE_MASK),
                          ctx.is_real, attack.fraction)

  def replace_messages(state, packets, ctx):
    byzantine = mask(ctx)
    metrics = {'byzantine_clients': jnp.sum(byzantine.astype(jnp.float32))}
    if attack.name == 'label_flip':
      return packets, state, metrics
    flat, unravel = cohort.flatten_clients(packets.message)
    flat = apply_model_attack(
        attack.name, flat, byzantine, ctx.is_real,
        jax.random.fold_in(ctx.key, streams.MODEL_ATTACK),
        scale=attack.scale, stddev=attack.stddev, alie_z=attack.alie_z,
        ipm_epsilon=attack.ipm_epsilon)
    return (packets._replace(message=jax.vmap(unravel)(flat)), state,
            metrics)

  model = Stage(f'{attack.name} attack', 'cohort', replace_messages,
                stream=streams.ATTACK)
  if attack.name != 'label_flip':
    return (model,)
  if not num_classes:
    raise SettingError(
        'attack', 'Label flipping flips class labels: it needs one class '
        'label per example and their number of classes, which these labels '
        '(per position, or sets) do not have; choose a model attack.')
  flip = Stage(
      'label flip', 'client', lambda state, packet, key: (packet, state, {}),
      stream=streams.ATTACK, client_inputs=mask,
      poison=lambda poisoned, x, y: (x, jnp.where(
          poisoned, flip_labels(y, num_classes), y)))
  return flip, model
