"""Host-side setup of one round of secure aggregation with dropouts.

Simulates, honestly and on the host, the key-agreement, secret-sharing and
unmasking rounds of Bonawitz et al. 2017, "Practical Secure Aggregation for
Privacy-Preserving Machine Learning" (CCS), sec. 4, with Shamir 1979 secret
sharing (`fedjax_core.channel.shamir`). Its output, `SecAggRoundInputs`, is what the
compiled round needs to mask and unmask (`secure_aggregation.secure_sum`):
the seeds the clients agreed and the seeds the server recovered.

The key agreement is a SIMULATION: a toy Diffie-Hellman in the
multiplicative group mod P = 2**127 - 1 with generator G = 3 and secrets
from a numpy Generator. It reproduces the protocol's data flow (the server
can only recover what t surviving clients' shares determine), not its
security; it is not cryptography.
"""

from typing import NamedTuple

import numpy as np

from fedjax_core.channel import shamir
from fedjax_core import streams
from fedjax_core.errors import SettingError

P = 2**127 - 1
G = 3


class SecAggRoundInputs(NamedTuple):
  """One round's seeds for `secure_aggregation.secure_sum`.

  Attributes:
    pair_seeds: [n, n, 2] uint32, the secret each pair of participants
      agreed (low word first); symmetric, zero on the diagonal and for
      non-participants.
    self_seeds: [n, 2] uint32, each participant's self-mask seed.
    arrived: [n] bool, participating and not dropped.
    recovered_pair_seeds: [n, n, 2] uint32, the pair secrets the server
      recovered: the [arrived i, dropped j] entries, zero elsewhere.
    recovered_self_seeds: [n, 2] uint32, the self-mask seeds the server
      reconstructed for the arrived clients, zero elsewhere.
  """
  pair_seeds: np.ndarray
  self_seeds: np.ndarray
  arrived: np.ndarray
  recovered_pair_seeds: np.ndarray
  recovered_self_seeds: np.ndarray


class SecAggThresholdError(SettingError):
  """Fewer clients survived than the secret-sharing threshold."""


