"""FedProx: Li et al. 2020, "Federated Optimization in Heterogeneous Networks".

Client i approximately minimizes `f_i(y) + mu/2 ||y - x||^2` by local SGD,

  y <- y - eta (g(y) + mu (y - x)),

and the server averages the cohort's models, `x <- x + eta_g mean_S (y_K -
x)` (uniform weights, as FL-Simulator; eta_g = 1 is the paper's server).

Defaults: mu = 0.01 (the paper searches mu in {0.001, 0.01, 0.1, 1});
FL-Simulator trains with lr 0.1, lr decay 0.998, weight decay 1e-3 and
gradients clipped to norm 10 (`--client_lr --client_lr_decay --weight_decay
--max_grad_norm`).
"""

from typing import Any, Callable

import optax

from fedjax_core.toolkit import drift
from fedjax_core.toolkit import local_sgd as local_sgd_lib
from fedjax_core.toolkit import losses
from fedjax_core.algorithm import Algorithm, is_traced

PyTree = Any
ApplyFn = Callable[[PyTree, Any], Any]


def fedprox(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
            server_optimizer: optax.GradientTransformation, *,
            mu: float = 0.01) -> Algorithm:
  """FedProx with proximal coefficient `mu`.

  Examples:
    >>> algorithm = fedprox(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                     mu=0.01)
  """
  if not is_traced(mu) and not mu >= 0:
    raise ValueError(f'FedProx needs mu >= 0, got {mu}.')
  return local_sgd_lib.stateless_algorithm(
      losses.loss_and_grad(apply_fn),
      lambda grads, y, x: drift.prox(grads, y, x, mu), local_sgd,
      server_optimizer)
