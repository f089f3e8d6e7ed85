"""What a client does to its message before sending it: momentum and
compression, as a wrapper around any algorithm.

- Client momentum, as in MoNNA (Farhadkhani et al., "Robust Collaborative
  Learning with Linear Gradient Overhead", ICML 2023): each client sends
  `m_i <- beta m_i + (1 - beta) message_i` instead of its message. A client's
  first round sends its message itself (`m_i = message_i`), so that under
  partial participation a newly sampled client is not shrunk by (1 - beta).
- Compression (`fedjax_core.compression`), applied to each leaf of the
  message (each layer) separately: top-k and sign compression keep an
  error-feedback residual per client (Karimireddy et al. 2019); QSGD and
  FedZip do not. The server receives the decoded message.

The momentum and the residual are per-client state: the wrapper extends the
algorithm's client state, so the state store keeps and checkpoints them like
any other. `bytes_up` (the encoded message's size, summed over its leaves)
joins the client's metrics.
"""

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_core import compression
from fedjax_core.algorithm import Algorithm, ClientOutput

PyTree = Any
_COMPRESSION_STREAM = 0x636f6d70
_EMPTY = ()


@dataclasses.dataclass(frozen=True)
class Uplink:
  """Settings of the client -> server channel (or, without momentum, of
  the compressed broadcast: `fedjax_core.downlink`).

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
      raise ValueError(f'Unknown --compressor {self.compressor!r}; valid: '
                       f'{", ".join(compression.COMPRESSORS)}.')
    if not 0 < self.fraction <= 1:
      raise ValueError('--compress_fraction must be in (0, 1], got '
                       f'{self.fraction!r}.')
    if self.levels < 1:
      raise ValueError(f'--qsgd_levels must be >= 1, got {self.levels}.')
    if self.num_clusters < 1:
      raise ValueError('--fedzip_clusters must be >= 1, got '
                       f'{self.num_clusters}.')
    if self.momentum is not None and not 0 <= self.momentum < 1:
      raise ValueError('--monna_momentum must be in [0, 1), got '
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


class UplinkClientState(NamedTuple):
  """A client's state under an uplink.

  Attributes:
    inner: the algorithm's own client state.
    residual: error feedback's residual, shaped like the message (or ()).
    momentum: MoNNA's momentum, shaped like the message (or ()).
    rounds: rounds this client took part in, int32 (momentum only).
  """

  inner: PyTree
  residual: PyTree
  momentum: PyTree
  rounds: PyTree


def with_uplink(algorithm: Algorithm, uplink: Uplink,
                message_template: PyTree) -> Algorithm:
  """`algorithm` with its clients' messages sent through `uplink`.

  Args:
    algorithm: the algorithm to wrap.
    uplink: the channel's settings.
    message_template: a pytree shaped like one client's message (arrays or
      `jax.ShapeDtypeStruct`s), for the per-client state's shape.

  Examples:
    >>> wrapped = with_uplink(fedavg, Uplink('topk', fraction=0.1), template)
  """
  zeros = lambda: jax.tree.map(
      lambda s: jnp.zeros(s.shape, jnp.float32), message_template)
  use_momentum = uplink.momentum is not None

  def client_state_init(params):
    return UplinkClientState(
        inner=algorithm.client_state_init(params),
        residual=zeros() if uplink.error_feedback else _EMPTY,
        momentum=zeros() if use_momentum else _EMPTY,
        rounds=jnp.zeros((), jnp.int32) if use_momentum else _EMPTY)

  def client_init(server_state, client_state, rng):
    local = algorithm.client_init(server_state, client_state.inner, rng)
    return local, jax.random.fold_in(rng, _COMPRESSION_STREAM)

  def local_step(local, batch, rng):
    inner, key = local
    inner, metrics = algorithm.local_step(inner, batch, rng)
    return (inner, key), metrics

  def client_final(server_state, client_state, local, info):
    inner, key = local
    output = algorithm.client_final(server_state, client_state.inner, inner,
                                    info)
    message, state = output.message, client_state
    if use_momentum:
      beta = uplink.momentum
      first = state.rounds == 0
      message = jax.tree.map(
          lambda m, x: jnp.where(first, x, beta * m + (1 - beta) * x),
          state.momentum, message)
      state = state._replace(momentum=message, rounds=state.rounds + 1)
    if uplink.error_feedback:
      message, residual, num_bytes = uplink.compress_tree(
          message, key, state.residual)
      state = state._replace(residual=residual)
    else:
      message, _, num_bytes = uplink.compress_tree(message, key)
    state = state._replace(inner=output.client_state)
    return ClientOutput(message=message, weight=output.weight,
                        client_state=state,
                        metrics={**output.metrics, 'bytes_up': num_bytes})

  return algorithm._replace(client_state_init=client_state_init,
                            client_init=client_init, local_step=local_step,
                            client_final=client_final)
