"""FedAvg-FT: FedAvg, each client's model fine-tuned on its own data.

The fine-tuning baseline of personalized federated learning (Wang et al.
2019, "Federated Evaluation of On-device Personalization"; Yu et al. 2020,
"Salvaging Federated Learning by Local Adaptation"): training is FedAvg
(McMahan et al. 2017) with local SGD, and a client's personal model is the
global model after a few SGD steps on the client's own training split.
"""

from typing import Any, Callable

import jax
import optax

from fedjax_core.algorithm import Algorithm
from fedjax_core.toolkit import drift
from fedjax_core.toolkit import fine_tuning
from fedjax_core.toolkit import local_sgd as local_sgd_lib
from fedjax_core.toolkit import losses

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


def fedavg_ft(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
              server_optimizer: optax.GradientTransformation, *,
              weighted: bool = True, finetune_steps: int = 5) -> Algorithm:
  """FedAvg whose clients are evaluated with the fine-tuned global model.

  Training is FedAvg: each client runs local SGD from the global model x
  and sends `y_K - x`, weighted by its example count (or 1 if not
  `weighted`); the server applies `server_optimizer` to the negated mean.
  Clients keep no state. A client's personal model is x after one plain
  SGD step (no weight decay or clipping) on each of `finetune_steps`
  batches of its training split, at the current local learning rate; a
  client that never trained gets the same.

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the clients' SGD (training and fine-tuning learning rate).
    server_optimizer: applied to the pseudo-gradient `-mean delta`.
    weighted: weight clients by example count (FedAvg) or equally.
    finetune_steps: fine-tuning batches at evaluation, >= 0 (0 evaluates
      the global model).

  Returns:
    The algorithm, with its `personalization`.

  Examples:
    >>> algorithm = fedavg_ft(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                       finetune_steps=5)
  """
  fedavg = local_sgd_lib.stateless_algorithm(
      losses.loss_and_grad(apply_fn), drift.uncorrected, local_sgd,
      server_optimizer, weighted=weighted)
  return fine_tuning.global_model_fine_tuned(
      fedavg, apply_fn,
      lambda server_state: local_sgd.learning_rate_at(server_state.round_num),
      finetune_steps)
