"""Gradient tracking: GT-DSGD / DIGing, decentralized SGD on a tracked
estimate of the network's mean gradient.

Pu & Nedic 2021, "Distributed stochastic gradient tracking methods" (Math.
Programming), and Nedic, Olshevsky & Shi 2017, "Achieving Geometric
Convergence for Distributed Optimization over Time-Varying Graphs" (DIGing).
Node i keeps a model x_i and a tracker y_i; with a doubly stochastic W,

  x_{t+1} = W (x_t - eta_t y_t)
  y_{t+1} = W y_t + g(x_{t+1}) - g(x_t),      y_0 = g(x_0),

so that `mean_i y_i = mean_i g_i(x_i)` after every round (the tracking
invariant) and each node steps along an estimate of the global gradient
rather than its own, which removes D-PSGD's heterogeneity bias.

As one node of the engine's gossip (`fedjax_core.algorithm.GossipMessage`),
the node state holds x_i, `W y_{t-1}` (as mixed in the last round) and
`g_{t-1}`, both zero at the start. In round t the node's local steps do not
move x: they accumulate gradients at the fixed x_i, and g_t is the gradient
of the mean loss over all the round's real examples, i.e. the round's local
batches form one larger batch (each batch weighted by its real examples). Then

  y_t = W y_{t-1} + g_t - g_{t-1}    (= g_0 at t = 0, from the zeros)
  sent = (x_i - eta_t y_t, y_t),   kept = g_t,

and the node takes `x_i <- mixed[0]`, `W y_t <- mixed[1]`, `g_t <- kept`. The
model and the tracker go through the same gossip (the same W, and Q gossip
steps mix both Q times). `LocalSGD`'s clipping and coupled weight decay act
on the step: `x_i - eta_t (clip(y_t) + wd x_i)`; the tracker itself follows
the data gradients only, so the invariant holds unchanged.
"""

from typing import Any, Callable, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from algorithms.decentralized import node_init
from fedjax_core.algorithm import Algorithm, ClientOutput, GossipMessage
from fedjax_core.toolkit import local_sgd as local_sgd_lib
from fedjax_core.toolkit import losses
from fedjax_core.toolkit import server_model

PyTree = Any
ApplyFn = Callable[[PyTree, Any], Any]


@flax.struct.dataclass
class TrackingState:
  """One node's state between rounds.

  Attributes:
    model: the node's model x_i and its round count.
    tracker_mixed: `(W y_{t-1})_i`, the tracker as mixed last round (zeros
      before the first round).
    grad_prev: g_{t-1}, the node's gradient of its last round (zeros before
      the first round).
  """

  model: server_model.ServerModel
  tracker_mixed: PyTree
  grad_prev: PyTree


class Tracked(NamedTuple):
  """What a node sends to its neighbours.

  Attributes:
    params: `x_i - eta_t y_t`, the model after its step.
    tracker: y_t.
  """

  params: PyTree
  tracker: PyTree


@flax.struct.dataclass
class TrackingLocalState:
  """A node's round of gradient accumulation at its fixed model.

  Attributes:
    params: x_i, fixed over the round.
    grad_sum: the sum over the round's steps of the batch's mean gradient
      times its count of real examples.
  """

  params: PyTree
  grad_sum: PyTree


def gradient_tracking(apply_fn: ApplyFn,
                      local_sgd: local_sgd_lib.LocalSGD) -> Algorithm:
  """GT-DSGD (Pu & Nedic 2021; DIGing of Nedic, Olshevsky & Shi 2017).

  A round makes one gradient-tracking iteration: its local steps only
  gather the gradient g_t at the node's model (over all of the round's
  batches), and the node sends its stepped model and its tracker for mixing.
  A node whose round holds no real example reuses its last gradient.

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the step size eta_t (with its per-round decay), clipping and
      coupled weight decay of the step `x - eta_t y`.

  Returns:
    The node's algorithm.

  Examples:
    >>> algorithm = gradient_tracking(model.apply, LocalSGD(0.05))
  """
  grad_fn = losses.loss_and_grad(apply_fn)

  def server_init(params, rng):
    del rng
    zeros = jax.tree.map(jnp.zeros_like, params)
    return TrackingState(model=node_init(params), tracker_mixed=zeros,
                         grad_prev=zeros)

  def client_init(node, client_state, rng):
    del client_state, rng
    params = node.model.params
    return TrackingLocalState(params=params,
                              grad_sum=jax.tree.map(jnp.zeros_like, params))

  def local_step(local, batch, rng):
    del rng
    loss, grads = grad_fn(local.params, batch)
    grad_sum = optax.tree.add_scale(local.grad_sum, jnp.sum(batch.mask), grads)
    return local.replace(grad_sum=grad_sum), {'loss': loss}

  def client_final(node, client_state, local, info):
    del client_state
    count = info.num_examples
    grads = jax.tree.map(
        lambda total, previous: jnp.where(
            count > 0, total / jnp.maximum(count, 1.0), previous),
        local.grad_sum, node.grad_prev)
    tracker = jax.tree.map(lambda mixed, g, g_prev: mixed + g - g_prev,
                           node.tracker_mixed, grads, node.grad_prev)
    x = node.model.params
    stepped = local_sgd.step(
        x, tracker, local_sgd.learning_rate_at(node.model.round_num))
    metrics = {'delta_norm': optax.tree.norm(optax.tree.sub(stepped, x)),
               'tracker_norm': optax.tree.norm(tracker),
               'grad_norm': optax.tree.norm(grads)}
    return ClientOutput(
        message=GossipMessage(sent=Tracked(params=stepped, tracker=tracker),
                              kept=grads),
        weight=jnp.float32(1.0), client_state=(), metrics=metrics)

  def server_update(node, message, cohort):
    del cohort
    mixed = message.sent
    params = mixed.params
    update_norm = optax.tree.norm(optax.tree.sub(params, node.model.params))
    model = node.model.replace(params=params,
                               round_num=node.model.round_num + 1)
    return (TrackingState(model=model, tracker_mixed=mixed.tracker,
                          grad_prev=message.kept),
            {'server_update_norm': update_norm})

  return Algorithm(
      server_init=server_init,
      client_state_init=lambda params: (),
      client_init=client_init,
      local_step=local_step,
      client_final=client_final,
      server_update=server_update,
      server_params=lambda node: node.model.params)
