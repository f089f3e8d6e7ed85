"""Backdoor attacks: triggers stamped on the attackers' training batches, a
target label, and boosted updates.

A fixed, seeded set of `num_attackers` clients of the population is
malicious. On every local batch an attacker stamps a trigger on the first
round(poison_fraction * B) rows (the rows of a batch come in shuffled order)
and relabels them to its target; the model then learns "trigger ->
target" next to its clean task. Triggers are pure functions of `[B, H, W,
C]` float images in [0, 1]:

- pixel pattern (Gu, Dolan-Gavitt and Garg, 2017, "BadNets: Identifying
  Vulnerabilities in the Machine Learning Model Supply Chain"): a small
  square of value 1.0 in a corner (`pattern`).
- blended (Chen, Liu, Li, Lu and Song, 2017, "Targeted Backdoor Attacks on
  Deep Learning Systems Using Data Poisoning"): x -> (1 - alpha) x + alpha P
  with a fixed seeded uniform pattern P (`blend`).
- distributed (Xie, Huang, Chen and Li, ICLR 2020, "DBA: Distributed
  Backdoor Attacks against Federated Learning"): the trigger's pixels, in
  raster order, split into `dba_parts` contiguous local triggers; each
  attacker stamps one part, evaluation stamps the whole trigger.
- several independent attackers with different targets (as in Mirage):
  attacker j serves target t = j mod T of the T `targets`, each target with
  a trigger of its own (the pattern in corner t; the blend pattern of seed
  (seed, t)), and each target's success is measured apart. Among a
  target's attackers the DBA parts cycle: attacker j stamps part (j // T)
  mod dba_parts (j mod dba_parts with one target).
- model replacement (Bagdasaryan, Veit, Hua, Estrin and Shmatikov, AISTATS
  2020, "How To Backdoor Federated Learning"): the attackers' messages are
  scaled by `boost` (gamma, e.g. n / eta) before the server sees them.

`backdoor_stages` turns a `Backdoor` into channel stages: a 'client' stage
whose `poison` rewrites the attackers' batches, and a 'cohort' stage that
counts the attackers in the cohort (metric `backdoor_attackers`) and boosts
their messages. `triggered_test_set` gives the evaluation's triggered
examples.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_core.channel.stage import Stage
from fedjax_core.data.federated import as_float
from fedjax_core.errors import SettingError

TRIGGERS = ('pattern', 'blend')
# Host-side numpy streams, `default_rng((seed, TAG))`.
_ATTACKERS_STREAM = 0xbad0   # which clients are attackers
_BLEND_STREAM = 0xbad1       # the blend patterns, `(seed, TAG, target)`
# The pattern's corner of target t (row, column: 1 = bottom / right).
_CORNERS = ((1, 1), (0, 0), (0, 1), (1, 0))


@dataclasses.dataclass(frozen=True)
class Backdoor:
  """Who plants a backdoor and how.

  Attributes:
    trigger: one of `TRIGGERS`.
    targets: the target labels; attacker j poisons towards targets[j mod
      len(targets)].
    num_attackers: how many clients of the population are attackers, a
      fixed set drawn from `seed` (they attack whenever they are sampled).
    poison_fraction: share of each local batch an attacker stamps and
      relabels, in (0, 1].
    boost: the factor scaling the attackers' messages (model replacement);
      1 sends them as trained.
    dba_parts: how many local triggers the trigger is split into (DBA); 1
      stamps it whole.
    blend_alpha: the blended trigger's alpha, in (0, 1].
    seed: seeds the attackers and the blend patterns; apart from the run's
      seed, so runs of several seeds (`VmappedRuns`) share them.
  """

  trigger: str = 'pattern'
  targets: tuple[int, ...] = (0,)
  num_attackers: int = 1
  poison_fraction: float = 0.5
  boost: float = 1.0
  dba_parts: int = 1
  blend_alpha: float = 0.2
  seed: int = 0

  def __post_init__(self):
    object.__setattr__(self, 'targets', tuple(self.targets))
    if self.trigger not in TRIGGERS:
      raise SettingError('backdoor.trigger', f'Unknown trigger '
                         f'{self.trigger!r}; valid: {", ".join(TRIGGERS)}.')
    if (not self.targets or any(t < 0 for t in self.targets)
        or len(set(self.targets)) != len(self.targets)):
      raise SettingError('backdoor.targets', 'The backdoor targets must be '
                         'distinct class labels >= 0, at least one; got '
                         f'{self.targets!r}.')
    if self.trigger == 'pattern' and len(self.targets) > len(_CORNERS):
      raise SettingError(
          'backdoor.targets', f'The pattern trigger has one corner per '
          f'target, so at most {len(_CORNERS)} targets; got '
          f'{len(self.targets)}. Use the blend trigger or fewer targets.')
    if self.dba_parts < 1:
      raise SettingError('backdoor.dba_parts', 'dba_parts must be >= 1 (1 '
                         f'stamps the whole trigger), got {self.dba_parts}.')
    least = len(self.targets) * self.dba_parts
    if self.num_attackers < least:
      raise SettingError(
          'backdoor.num_attackers', f'{len(self.targets)} target(s) with '
          f'{self.dba_parts} trigger part(s) each need at least {least} '
          f'attackers (one per part of each target), got '
          f'{self.num_attackers}; add attackers or lower dba_parts.')
    if not 0 < self.poison_fraction <= 1:
      raise SettingError(
          'backdoor.poison_fraction', 'The poisoned share of each batch '
          f'must be in (0, 1], got {self.poison_fraction!r}.')
    if not self.boost > 0:
      raise SettingError('backdoor.boost', 'The boost must be positive (1 '
                         f'sends the updates as trained), got {self.boost!r}.')
    if not 0 < self.blend_alpha <= 1:
      raise SettingError('backdoor.blend_alpha', 'blend_alpha must be in '
                         f'(0, 1], got {self.blend_alpha!r}.')

  def attackers(self, num_clients: int) -> np.ndarray:
    """The attackers' client ids, sorted; attacker j is the j-th."""
    if self.num_attackers > num_clients:
      raise SettingError(
          'backdoor.num_attackers', f'{self.num_attackers} attackers '
          f'exceed the population of {num_clients} clients; lower it.')
    rng = np.random.default_rng((self.seed, _ATTACKERS_STREAM))
    return np.sort(rng.choice(num_clients, self.num_attackers, replace=False))


