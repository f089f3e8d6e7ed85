"""FedLoRA and FFA-LoRA: federated fine-tuning of LoRA adapters.

Both fine-tune a frozen base model through LoRA adapters (Hu et al. 2022;
`fedjax_core.toolkit.lora`): only the adapters are trained, sent, aggregated and
checkpointed; the base is `Frozen` server state, broadcast once and never
copied per client.

FedLoRA, the common baseline (e.g. FedIT, Zhang et al. 2024, "Towards
Building the Federated GPT: Federated Instruction Tuning"): clients train
both factors A and B from the broadcast adapters and the server averages A
and B separately. The clients' models average to `W + s mean(B_i A_i)`, the
server's to `W + s mean(B_i) mean(A_i)`; the metric
`lora_aggregation_error` is the Frobenius norm of the difference (summed in
quadrature over the targets, in weight units, s = alpha / r) and
`lora_aggregation_error_rel` that over the norm of the clients' mean change
`s (mean(B_i A_i) - B A)`.

FFA-LoRA: Sun et al. 2024, "Improving LoRA in Privacy-preserving Federated
Learning" (ICLR). A stays at its random initialization, drawn from a seed
all parties share (here: broadcast once with the base), and only B is
trained, sent and averaged. Then `mean(B_i) A = mean(B_i A)`: aggregation is
exact, and messages are about half as large.

The server applies the negated mean delta of the trained factors to any
optax optimizer (FedOpt, Reddi et al. 2021); with `dp_sgd` every local step
is DP-SGD (Abadi et al. 2016), FFA-LoRA's setting.
"""

from typing import Any, Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from fedjax_core.toolkit import dp_sgd as dp_sgd_lib
from fedjax_core.toolkit import lora
from fedjax_core.toolkit import losses
from fedjax_core.toolkit import server_model
from fedjax_core.algorithm import (Algorithm, Batch, ClientInfo, ClientOutput,
                                   Frozen)

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


@flax.struct.dataclass
class LoRAServerState:
  """The frozen base (with FFA-LoRA's A) and the trained factors' server
  model (`model.params` = `{'a': ..., 'b': ...}` or `{'b': ...}`)."""

  frozen: Frozen
  model: server_model.ServerModel


@flax.struct.dataclass
class LocalState:
  """A client's trained factors, optimizer state and learning-rate scale,
  and the frozen part it reads."""

  frozen: Frozen
  trainable: PyTree
  opt_state: optax.OptState
  lr_scale: jax.Array


def fedlora(apply_fn: ApplyFn, client_optimizer: optax.GradientTransformation,
            server_optimizer: optax.GradientTransformation,
            config: lora.LoRAConfig, *, weighted: bool = True,
            client_lr_decay: float = 1.0,
            dp_sgd: dp_sgd_lib.DPSGDConfig | None = None) -> Algorithm:
  """FedLoRA: trains and averages both LoRA factors.

  Args:
    apply_fn: `(params, x) -> logits` of the base model.
    client_optimizer: local optax transform of the factors (restarted each
      round).
    server_optimizer: optax transform of the pseudo-gradient `-mean delta`.
    config: the adapted kernels, rank and alpha.
    weighted: weight clients by example count, or equally.
    client_lr_decay: the clients' updates are scaled by this to the power
      of the round.
    dp_sgd: run every local step as DP-SGD; None takes plain gradients.

  Returns:
    The algorithm; `server_init` takes the base params.

  Examples:
    >>> algorithm = fedlora(model.apply, optax.sgd(0.1), optax.sgd(1.0),
    ...                     lora.LoRAConfig(rank=4))
  """
  return _lora_algorithm(apply_fn, client_optimizer, server_optimizer,
                         config, train_a=True, weighted=weighted,
                         client_lr_decay=client_lr_decay, dp_sgd=dp_sgd)


def ffa_lora(apply_fn: ApplyFn,
             client_optimizer: optax.GradientTransformation,
             server_optimizer: optax.GradientTransformation,
             config: lora.LoRAConfig, *, weighted: bool = True,
             client_lr_decay: float = 1.0,
             dp_sgd: dp_sgd_lib.DPSGDConfig | None = None) -> Algorithm:
  """FFA-LoRA: A frozen at its shared random initialization, only B trained
  and averaged. Arguments as `fedlora`'s."""
  return _lora_algorithm(apply_fn, client_optimizer, server_optimizer,
                         config, train_a=False, weighted=weighted,
                         client_lr_decay=client_lr_decay, dp_sgd=dp_sgd)


