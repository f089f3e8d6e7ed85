"""What a client does to its message before sending it: momentum and
compression, as client stages of the channel (`fedjax_core.channel`).

- Client momentum, as in MoNNA (Farhadkhani et al., "Robust Collaborative
  Learning with Linear Gradient Overhead", ICML 2023): each client sends
  `m_i <- beta m_i + (1 - beta) message_i` instead of its message. A client's
  first round sends its message itself (`m_i = message_i`), so that under
  partial participation a newly sampled client is not shrunk by (1 - beta).
- Compression (`fedjax_core.channel.compression`), applied to each leaf of the
  message (each layer) separately: top-k and sign compression keep an
  error-feedback residual per client (Karimireddy et al. 2019); QSGD and
  FedZip do not. The server receives the decoded message.

The momentum and the residual are per-client state of their stages, kept
and checkpointed by the state store next to the algorithm's client state.
`bytes_up` (the encoded message's size, summed over its leaves) joins the
client's metrics.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from fedjax_core.channel import compression
from fedjax_core import streams
from fedjax_core.channel.stage import Stage
from fedjax_core.errors import SettingError

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Uplink:
  """Settings of the client -> server channel (or, without momentum, of
  the compressed broadcast: `fedjax_core.channel.downlink`).

  Attributes:
    compressor: one of `compression.COMPRESSORS`.
    fraction: share of coordinates top-k and FedZip keep, per layer.
    levels: QSGD's quantization levels s.
    num_clusters: FedZip's k-means clusters per layer.
    momentum: MoNNA's client momentum beta; None sends the plain message.
  """

  compressor: str = 'none'
  fraction: float = 0.01
  levels: int = 16
  num_clusters: int = 3
  momentum: float | None = None

  def __post_init__(self):
    if self.compressor not in compression.COMPRESSORS:
      raise SettingError('uplink.compressor', f'Unknown compressor '
                         f'{self.compressor!r}; valid: '
                         f'{", ".join(compression.COMPRESSORS)}.')
    if not 0 < self.fraction <= 1:
      raise SettingError('uplink.fraction', 'The compressed fraction of '
                         'each layer\'s coordinates must be in (0, 1], got '
                         f'{self.fraction!r}.')
    if self.levels < 1:
      raise SettingError('uplink.levels', 'QSGD\'s quantization levels '
                         f'must be >= 1, got {self.levels}.')
    if self.num_clusters < 1:
      raise SettingError('uplink.num_clusters', 'FedZip\'s k-means clusters '
                         f'per layer must be >= 1, got {self.num_clusters}.')
    if self.momentum is not None and not 0 <= self.momentum < 1:
      raise SettingError('uplink.momentum', 'The client momentum beta must '
                         'be in [0, 1) (or None for none), got '
                         f'{self.momentum!r}.')

  @property
  def error_feedback(self) -> bool:
    """Whether the compressor keeps a residual (top-k and sign)."""
    return self.compressor in ('topk', 'sign')

  def compress_tree(self, tree: PyTree, key: jax.Array,
                    residual: PyTree = None
                    ) -> tuple[PyTree, PyTree, jax.Array]:
    """Compresses each leaf (layer) of `tree` on its own.

    Args:
      tree: the arrays to send.
      key: the compressor's key; leaf i uses `fold_in(key, i)`.
      residual: error feedback's residual, shaped like `tree`; None: zeros.

    Returns:
      The decoded tree, the new residual (shaped like `tree`) and the
      encoded size in bytes, summed over the leaves.
    """
    leaves, treedef = jax.tree.flatten(tree)
    residuals = ([None] * len(leaves) if residual is None
                 else treedef.flatten_up_to(residual))
    decoded, new_residuals, num_bytes = [], [], jnp.float32(0)
    for i, (leaf, leaf_residual) in enumerate(zip(leaves, residuals)):
      flat = leaf.reshape(-1).astype(jnp.float32)
      if leaf_residual is None:
        leaf_residual = jnp.zeros_like(flat)
      encoded, new_residual = compression.compress(
          self.compressor, flat, jax.random.fold_in(key, i),
          leaf_residual.reshape(-1), fraction=self.fraction,
          levels=self.levels, num_clusters=self.num_clusters)
      decoded.append(encoded.decoded.reshape(leaf.shape).astype(leaf.dtype))
      new_residuals.append(new_residual.reshape(leaf.shape))
      num_bytes = num_bytes + encoded.num_bytes
    return (jax.tree.unflatten(treedef, decoded),
            jax.tree.unflatten(treedef, new_residuals), num_bytes)


def momentum_stage(beta: float) -> Stage:
  """MoNNA's client momentum: each client sends `m_i <- beta m_i + (1 -
  beta) message_i`; its first round sends the message itself.

  Examples:
    >>> pipeline = channel.chain(momentum_stage(0.9), channel.mean())
  """

  def init(template):
    return (jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32),
                         template), jnp.zeros((), jnp.int32))

  def apply(state, packet, key):
    del key
    momentum, rounds = state
    first = rounds == 0
    message = jax.tree.map(
        lambda m, x: jnp.where(first, x, beta * m + (1 - beta) * x),
        momentum, packet.message)
    return packet._replace(message=message), (message, rounds + 1), {}

  return Stage('client momentum', 'client', apply, init=init)


def compression_stage(settings: Uplink) -> Stage:
  """The client's message compressed per layer (`Uplink.compress_tree`),
  with an error-feedback residual per client for top-k and sign; the
  server receives the decoded message. Adds the metric `bytes_up`.

  Examples:
    >>> stage = compression_stage(Uplink('topk', fraction=0.1))
  """

  def init(template):
    if not settings.error_feedback:
      return ()
    return jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.float32), template)

  def apply(residual, packet, key):
    message, new_residual, num_bytes = settings.compress_tree(
        packet.message, key, residual if settings.error_feedback else None)
    residual = new_residual if settings.error_feedback else ()
    return (packet._replace(message=message), residual,
            {'bytes_up': num_bytes})

  return Stage(f'{settings.compressor} compression', 'client', apply,
               init=init, stream=streams.COMPRESSION)
