"""Decentralized (gossip) learning: D-PSGD, DFedAvg, DFedAvgM and DFedSAM.

N nodes, each with its own model x_i and data, talk only to their neighbours
in a graph with a doubly stochastic mixing matrix W. Each factory here
returns an ordinary `Algorithm` that describes one node (see
`fedjax_core.algorithm.GossipMessage`): the node trains locally from x_i,
`client_final` returns `GossipMessage(sent, kept)`, the engine mixes `sent`
into `mixed_i = sum_j W_ij sent_j` (one or several gossip steps, or a robust
rule) and `server_update` builds the node's next model from `mixed_i` and
`kept`. A round of local SGD runs K steps with learning rate
`eta_t = lr * lr_decay ** t` (`LocalSGD`, with its clipping and coupled
weight decay), t counting the rounds that this node has taken part in.

- D-PSGD: Lian et al. 2017, "Can Decentralized Algorithms Outperform
  Centralized Algorithms? A Case Study for Decentralized Parallel Stochastic
  Gradient Descent" (NeurIPS):

    x_i <- sum_j W_ij x_j - eta g_i(x_i).

  The gradient is taken at the node's pre-mixing model, so the node sends x_i
  and keeps its own change; with K local steps from x_i it keeps
  `y_K - x_i` (K = 1 is D-PSGD exactly; K > 1 its local-step form).
- DFedAvg / DFedAvgM: Sun, Li & Wang 2022, "Decentralized Federated
  Averaging" (IEEE TPAMI), Algorithm 1: K local steps of heavy-ball SGD from
  y^0 = y^{-1} = x_i (the momentum restarts every round),

    y^{k+1} = y^k - eta g_i(y^k) + theta (y^k - y^{k-1}),

  then x_i <- sum_j W_ij y_j^K. theta = 0 is DFedAvg. (Within a round eta is
  constant, so this is also torch's `SGD(momentum=theta)` with a fresh
  buffer.)
- DFedSAM: Shi et al. 2023, "Improving the Model Consistency of
  Decentralized Federated Learning" (ICML): DFedAvg whose local steps take
  the SAM gradient of Foret et al. 2021, `g_i(y + rho g / ||g||)`.
  DFedSAM-MGS (Multiple Gossip Steps) is the same node algorithm with Q
  gossip steps per round, `x_i <- (W^Q y^K)_i`, which the engine runs.

Defaults: DFedAvgM theta = 0.9, DFedSAM rho = 0.05; `LocalSGD`'s neutral
decay, weight decay and clipping unless set. Gradient tracking (GT-DSGD,
DIGing) is in `algorithms.gradient_tracking`.
"""

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax

from fedjax_core.algorithm import (Algorithm, ClientOutput, GossipMessage,
                                   is_traced)
from fedjax_core.toolkit import local_sgd as local_sgd_lib
from fedjax_core.toolkit import losses
from fedjax_core.toolkit import server_model
from fedjax_core.toolkit import sharpness

PyTree = Any
ApplyFn = Callable[[PyTree, Any], Any]


def node_init(params: PyTree) -> server_model.ServerModel:
  """A node's state before its first round: its model x_i and a round count
  (for the learning-rate decay); no optimizer state, the gossip is the
  node's update."""
  return server_model.ServerModel(params=params, opt_state=(),
                                  round_num=jnp.int32(0))


def _moved(node: server_model.ServerModel, params: PyTree
           ) -> tuple[server_model.ServerModel, dict[str, jax.Array]]:
  """The node with model `params` and one more round counted."""
  update_norm = optax.tree.norm(optax.tree.sub(params, node.params))
  return (node.replace(params=params, round_num=node.round_num + 1),
          {'server_update_norm': update_norm})


def dpsgd(apply_fn: ApplyFn,
          local_sgd: local_sgd_lib.LocalSGD) -> Algorithm:
  """D-PSGD (Lian et al. 2017), with K local steps per round.

  Node i sends its model x_i, keeps `y_K - x_i` from K local SGD steps
  started at x_i, and moves to `x_i <- sum_j W_ij x_j + (y_K - x_i)`. With
  one local step that is D-PSGD's `sum_j W_ij x_j - eta g_i(x_i)`.

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the nodes' SGD.

  Returns:
    The node's algorithm.

  Examples:
    >>> algorithm = dpsgd(model.apply, LocalSGD(0.1))
  """
  grad_fn = losses.loss_and_grad(apply_fn)

  def local_step(local, batch, rng):
    del rng
    loss, grads = grad_fn(local.params, batch)
    params = local_sgd.step(local.params, grads, local.learning_rate)
    return local.replace(params=params), {'loss': loss}

  def client_final(node, client_state, local, info):
    del client_state, info
    delta = local_sgd_lib.model_delta(node, local)
    return ClientOutput(message=GossipMessage(sent=node.params, kept=delta),
                        weight=jnp.float32(1.0), client_state=(),
                        metrics={'delta_norm': optax.tree.norm(delta)})

  def server_update(node, message, cohort):
    del cohort
    return _moved(node, optax.tree.add(message.sent, message.kept))

  return Algorithm(
      server_init=lambda params, rng: node_init(params),
      client_state_init=lambda params: (),
      client_init=lambda node, client_state, rng: local_sgd_lib.start(
          node, local_sgd),
      local_step=local_step,
      client_final=client_final,
      server_update=server_update,
      server_params=lambda node: node.params)