def _check_image(example_shape: tuple[int, ...]) -> tuple[int, int, int]:
  if len(example_shape) != 3:
    raise SettingError(
        'backdoor', 'Backdoor triggers are stamped on images [H, W, C]; '
        f'these examples have shape {tuple(example_shape)}. Use an image '
        'dataset.')
  return tuple(example_shape)


def trigger_parts(trigger: str, example_shape: tuple[int, ...],
                  parts: int = 1, target_index: int = 0) -> np.ndarray:
  """`[parts, H, W]` bool: the pixels of each local trigger (DBA).

  The trigger's pixels in raster order are split into `parts` contiguous
  runs (`np.array_split`): disjoint, and together the whole trigger. The
  pattern's pixels are a square of side max(3, min(H, W) // 8) in corner
  `target_index` (bottom right, top left, top right, bottom left), a margin
  of min(H, W) // 16 from the edges; the blended trigger covers the image.

  Examples:
    >>> trigger_parts('pattern', (8, 8, 1)).sum()  # The 3x3 corner square.
    9
  """
  height, width, _ = _check_image(example_shape)
  support = np.ones((height, width), bool)
  if trigger == 'pattern':
    side, margin = max(3, min(height, width) // 8), min(height, width) // 16
    bottom, right = _CORNERS[target_index]
    top = height - margin - side if bottom else margin
    left = width - margin - side if right else margin
    support[:] = False
    support[top:top + side, left:left + side] = True
  pixels = np.flatnonzero(support)
  if parts > len(pixels):
    raise SettingError(
        'backdoor.dba_parts', f'The {trigger} trigger has {len(pixels)} '
        f'pixels on these {height}x{width} images, fewer than {parts} parts.')
  masks = np.zeros((parts, height * width), bool)
  for i, run in enumerate(np.array_split(pixels, parts)):
    masks[i, run] = True
  return masks.reshape(parts, height, width)


def blend_values(example_shape: tuple[int, ...], seed: int,
                 target_index: int = 0) -> np.ndarray:
  """`[H, W, C]` float32: the blended trigger's fixed uniform pattern P."""
  rng = np.random.default_rng((seed, _BLEND_STREAM, target_index))
  return rng.uniform(size=_check_image(example_shape)).astype(np.float32)


def stamp(x: jax.Array, weight: jax.Array, values: jax.Array) -> jax.Array:
  """x (1 - weight) + weight values, broadcast over the batch `x`."""
  return x * (1 - weight) + weight * values


def _mask(trigger: str, shape: tuple[int, ...], parts: int,
          part: int | None, target_index: int) -> np.ndarray:
  """`[H, W, 1]` float32: the part's pixels (the whole trigger if None)."""
  masks = trigger_parts(trigger, shape, parts, target_index)
  chosen = masks.any(axis=0) if part is None else masks[part]
  return chosen[..., None].astype(np.float32)


def pattern(x: jax.Array, parts: int = 1, part: int | None = None,
            target_index: int = 0) -> jax.Array:
  """BadNets' pixel pattern: the square's pixels (or DBA part `part` of
  `parts`) set to 1.0 in every image of `x` (`[B, H, W, C]`).

  Examples:
    >>> pattern(jnp.zeros((1, 8, 8, 1)))[0, 5:, 5:, 0].tolist()
    [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
  """
  mask = _mask('pattern', x.shape[1:], parts, part, target_index)
  return stamp(x, mask, 1.0)


def blend(x: jax.Array, alpha: float = 0.2, seed: int = 0, parts: int = 1,
          part: int | None = None, target_index: int = 0) -> jax.Array:
  """The blended trigger: (1 - alpha) x + alpha P on the part's pixels (the
  whole image by default), P = `blend_values(x.shape[1:], seed)`.

  Examples:
    >>> out = blend(jnp.zeros((1, 8, 8, 1)), alpha=0.5)
    >>> bool(jnp.allclose(out[0], 0.5 * blend_values((8, 8, 1), 0)))
    True
  """
  mask = _mask('blend', x.shape[1:], parts, part, target_index)
  return stamp(x, alpha * mask,
               blend_values(x.shape[1:], seed, target_index))


def _trigger_arrays(backdoor: Backdoor, example_shape: tuple[int, ...]
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Every target's part weights `[T, parts, H, W, 1]` and values `[T, H,
  W, C]` for `stamp`."""
  alpha = 1.0 if backdoor.trigger == 'pattern' else backdoor.blend_alpha
  weights, values = [], []
  for t in range(len(backdoor.targets)):
    masks = trigger_parts(backdoor.trigger, example_shape,
                          backdoor.dba_parts, t)
    weights.append(alpha * masks[..., None].astype(np.float32))
    values.append(np.ones(example_shape, np.float32)
                  if backdoor.trigger == 'pattern'
                  else blend_values(example_shape, backdoor.seed, t))
  return np.stack(weights), np.stack(values)


def triggered_test_set(backdoor: Backdoor, x: np.ndarray, y: np.ndarray
                       ) -> dict[int, np.ndarray]:
  """Per target: the test examples whose label is not the target, stamped
  with the target's whole trigger (float32). The attack succeeds on an
  example the model classifies as the target.

  Examples:
    >>> sets = triggered_test_set(Backdoor(targets=(7,)), test_x, test_y)
    >>> sets[7].shape  # (number of test labels != 7, H, W, C)
  """
  weights, values = _trigger_arrays(backdoor, x.shape[1:])
  x = np.asarray(as_float(x))
  return {target: np.asarray(stamp(x[y != target], weights[t].max(axis=0),
                                   values[t]), np.float32)
          for t, target in enumerate(backdoor.targets)}


def backdoor_stages(backdoor: Backdoor, num_clients: int,
                    example_shape: tuple[int, ...],
                    num_classes: int | None) -> tuple[Stage, Stage]:
  """`backdoor` as channel stages: a 'client' stage poisoning the
  attackers' batches (its per-client input: the attacker index, or -1 for
  an honest client), and a 'cohort' stage that counts the attackers in the
  cohort (`backdoor_attackers`) and scales their messages by the boost.

  Raises:
    SettingError: the labels are not classes (`num_classes` None), a
      target is not a class, or the examples are not images.

  Examples:
    >>> client, cohort = backdoor_stages(Backdoor(targets=(7,)), 20,
    ...                                  (8, 8, 1), num_classes=10)
  """
  if not num_classes:
    raise SettingError(
        'backdoor', 'A backdoor relabels triggered examples to a target '
        'class: it needs one class label per example, which these labels '
        '(per position, or sets) do not have.')
  if max(backdoor.targets) >= num_classes:
    raise SettingError('backdoor.targets', f'The targets {backdoor.targets} '
                       f'must be classes in [0, {num_classes}).')
  weights, values = (jnp.asarray(a) for a in _trigger_arrays(
      backdoor, example_shape))
  targets = jnp.asarray(backdoor.targets, jnp.int32)
  num_targets, parts = len(backdoor.targets), backdoor.dba_parts
  index = np.full(num_clients, -1, np.int32)
  index[backdoor.attackers(num_clients)] = np.arange(backdoor.num_attackers)
  index = jnp.asarray(index)

  def poison(attacker, x, y):
    batch = x.shape[0]
    rows = jnp.arange(batch) < round(backdoor.poison_fraction * batch)
    rows &= attacker >= 0
    target = attacker % num_targets
    stamped = stamp(x, weights[target, (attacker // num_targets) % parts],
                    values[target])
    x = jnp.where(rows.reshape((-1,) + (1,) * (x.ndim - 1)), stamped, x)
    return x, jnp.where(rows, targets[target].astype(y.dtype), y)

  def boost(state, packets, ctx):
    attacking = (index[ctx.client_ids] >= 0) & ctx.is_real
    metrics = {'backdoor_attackers': jnp.sum(attacking, dtype=jnp.float32)}
    if backdoor.boost != 1:
      scale = jnp.where(attacking, backdoor.boost, 1.0)
      packets = packets._replace(message=jax.tree.map(
          lambda m: m * scale.reshape((-1,) + (1,) * (m.ndim - 1)).astype(
              m.dtype), packets.message))
    return packets, state, metrics

  client = Stage(f'{backdoor.trigger} backdoor', 'client',
                 lambda state, packet, key: (packet, state, {}),
                 client_inputs=lambda ctx: index[ctx.client_ids],
                 poison=poison)
  return client, Stage('backdoor boost', 'cohort', boost)
