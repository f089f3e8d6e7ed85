"""FedSAM and FedASAM: FedAvg whose clients descend a sharpness-aware gradient.

FedSAM: Qu et al. 2022, "Generalized Federated Learning via Sharpness Aware
Minimization" (ICML), and Caldarola et al. 2022, "Improving Generalization in
Federated Learning by Seeking Flat Minima" (ECCV). Client i runs local SGD on
the SAM gradient of Foret et al. 2021,

  g = grad f_i(y)
  eps = rho g / (||g|| + 1e-12)
  y <- y - eta grad f_i(y + eps),

and the server averages the cohort's models uniformly, `x <- x + eta_g
mean_S (y_K - x)` (eta_g = 1 is the papers' server).

FedASAM (Caldarola et al. 2022) uses the adaptive ascent step of ASAM (Kwon
et al. 2021, "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
Learning of Deep Neural Networks"): with T_y = |y| + eta_a elementwise,

  eps = rho T_y^2 g / ||T_y g||.

Defaults: FedSAM rho = 0.1; FedASAM rho = 0.5 and eta_a = 0.01, Kwon et
al.'s CIFAR-10 setting (their eta_a is 0.01 throughout; rho grows to 1.0 on
CIFAR-100). The federated papers tune rho per dataset. FL-Simulator trains
with lr 0.1, lr decay 0.998, weight decay 1e-3 and gradients clipped to norm
10 (`--client_lr --client_lr_decay --weight_decay --max_grad_norm`).
"""

from typing import Any, Callable

import optax

from fedjax_core.toolkit import drift
from fedjax_core.toolkit import local_sgd as local_sgd_lib
from fedjax_core.toolkit import losses
from fedjax_core.toolkit import sharpness
from fedjax_core.algorithm import Algorithm, is_traced

PyTree = Any
ApplyFn = Callable[[PyTree, Any], Any]


def _sharpness_aware_fedavg(apply_fn: ApplyFn,
                            local_sgd: local_sgd_lib.LocalSGD,
                            server_optimizer: optax.GradientTransformation,
                            grad_transform: Callable[[sharpness.GradFn],
                                                     sharpness.GradFn]
                            ) -> Algorithm:
  """Stateless local SGD on `grad_transform(loss_and_grad)`, uncorrected."""
  return local_sgd_lib.stateless_algorithm(
      grad_transform(losses.loss_and_grad(apply_fn)), drift.uncorrected,
      local_sgd, server_optimizer)


def fedsam(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
           server_optimizer: optax.GradientTransformation, *,
           rho: float = 0.1) -> Algorithm:
  """FedSAM with SAM radius `rho`.

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the clients' SGD.
    server_optimizer: applied to the pseudo-gradient `-mean_S (y_K - x)`.
    rho: radius of the SAM ascent step, > 0.

  Returns:
    The algorithm.

  Examples:
    >>> algorithm = fedsam(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                    rho=0.1)
  """
  if not is_traced(rho) and not rho > 0:
    raise ValueError(f'FedSAM needs rho > 0, got {rho}.')
  return _sharpness_aware_fedavg(
      apply_fn, local_sgd, server_optimizer,
      lambda grad_fn: sharpness.sam(grad_fn, rho))


def fedasam(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
            server_optimizer: optax.GradientTransformation, *,
            rho: float = 0.5, eta: float = 0.01) -> Algorithm:
  """FedASAM: FedSAM with ASAM's adaptive ascent step.

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the clients' SGD.
    server_optimizer: applied to the pseudo-gradient `-mean_S (y_K - x)`.
    rho: radius of the ASAM ascent step, > 0.
    eta: ASAM's offset in `T_y = |y| + eta`, >= 0.

  Returns:
    The algorithm.

  Examples:
    >>> algorithm = fedasam(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                     rho=0.5, eta=0.01)
  """
  if not is_traced(rho) and not rho > 0:
    raise ValueError(f'FedASAM needs rho > 0, got {rho}.')
  if not is_traced(eta) and not eta >= 0:
    raise ValueError(f'FedASAM needs eta >= 0, got {eta}.')
  return _sharpness_aware_fedavg(
      apply_fn, local_sgd, server_optimizer,
      lambda grad_fn: sharpness.sam(grad_fn, rho, adaptive=True, eta=eta))