def _lora_algorithm(apply_fn, client_optimizer, server_optimizer, config, *,
                    train_a, weighted, client_lr_decay, dp_sgd):
  trained = ('a', 'b') if train_a else ('b',)

  def server_init(params, rng):
    adapters = lora.init(rng, params, config)
    frozen = {'base': params,
              **{k: v for k, v in adapters.items() if k not in trained}}
    return LoRAServerState(
        frozen=Frozen(frozen),
        model=server_model.init(server_optimizer,
                                {k: adapters[k] for k in trained}))

  def merged(frozen, trainable):
    fixed = {k: v for k, v in frozen.value.items() if k != 'base'}
    return lora.merge(frozen.value['base'], {**fixed, **trainable}, config)

  def client_init(server_state, client_state, rng):
    del client_state, rng
    trainable = server_state.model.params
    lr_scale = jnp.float32(client_lr_decay)**server_state.model.round_num
    return LocalState(frozen=server_state.frozen, trainable=trainable,
                      opt_state=client_optimizer.init(trainable),
                      lr_scale=lr_scale)

  def local_step(local, batch: Batch, rng):
    adapted = lambda trainable, x: apply_fn(merged(local.frozen, trainable),
                                            x)
    if dp_sgd is None:
      loss, grads = losses.loss_and_grad(adapted)(local.trainable, batch)
    else:
      loss, grads = dp_sgd_lib.private_loss_and_grad(adapted, dp_sgd)(
          local.trainable, batch, rng)
    updates, opt_state = client_optimizer.update(grads, local.opt_state,
                                                 local.trainable)
    trainable = optax.apply_updates(
        local.trainable, optax.tree.scale(local.lr_scale, updates))
    return local.replace(trainable=trainable, opt_state=opt_state), {
        'loss': loss}

  def client_final(server_state, client_state, local, info: ClientInfo):
    del client_state
    delta = jax.tree.map(jnp.subtract, local.trainable,
                         server_state.model.params)
    weight = info.num_examples if weighted else jnp.float32(1.0)
    return ClientOutput(message=delta, weight=weight, client_state=(),
                        metrics={'delta_norm': optax.tree.norm(delta)})

  def server_update(server_state, mean_delta, cohort):
    del cohort
    chex.assert_trees_all_equal_shapes(mean_delta, server_state.model.params)
    model, update_norm = server_model.apply_delta(
        server_optimizer, server_state.model, mean_delta)
    return server_state.replace(model=model), {
        'server_update_norm': update_norm,
        'trainable_params': jnp.float32(
            optax.tree.size(server_state.model.params)),
        'frozen_params': jnp.float32(
            optax.tree.size(server_state.frozen.value))}

  def aggregation_error(server_state, deltas, weights):
    return lora_aggregation_error(server_state.model.params, deltas, weights,
                                  config.scale)

  return Algorithm(
      server_init=server_init,
      client_state_init=lambda params: (),
      client_init=client_init,
      local_step=local_step,
      client_final=client_final,
      server_update=server_update,
      server_params=lambda server_state: server_state.model.params,
      full_params=lambda server_state: merged(server_state.frozen,
                                              server_state.model.params),
      cohort_metrics=aggregation_error if train_a else None)


def lora_aggregation_error(factors: PyTree, deltas: PyTree,
                           weights: jax.Array,
                           scale: float) -> dict[str, jax.Array]:
  """How far averaging A and B separately is from averaging the clients'
  adapted kernels.

  Args:
    factors: the broadcast `{'a': ..., 'b': ...}` the clients started from.
    deltas: the clients' changes of them, stacked `[cohort, ...]`.
    weights: `[cohort]` aggregation weights (0 for absent clients).
    scale: alpha / r.

  Returns:
    `lora_aggregation_error`: `s |mean(B_i) mean(A_i) - mean(B_i A_i)|_F`
    over all targets; `lora_aggregation_error_rel`: that over
    `s |mean(B_i A_i) - B A|_F` (0 when the clients did not move).
  """
  w = weights / jnp.maximum(jnp.sum(weights), 1e-30)
  mean = lambda stacked: jnp.tensordot(w, stacked, axes=1)
  error_sq = change_sq = 0.0
  flat_a = jax.tree.leaves(factors['a'])
  flat_b = jax.tree.leaves(factors['b'])
  for a, b, da, db in zip(flat_a, flat_b, jax.tree.leaves(deltas['a']),
                          jax.tree.leaves(deltas['b'])):
    client_a, client_b = a + da, b + db
    mean_of_products = jnp.einsum('c,cor,cri->oi', w, client_b, client_a)
    error = mean(client_b) @ mean(client_a) - mean_of_products
    error_sq += jnp.sum(error**2)
    change_sq += jnp.sum((mean_of_products - b @ a)**2)
  error, change = jnp.sqrt(error_sq), jnp.sqrt(change_sq)
  return {'lora_aggregation_error': scale * error,
          'lora_aggregation_error_rel': jnp.where(
              change > 0, error / jnp.maximum(change, 1e-30), 0.0)}