@flax.struct.dataclass
class MomentumLocalState:
  """A node's local SGD state with its previous iterate.

  Attributes:
    sgd: the local model y^k, the round's start x_i and learning rate.
    previous: y^{k-1} (y^0 at the first step); `()` without momentum.
  """

  sgd: local_sgd_lib.LocalState
  previous: PyTree


def _local_then_gossip(grad_fn: sharpness.GradFn,
                       local_sgd: local_sgd_lib.LocalSGD,
                       momentum: float) -> Algorithm:
  """K heavy-ball SGD steps on `grad_fn` from x_i, then x_i <- W y^K."""
  uses_momentum = is_traced(momentum) or momentum != 0

  def client_init(node, client_state, rng):
    del client_state, rng
    sgd = local_sgd_lib.start(node, local_sgd)
    return MomentumLocalState(
        sgd=sgd, previous=sgd.params if uses_momentum else ())

  def local_step(local, batch, rng):
    del rng
    y = local.sgd.params
    loss, grads = grad_fn(y, batch)
    params = local_sgd.step(y, grads, local.sgd.learning_rate)
    if uses_momentum:
      # y^{k+1} = y^k - eta g + theta (y^k - y^{k-1}).
      params = optax.tree.add_scale(
          params, momentum, optax.tree.sub(y, local.previous))
      previous = y
    else:
      previous = ()
    return (MomentumLocalState(sgd=local.sgd.replace(params=params),
                               previous=previous), {'loss': loss})

  def client_final(node, client_state, local, info):
    del client_state, info
    delta = local_sgd_lib.model_delta(node, local.sgd)
    return ClientOutput(
        message=GossipMessage(sent=local.sgd.params, kept=()),
        weight=jnp.float32(1.0), client_state=(),
        metrics={'delta_norm': optax.tree.norm(delta)})

  def server_update(node, message, cohort):
    del cohort
    return _moved(node, message.sent)

  return Algorithm(
      server_init=lambda params, rng: node_init(params),
      client_state_init=lambda params: (),
      client_init=client_init,
      local_step=local_step,
      client_final=client_final,
      server_update=server_update,
      server_params=lambda node: node.params)


def dfedavg(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD, *,
            momentum: float = 0.0) -> Algorithm:
  """DFedAvg, or DFedAvgM with `momentum` > 0 (Sun, Li & Wang 2022).

  Node i runs K local heavy-ball SGD steps from y^0 = y^{-1} = x_i (the
  momentum buffer restarts every round), sends y^K, keeps nothing, and
  moves to `x_i <- sum_j W_ij y_j^K`.

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the nodes' SGD (eta, its decay, weight decay, clipping).
    momentum: heavy-ball coefficient theta, in [0, 1); 0 is DFedAvg.

  Returns:
    The node's algorithm.

  Examples:
    >>> algorithm = dfedavg(model.apply, LocalSGD(0.1), momentum=0.9)
  """
  if not is_traced(momentum) and not 0 <= momentum < 1:
    raise ValueError(f'DFedAvg needs momentum in [0, 1), got {momentum}.')
  return _local_then_gossip(losses.loss_and_grad(apply_fn), local_sgd,
                            momentum)


def dfedavgm(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD, *,
             momentum: float = 0.9) -> Algorithm:
  """DFedAvgM (Sun, Li & Wang 2022): `dfedavg` with local heavy-ball
  momentum on by default.

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the nodes' SGD.
    momentum: heavy-ball coefficient theta, in (0, 1).

  Returns:
    The node's algorithm.

  Examples:
    >>> algorithm = dfedavgm(model.apply, LocalSGD(0.1), momentum=0.9)
  """
  if not is_traced(momentum) and not 0 < momentum < 1:
    raise ValueError(f'DFedAvgM needs momentum in (0, 1), got {momentum}.')
  return dfedavg(apply_fn, local_sgd, momentum=momentum)


def dfedsam(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD, *,
            rho: float = 0.05) -> Algorithm:
  """DFedSAM and DFedSAM-MGS (Shi et al. 2023).

  DFedAvg (no momentum) whose local steps descend the SAM gradient
  `g_i(y + rho g_i(y) / ||g_i(y)||)`. DFedSAM-MGS is this algorithm run
  with Q > 1 gossip steps per round (an engine setting, not this factory's).

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the nodes' SGD.
    rho: radius of the SAM ascent step, >= 0 (0 is DFedAvg).

  Returns:
    The node's algorithm.

  Examples:
    >>> algorithm = dfedsam(model.apply, LocalSGD(0.1), rho=0.05)
  """
  if not is_traced(rho) and not rho >= 0:
    raise ValueError(f'DFedSAM needs rho >= 0, got {rho}.')
  return _local_then_gossip(
      sharpness.sam(losses.loss_and_grad(apply_fn), rho), local_sgd, 0.0)
