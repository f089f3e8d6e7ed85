"""Secure aggregation by pairwise masking, as pure jittable JAX functions.

The protocol of Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning" (CCS), simulated inside the compiled
round. Each participating client u encodes its update as fixed-point words
in Z_{2^bits} and sends

  y_u = x_u + PRG(b_u) + sum_{v participating, v != u} s(u, v) PRG(s_uv)

where b_u is u's self-mask seed, s_uv = s_vu the secret u and v agreed, and
s(u, v) = +1 if id(u) < id(v) else -1, all mod 2^bits. In the sum over the
clients whose y_u arrived, the pairwise masks between two arrived clients
cancel; the server removes the self masks of the arrived clients and the
pairwise masks shared with the dropped clients from the seeds it recovered
by Shamir secret sharing (`fedjax_core.channel.secagg_protocol`, host side), and is
left with the modular sum of the arrived clients' encoded updates. That sum
decodes to exactly `quantized_sum`, the plain aggregation of the same
quantized updates: secure aggregation changes who sees what, never the sum.

PRG keys. A pair's mask is drawn from

  fold_in(fold_in(fold_in(fold_in(fold_in(secagg_key, streams.SECAGG_PAIR_MASK), lo_id),
          hi_id), seed[0]), seed[1])

with lo_id < hi_id the two global client ids (so both sides derive the same
key), and a self mask from

  fold_in(fold_in(fold_in(fold_in(secagg_key, streams.SECAGG_SELF_MASK), id), seed[0]),
          seed[1]).

The tags keep pair and self keys in separate domains. `secagg_key` is the
round's key; the secrecy of the masks rests on the seeds alone (in this
simulation the seeds come from a toy key agreement, see `secagg_protocol`).

Static arguments. `SecAggConfig` and `bits` are Python numbers read while
tracing: close over them or pass them as static arguments of `jax.jit`.
`mask`, `unmask` and `secure_sum` are jitted with them static, so eager
calls compile once per shape (inside an outer `jit` they are inlined).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_core import streams
from fedjax_core.errors import SettingError

# The largest float32 below 2**31, so a clamped float converts to int32.
_MAX_INT32_FLOAT = 2.0**31 - 128


class SecAggConfig(NamedTuple):
  """Fixed-point encoding of updates for secure aggregation.

  Attributes:
    bits: the words live in Z_{2^bits}, 2 <= bits <= 32 (held in uint32).
    clip: each coordinate is clipped to [-clip, clip] before encoding.
    scale: fixed-point scale: word = round(clip(x) * scale) mod 2**bits.
  """
  bits: int
  clip: float
  scale: float


def _check_config(config: SecAggConfig) -> None:
  if not 2 <= config.bits <= 32:
    raise SettingError(
        'secure_aggregation.bits', f'Secure aggregation bits must be in '
        f'[2, 32] (words are uint32), got {config.bits}.')
  if not config.clip > 0:
    raise SettingError('secure_aggregation.clip', f'Secure aggregation clip '
                       f'must be positive, got {config.clip}.')
  if not config.scale > 0:
    raise SettingError('secure_aggregation.scale', f'Secure aggregation '
                       f'scale must be positive, got {config.scale}.')


def _word_mask(bits: int) -> int:
  return (1 << bits) - 1


def max_scale(num_clients: int, clip: float, bits: int) -> float:
  """Largest power of two `s` with which the cohort's sum cannot wrap.

  The condition is `num_clients * max(clip, 1) * s <= 2**(bits-1) - 1`: the
  signed sum of `num_clients` coordinates of magnitude at most `clip` (and
  of weights in [0, 1], which the caller sums with the same scale) stays in
  the signed range of Z_{2^bits}. Fractional powers of two are allowed by
  the arithmetic but refused, since a scale below 1 rounds every update
  coordinate in (-1/2, 1/2) to zero.

  Args:
    num_clients: clients summed at once (the cohort size).
    clip: the clipping bound of each coordinate.
    bits: the modulus is 2**bits.

  Returns:
    The scale, a power of two >= 1.

  Raises:
    ValueError: if even s = 1 could overflow.

  Examples:
    >>> max_scale(10, 1.0, 16)
    2048.0
  """
  _check_config(SecAggConfig(bits, clip, 1.0))
  if num_clients < 1:
    raise ValueError(f'num_clients must be positive, got {num_clients}.')
  limit = 2**(bits - 1) - 1
  bound = num_clients * max(clip, 1.0)
  if bound > limit:
    raise SettingError(
        'secure_aggregation.bits',
        f'No fixed-point scale >= 1 fits {num_clients} clients with '
        f'clip={clip} in bits={bits}: {num_clients} * max(clip, 1) = '
        f'{bound:g} > 2**{bits - 1} - 1 = {limit}. Raise bits (up to 32), '
        f'lower clip, or use a smaller cohort.')
  # Largest integer k with 2**k <= limit / bound, checked exactly.
  k = int(np.floor(np.log2(limit / bound)))
  while bound * 2.0**(k + 1) <= limit:
    k += 1
  while bound * 2.0**k > limit:
    k -= 1
  return float(2.0**k)


def check_overflow(num_clients: int, config: SecAggConfig) -> None:
  """Refuses, before a run, a configuration whose modular sum could wrap.

  The sum of `num_clients` encoded coordinates (each of magnitude at most
  `clip * scale`; `encode` rounds toward this bound, never past it) and of
  their weights in [0, 1] is exact when
  `num_clients * max(clip, 1) * scale <= 2**(bits-1) - 1`.

  Args:
    num_clients: clients summed at once (the cohort size).
    config: the encoding.

  Raises:
    ValueError: naming the numbers and the fix, if the sum could wrap.

  Examples:
    >>> check_overflow(10, SecAggConfig(bits=16, clip=1.0, scale=2048.0))
  """
  _check_config(config)
  limit = 2**(config.bits - 1) - 1
  bound = num_clients * max(config.clip, 1.0) * config.scale
  if bound > limit:
    raise SettingError(
        'secure_aggregation.scale',
        f'Secure aggregation could overflow: {num_clients} clients * '
        f'max(clip={config.clip}, 1) * scale={config.scale} = {bound:g} > '
        f'2**{config.bits - 1} - 1 = {limit}, so the modular sum of the '
        f'cohort could wrap around. Lower scale or clip, raise bits (up to '
        f'32), or use a smaller cohort.')


def _magnitude_bound(config: SecAggConfig) -> float:
  """Largest integer-valued float32 <= min(clip * scale, 2**31 - 128)."""
  q = np.float32(np.floor(min(config.clip * config.scale, _MAX_INT32_FLOAT)))
  if float(q) > config.clip * config.scale:
    q = np.nextafter(q, np.float32(0))
  return float(np.floor(q))


def encode(x: jax.Array, config: SecAggConfig) -> jax.Array:
  """Encodes floats as fixed-point words of Z_{2^bits}.

  word = round(clip(x, -clip, clip) * scale) mod 2**bits, negative numbers
  in two's complement. The rounded magnitude is capped at
  floor(clip * scale), so `check_overflow`'s bound holds for every word.

  Args:
    x: float array, any shape.
    config: the encoding (static).

  Returns:
    uint32 array of `x`'s shape with values below 2**bits.

  Examples:
    >>> cfg = SecAggConfig(bits=8, clip=1.0, scale=16.0)
    >>> encode(jnp.array([0.5, -0.5]), cfg)
    Array([  8, 248], dtype=uint32)
  """
  q = _magnitude_bound(config)
  x = jnp.clip(jnp.asarray(x, jnp.float32), -config.clip, config.clip)
  r = jnp.clip(jnp.round(x * jnp.float32(config.scale)), -q, q)
  words = r.astype(jnp.int32).astype(jnp.uint32)
  return words & jnp.uint32(_word_mask(config.bits))


def decode(words: jax.Array, config: SecAggConfig) -> jax.Array:
  """Decodes words of Z_{2^bits} to floats: the inverse of `encode`.

  A word >= 2**(bits-1) stands for word - 2**bits (a negative number).

  Args:
    words: uint32 array with values below 2**bits.
    config: the encoding (static).

  Returns:
    float32 array: the signed value divided by `scale`.

  Examples:
    >>> cfg = SecAggConfig(bits=8, clip=1.0, scale=16.0)
    >>> decode(jnp.array([8, 248], jnp.uint32), cfg)
    Array([ 0.5, -0.5], dtype=float32)
  """
  shift = jnp.uint32(32 - config.bits)
  # Sign extension: move the sign bit to bit 31, shift back arithmetically.
  up = jax.lax.bitcast_convert_type(
      jnp.asarray(words, jnp.uint32) << shift, jnp.int32)
  signed = jax.lax.shift_right_arithmetic(up, shift.astype(jnp.int32))
  return signed.astype(jnp.float32) / jnp.float32(config.scale)


def clipped_fraction(x: jax.Array, config: SecAggConfig,
                     include: jax.Array | None = None) -> jax.Array:
  """Fraction of the coordinates of `x` that `encode` clips (|x| > clip);
  of `[n, d]` rows, only of those where `include` ([n]) is nonzero."""
  clipped = (jnp.abs(jnp.asarray(x, jnp.float32)) > config.clip).astype(
      jnp.float32)
  if include is None:
    return jnp.mean(clipped)
  rows = jnp.asarray(include).astype(jnp.float32)
  return jnp.sum(clipped * rows[:, None]) / jnp.maximum(
      jnp.sum(rows) * x.shape[1], 1)


def modular_sum(words: jax.Array, include: jax.Array, bits: int) -> jax.Array:
  """Sums the included rows mod 2**bits.

  Args:
    words: [n, d] uint32.
    include: [n] bool or float; rows where it is nonzero are summed.
    bits: the modulus is 2**bits (static).

  Returns:
    [d] uint32: the sum of the included rows, wrapping uint32 arithmetic
    reduced mod 2**bits (exact, since 2**bits divides 2**32).
  """
  include = jnp.asarray(include).astype(bool)
  kept = jnp.where(include[:, None], words, jnp.uint32(0))
  total = jnp.sum(kept, axis=0, dtype=jnp.uint32)
  return total & jnp.uint32(_word_mask(bits))


def prg_words(key: jax.Array, size: int, bits: int) -> jax.Array:
  """`size` uniform words of Z_{2^bits} from `jax.random.bits`.

  Args:
    key: a jax PRNG key.
    size: number of words (static).
    bits: the modulus is 2**bits (static).

  Returns:
    [size] uint32, the low `bits` bits of uniform 32-bit words.
  """
  return jax.random.bits(key, (size,), jnp.uint32) & jnp.uint32(
      _word_mask(bits))


def _fold_in_all(key: jax.Array, data: jax.Array,
                 lengths: jax.Array) -> jax.Array:
  """Row r: fold_in(...fold_in(key, data[r, 0])..., data[r, lengths[r]-1]).

  A scan over the columns, batched over the rows: one threefry hash in the
  program however many keys and however long the chains. XLA:CPU takes
  0.1 to 0.5 s to compile each threefry instance, and one instance per
  fold_in and per mask was most of the compile time.
  """
  def chain(words, length):
    def step(k, t):
      return jax.lax.select(t < length, jax.random.fold_in(k, words[t]),
                            k), None

    return jax.lax.scan(step, key, jnp.arange(words.shape[0]))[0]

  return jax.vmap(chain)(data, lengths)


def _mask_jobs(pairs_i: np.ndarray, pairs_j: np.ndarray, n: int):
  """Static job lists: n self masks (row i, i), then the given pairs."""
  rows = np.arange(n)
  first = np.concatenate([rows, pairs_i]).astype(np.int32)
  second = np.concatenate([rows, pairs_j]).astype(np.int32)
  is_pair = np.concatenate([np.zeros(n, bool), np.ones(len(pairs_i), bool)])
  return first, second, is_pair


def _job_keys(secagg_key, ids, first, second, is_pair, pair_seeds,
              self_seeds):
  """PRG keys of mask jobs, by the module docstring's scheme.

  Pair job (i, j): fold_in over (streams.SECAGG_PAIR_MASK, lo_id, hi_id, pair_seeds[i, j]);
  self job (i, i): fold_in over (streams.SECAGG_SELF_MASK, id_i, self_seeds[i]).
  """
  ids = ids.astype(jnp.uint32)
  id_a, id_b = ids[first], ids[second]
  pair = pair_seeds[first, second]
  own = self_seeds[first]
  tags = jnp.where(is_pair, jnp.uint32(streams.SECAGG_PAIR_MASK), jnp.uint32(streams.SECAGG_SELF_MASK))
  data = jnp.where(
      is_pair[:, None],
      jnp.stack([tags, jnp.minimum(id_a, id_b), jnp.maximum(id_a, id_b),
                 pair[:, 0], pair[:, 1]], axis=-1),
      jnp.stack([tags, id_a, own[:, 0], own[:, 1], jnp.zeros_like(tags)],
                axis=-1))
  return _fold_in_all(secagg_key, data, jnp.where(is_pair, 5, 4))


def _pair_sign(id_i, id_j) -> jax.Array:
  """s(i, j) as a uint32 multiplier: 1, or 2**32 - 1 (i.e. -1 mod 2**32)."""
  return jnp.where(id_i < id_j, jnp.uint32(1), jnp.uint32(0xFFFFFFFF))


@functools.partial(jax.jit, static_argnames='bits')
def mask(words: jax.Array, client_ids: jax.Array, participating: jax.Array,
         pair_seeds: jax.Array, self_seeds: jax.Array, secagg_key: jax.Array,
         bits: int) -> jax.Array:
  """Masks each participating client's words (Bonawitz et al. 2017, sec. 4).

  y_i = x_i + PRG(self_i) + sum_{j != i participating} s(i, j) PRG(pair_ij)
  mod 2**bits, with s(i, j) = +1 if client_ids[i] < client_ids[j] else -1.

  Both clients of a pair expand the same seed to the same mask, so the
  simulation expands it once: a sequential loop over the n self masks and
  the n (n - 1) / 2 slot pairs adds PRG(self_i) to row i and +-PRG(pair_ij)
  to rows i and j of one [n, d] accumulator (`lax.cond` skips jobs of
  non-participants). Memory stays O(n d), never [n, n, d], and each row is
  what its client would compute alone. (Measured on 2 CPU cores, n = 10,
  d = 159010: about 80 ms, against 172 ms for a vmap over clients of a loop
  over partners.)

  Args:
    words: [n, d] uint32 encoded updates.
    client_ids: [n] int32 global ids, distinct among the participants.
    participating: [n] bool; other rows (padding clients) are ignored.
    pair_seeds: [n, n, 2] uint32, the agreed secret of each pair (symmetric;
      entry [i, j] with i < j is read).
    self_seeds: [n, 2] uint32 self-mask seeds.
    secagg_key: a jax PRNG key for this round.
    bits: the modulus is 2**bits (static).

  Returns:
    [n, d] uint32 masked words; rows of non-participants are zeros.
  """
  n, d = words.shape
  part = jnp.asarray(participating).astype(bool)
  ids = jnp.asarray(client_ids, jnp.int32)
  first, second, is_pair = _mask_jobs(*np.triu_indices(n, k=1), n)
  keys = _job_keys(secagg_key, ids, first, second, is_pair,
                   jnp.asarray(pair_seeds, jnp.uint32),
                   jnp.asarray(self_seeds, jnp.uint32))
  first, second, is_pair = map(jnp.asarray, (first, second, is_pair))

  def add_job(k, acc):
    i, j = first[k], second[k]

    def add(acc):
      m = prg_words(keys[k], d, bits)
      sign = jnp.where(is_pair[k], _pair_sign(ids[i], ids[j]), jnp.uint32(1))
      other = jnp.where(is_pair[k], jnp.uint32(0) - sign, jnp.uint32(0))
      return acc.at[i].add(sign * m).at[j].add(other * m)

    return jax.lax.cond(part[i] & part[j], add, lambda a: a, acc)

  acc = jax.lax.fori_loop(0, first.shape[0], add_job,
                          jnp.asarray(words, jnp.uint32))
  return jnp.where(part[:, None], acc & jnp.uint32(_word_mask(bits)),
                   jnp.uint32(0))


@functools.partial(jax.jit, static_argnames='bits')
def unmask(total: jax.Array, client_ids: jax.Array,
           participating: jax.Array, arrived: jax.Array,
           recovered_pair_seeds: jax.Array, recovered_self_seeds: jax.Array,
           secagg_key: jax.Array, bits: int) -> jax.Array:
  """The server's unmasking (Bonawitz et al. 2017, sec. 4, round 4).

  From the modular sum of the arrived clients' masked words, removes the
  self mask of every arrived client i and, for every dropped client j
  (participating but not arrived), the pairwise mask s(i, j) PRG(pair_ij)
  that i added for j. Pairwise masks between two arrived clients cancel in
  the sum and are not touched.

  One sequential loop over the n self masks and the n * n ordered pairs,
  with `lax.cond`, so only the masks that need removing are generated
  (under an outer vmap the conds become selects: still correct, but every
  mask is generated).

  Args:
    total: [d] uint32 modular sum of the masked rows of the arrived clients.
    client_ids: [n] int32 global ids.
    participating: [n] bool.
    arrived: [n] bool: participating and not dropped.
    recovered_pair_seeds: [n, n, 2] uint32; only the [arrived i, dropped j]
      entries are read.
    recovered_self_seeds: [n, 2] uint32; only arrived rows are read.
    secagg_key: the round's jax PRNG key (as given to `mask`).
    bits: the modulus is 2**bits (static).

  Returns:
    [d] uint32: the modular sum of the arrived clients' unmasked words.
  """
  (d,) = total.shape
  n = client_ids.shape[0]
  part = jnp.asarray(participating).astype(bool)
  came = jnp.asarray(arrived).astype(bool) & part
  dropped = part & ~came
  ids = jnp.asarray(client_ids, jnp.int32)
  first, second, is_pair = _mask_jobs(
      *[a.ravel() for a in np.indices((n, n))], n)
  keys = _job_keys(secagg_key, ids, first, second, is_pair,
                   jnp.asarray(recovered_pair_seeds, jnp.uint32),
                   jnp.asarray(recovered_self_seeds, jnp.uint32))
  first, second, is_pair = map(jnp.asarray, (first, second, is_pair))

  def remove_job(k, acc):
    i, j = first[k], second[k]

    def remove(acc):
      sign = jnp.where(is_pair[k], _pair_sign(ids[i], ids[j]), jnp.uint32(1))
      return acc - sign * prg_words(keys[k], d, bits)

    needed = came[i] & jnp.where(is_pair[k], dropped[j], True)
    return jax.lax.cond(needed, remove, lambda a: a, acc)

  acc = jax.lax.fori_loop(0, first.shape[0], remove_job,
                          jnp.asarray(total, jnp.uint32))
  return acc & jnp.uint32(_word_mask(bits))


def mask_words(num_participating: int, num_arrived: int, size: int) -> int:
  """PRG words the protocol generates in a round, for reporting its cost.

  Each participating client generates its self mask and one pairwise mask
  per other participant (p * p masks in all); the server generates the self
  mask of each arrived client and, for each (arrived, dropped) pair, their
  pairwise mask (a + a * (p - a) masks). Each mask has `size` words. This
  is the protocol's cost; `mask` expands each pair's mask once for both
  clients, so the simulation itself generates p (p - 1) / 2 fewer masks.

  Args:
    num_participating: p, the participating clients.
    num_arrived: a, those whose masked input arrived.
    size: words per mask (the update's size).

  Returns:
    (p * p + a + a * (p - a)) * size.

  Examples:
    >>> mask_words(3, 2, 10)
    130
  """
  p, a = num_participating, num_arrived
  return (p * p + a + a * (p - a)) * size


@functools.partial(jax.jit, static_argnames='config')
def secure_sum(vectors: jax.Array, client_ids: jax.Array,
               participating: jax.Array, arrived: jax.Array, inputs,
               secagg_key: jax.Array,
               config: SecAggConfig) -> tuple[jax.Array, dict]:
  """Sum over the arrived clients of their quantized vectors, securely.

  encode -> mask (participating clients) -> modular sum over the arrived
  clients -> unmask (recovered seeds) -> decode. Bit for bit equal to
  `quantized_sum(vectors, arrived, config)`.

  Args:
    vectors: [n, d] float32, one row per cohort slot.
    client_ids: [n] int32 global ids, distinct among the participants.
    participating: [n] bool; False marks padding slots.
    arrived: [n] bool; participating clients whose masked input arrived.
    inputs: a `secagg_protocol.SecAggRoundInputs` of arrays (its seeds are
      read; the `arrived` argument, not `inputs.arrived`, selects rows).
    secagg_key: the round's jax PRNG key.
    config: the encoding (static).

  Returns:
    ([d] float32 sum, {'secagg_clipped_fraction': fraction of the
    participating clients' coordinates that were clipped}).
  """
  bits = config.bits
  part = jnp.asarray(participating).astype(bool)
  words = encode(vectors, config)
  masked = mask(words, client_ids, part, inputs.pair_seeds,
                inputs.self_seeds, secagg_key, bits)
  total = modular_sum(masked, arrived, bits)
  total = unmask(total, client_ids, part, arrived,
                 inputs.recovered_pair_seeds, inputs.recovered_self_seeds,
                 secagg_key, bits)
  return decode(total, config), {
      'secagg_clipped_fraction': clipped_fraction(vectors, config, part)}


def quantized_sum(vectors: jax.Array, arrived: jax.Array,
                  config: SecAggConfig) -> jax.Array:
  """The plain (unmasked) sum of the arrived clients' quantized vectors.

  What `secure_sum` must equal bit for bit.

  Args:
    vectors: [n, d] float32.
    arrived: [n] bool or float; nonzero rows are summed.
    config: the encoding (static).

  Returns:
    [d] float32: decode(modular_sum(encode(vectors), arrived)).
  """
  words = encode(vectors, config)
  return decode(modular_sum(words, arrived, config.bits), config)
