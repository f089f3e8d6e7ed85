"""Server -> client compression of the model broadcast.

The server keeps `broadcast`, the model every client holds, starting from
the initial model (which clients build from the common seed). Each round it
sends `C(x - broadcast)` for its current model x with one of
`fedjax_core.channel.compression`'s compressors, applied per layer, and both sides
update `broadcast += C(x - broadcast)`; what the compressor drops stays in
`x - broadcast` and goes out in later rounds (the error feedback of
bidirectional compression, e.g. Tang et al. 2019, "DoubleSqueeze").
Clients train from `broadcast`; the server applies their updates to x.

An unbiased quantizer of variance factor omega (E|C(v) - v|^2 <= omega
|v|^2) would let that error grow when omega > 1, so QSGD's step is damped
to `broadcast += C(x - broadcast) / (1 + omega)`, the memory step of DIANA
(Mishchenko et al. 2019), with omega = min(d / s^2, sqrt(d) / s) per layer
(Alistarh et al. 2017, Lemma 3.1).

For every client to hold `broadcast`, every client receives every round's
message, sampled or not; `bytes_down` is that message's size. Only the
model parameters are compressed: other server state an algorithm sends
(control variates, corrections) goes as it is and is not counted.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp

from fedjax_core import streams
from fedjax_core.channel import uplink
from fedjax_core.algorithm import Algorithm
from fedjax_core.channel.stage import Stage

PyTree = Any


def broadcast_stage(settings: uplink.Uplink) -> Stage:
  """The compressed broadcast as the channel's 'broadcast' stage: its state
  is the model the clients hold (initially the server's initial model),
  its metric `bytes_down` the message's size.

  Examples:
    >>> stage = broadcast_stage(uplink.Uplink('topk', fraction=0.1))
  """

  def init(params):
    return jax.tree.map(jnp.copy, params)

  def apply(broadcast, params, key):
    broadcast, num_bytes = compress_broadcast(params, broadcast, key,
                                              settings)
    return broadcast, broadcast, {'bytes_down': num_bytes}

  return Stage(f'{settings.compressor} broadcast', 'broadcast', apply,
               init=init, stream=streams.DOWNLINK)


def compress_broadcast(params: PyTree, broadcast: PyTree, key: jax.Array,
                       channel: uplink.Uplink) -> tuple[PyTree, jax.Array]:
  """The clients' new model and the message's size in bytes.

  Args:
    params: the server's current model x.
    broadcast: the model the clients hold.
    key: this round's key (QSGD's rounding).
    channel: the compressor and its settings (without momentum).

  Examples:
    >>> broadcast, num_bytes = compress_broadcast(
    ...     x, broadcast, key, uplink.Uplink('topk', fraction=0.1))
  """
  change = jax.tree.map(jnp.subtract, params, broadcast)
  steps, _, num_bytes = channel.compress_tree(change, key)
  if channel.compressor == 'qsgd':
    steps = jax.tree.map(
        lambda step: step / (1 + qsgd_variance_factor(step.size,
                                                      channel.levels)),
        steps)
  return jax.tree.map(jnp.add, broadcast, steps), num_bytes


def qsgd_variance_factor(d: int, levels: int) -> float:
  """omega = min(d / s^2, sqrt(d) / s) of QSGD with s levels on d
  coordinates (Alistarh et al. 2017, Lemma 3.1)."""
  return min(d / levels**2, math.sqrt(d) / levels)


def with_params(algorithm: Algorithm, server_state: PyTree,
                params: PyTree) -> PyTree:
  """`server_state` with the arrays `algorithm.server_params` reads
  replaced by `params`.

  The params are found by identity: `server_params` must return arrays of
  the server state itself (an attribute access, as every algorithm here
  does), not arrays computed from it.
  """
  replacements = {id(old): new for old, new in zip(
      jax.tree.leaves(algorithm.server_params(server_state)),
      jax.tree.leaves(params))}
  leaves, treedef = jax.tree.flatten(server_state)
  if sum(id(leaf) in replacements for leaf in leaves) != len(replacements):
    raise ValueError(
        'Downlink compression needs the algorithm\'s server_params to '
        'return arrays held in its server state; this one computes them.')
  return jax.tree.unflatten(
      treedef, [replacements.get(id(leaf), leaf) for leaf in leaves])