def _random_bits(rng: np.random.Generator, bits: int) -> int:
  """A uniform integer of `bits` bits from 32-bit draws."""
  words = rng.integers(0, 2**32, size=-(-bits // 32), dtype=np.uint64)
  value = 0
  for w in words:
    value = (value << 32) | int(w)
  return value >> (32 * len(words) - bits)


def _key_secret(rng: np.random.Generator) -> int:
  """A uniform key-agreement secret in [1, P - 1]."""
  while True:
    value = _random_bits(rng, 127)
    if value < P - 1:
      return value + 1


def _words(secret: int) -> tuple[int, int]:
  """The low 64 bits of `secret` as two uint32 words, low word first."""
  return secret & 0xFFFFFFFF, (secret >> 32) & 0xFFFFFFFF


def _recover(secret: int, holders: list[int], threshold: int,
             rng: np.random.Generator) -> int:
  """Shares `secret` t-of-n and reconstructs it from the holders' shares.

  Only the collected shares (at x = holder position + 1) are evaluated;
  the other participants' shares would never be read.
  """
  if len(holders) < threshold:
    raise SecAggThresholdError(
        'secure_aggregation.threshold',
        f'{len(holders)} shares collected, threshold {threshold}.')
  shares = shamir.split(secret, [h + 1 for h in holders], threshold, rng)
  return shamir.reconstruct(shares)


def check_threshold(participants: int, dropout_fraction: float,
                    threshold: int | None) -> int:
  """The threshold t of a round with `participants` clients, of whom
  round(dropout_fraction * participants) drop.

  Raises:
    ValueError: if t is not in [1, participants].
    SecAggThresholdError: if fewer than t clients survive the dropouts.
  """
  p = participants
  t = p // 2 + 1 if threshold is None else threshold
  if not 1 <= t <= p:
    raise SettingError(
        'secure_aggregation.threshold', f'Secure aggregation threshold must '
        f'be in [1, {p}] (the participating clients), got {threshold}.')
  survivors = p - round(dropout_fraction * p)
  if survivors < t:
    raise SecAggThresholdError(
        'secure_aggregation.dropout_fraction',
        f'Secure aggregation cannot unmask: only {survivors} of {p} '
        f'participating clients survive the dropouts, fewer than the '
        f'threshold t = {t} needed to reconstruct the dropped clients\' '
        f'masks. Lower dropout_fraction (now {dropout_fraction}) or '
        f'threshold (now {t}).')
  return t


def round_setup(seed: int, round_num: int, client_ids: np.ndarray,
                participating: np.ndarray, dropout_fraction: float,
                threshold: int | None) -> SecAggRoundInputs:
  """Runs one round of the protocol's host side (Bonawitz et al. 2017).

  1. Each participating client u draws a key-agreement secret sk_u in
     [1, P - 1] and a 64-bit self-mask seed b_u; pk_u = G**sk_u mod P.
     The pair secret of u and v is pk_v**sk_u = pk_u**sk_v mod P; its low
     64 bits are `pair_seeds[u, v] = pair_seeds[v, u]`.
  2. round(dropout_fraction * p) of the p participants, chosen at random,
     drop after masking: their masked input never arrives.
  3. Every participant Shamir-shares sk_u and b_u t-of-p among the
     participants (share point x = position + 1). The server collects
     shares from t random survivors; it reconstructs sk_j of each dropped
     j and recomputes pk_i**sk_j with each arrived i, and b_i of each
     arrived i. Only those t shares of each secret are evaluated. The
     recovered arrays hold reconstructed values only, so a wrong
     reconstruction makes the unmasked sum wrong, never silently right.

  All randomness comes from `np.random.default_rng((seed, round_num,
  0x5ec))`, so a resumed run repeats the round exactly.

  Args:
    seed: the run's seed (>= 0).
    round_num: the round (>= 0).
    client_ids: [n] global ids of the cohort slots, distinct among the
      participants.
    participating: [n] bool; False marks padding slots.
    dropout_fraction: in [0, 1), the fraction of participants that drop.
    threshold: the secret-sharing threshold t in [1, p]; None means
      p // 2 + 1 (an honest majority, as the paper's security needs).

  Returns:
    The round's `SecAggRoundInputs` (numpy arrays).

  Raises:
    ValueError: on a dropout fraction or threshold out of range, no
      participants, or repeated participant ids.
    SecAggThresholdError: if fewer than t clients survive the dropouts.
  """
  client_ids = np.asarray(client_ids)
  part = np.asarray(participating).astype(bool)
  n = client_ids.shape[0]
  if part.shape != (n,):
    raise ValueError(
        f'participating has shape {part.shape}, expected ({n},).')
  if not 0.0 <= dropout_fraction < 1.0:
    raise SettingError(
        'secure_aggregation.dropout_fraction', f'Secure aggregation '
        f'dropout_fraction must be in [0, 1), got {dropout_fraction}.')
  positions = np.flatnonzero(part)
  p = len(positions)
  if p == 0:
    raise ValueError('Secure aggregation needs at least one participant.')
  if len(set(client_ids[positions].tolist())) != p:
    raise ValueError('Participating client ids must be distinct.')
  t = check_threshold(p, dropout_fraction, threshold)

  rng = np.random.default_rng((seed, round_num, streams.SECAGG_PROTOCOL))
  sk, pk, self_secret = {}, {}, {}
  for u in positions:
    sk[u] = _key_secret(rng)
    self_secret[u] = _random_bits(rng, 64)
    pk[u] = pow(G, sk[u], P)

  pair_seeds = np.zeros((n, n, 2), np.uint32)
  self_seeds = np.zeros((n, 2), np.uint32)
  for a, u in enumerate(positions):
    self_seeds[u] = _words(self_secret[u])
    for v in positions[a + 1:]:
      pair_seeds[u, v] = pair_seeds[v, u] = _words(pow(pk[v], sk[u], P))

  dropped = np.zeros(n, bool)
  dropped[rng.choice(positions, round(dropout_fraction * p),
                     replace=False)] = True
  arrived = part & ~dropped
  survivors = np.flatnonzero(arrived)

  holders = sorted(rng.choice(survivors, t, replace=False).tolist())
  recovered_pair_seeds = np.zeros((n, n, 2), np.uint32)
  recovered_self_seeds = np.zeros((n, 2), np.uint32)
  for j in np.flatnonzero(dropped):
    sk_j = _recover(sk[j], holders, t, rng)
    for i in survivors:
      recovered_pair_seeds[i, j] = _words(pow(pk[i], sk_j, P))
  for i in survivors:
    recovered_self_seeds[i] = _words(_recover(self_secret[i], holders, t,
                                              rng))
  return SecAggRoundInputs(pair_seeds, self_seeds, arrived,
                           recovered_pair_seeds, recovered_self_seeds)
