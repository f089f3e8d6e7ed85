"""Per-FedAvg: Fallah et al. 2020, "Personalized Federated Learning with
Theoretical Guarantees: A Model-Agnostic Meta-Learning Approach".

FedAvg on the MAML objective `F_i(w) = f_i(w - alpha grad f_i(w))`: each
client runs local SGD with step size beta (the local SGD's learning rate) on
a stochastic gradient of F_i, and the server averages the models. A client's
personal model is the global model after SGD steps of size alpha on its own
data. With three independent batches D, D', D'' one local step is

  FO: tmp = w - alpha grad f(w; D),  w <- w - beta grad f(tmp; D')
  HF: w <- w - beta (I - alpha H(w; D'')) grad f(tmp; D')

where HF estimates the Hessian-vector product `H(w; D'') u` by the paper's
finite difference `(grad f(w + delta u; D'') - grad f(w - delta u; D'')) /
(2 delta)`. The authors' code samples separate batches; here each local step
gets one batch of B rows from the engine, cut along the batch axis into 2
(FO) or 3 (HF) contiguous parts of B / 2 or B / 3 rows (sizes differing by
one where B is not a multiple). Padding rows stay masked, so a part without
a real example contributes a zero gradient. The step metric `loss` is
`f(w; D)`.
"""

from typing import Any, Callable

import jax
import numpy as np
import optax

from fedjax_core.algorithm import Algorithm, Batch
from fedjax_core.algorithm import is_traced
from fedjax_core.errors import SettingError
from fedjax_core.toolkit import drift
from fedjax_core.toolkit import fine_tuning
from fedjax_core.toolkit import local_sgd as local_sgd_lib
from fedjax_core.toolkit import losses

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
GradFn = Callable[[PyTree, Batch], tuple[jax.Array, PyTree]]


def per_fedavg_fo(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
                  server_optimizer: optax.GradientTransformation, *,
                  weighted: bool = True, alpha: float = 0.01,
                  finetune_steps: int = 1) -> Algorithm:
  """Per-FedAvg (FO): the first-order MAML gradient `grad f(tmp; D')`.

  Each local step splits its batch into halves D and D', takes the inner
  step `tmp = w - alpha grad f(w; D)` and moves `w` by local SGD (learning
  rate beta, with its clipping and weight decay) on `grad f(tmp; D')`.
  Clients send `y_K - x`, weighted by their example count (or 1 if not
  `weighted`); the server applies `server_optimizer` to the negated mean.
  Clients keep no state. Every client's personal model, trained or not, is
  x after one plain SGD step of size alpha on each of `finetune_steps`
  batches of its training split.

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the clients' SGD; its learning rate is the outer step beta.
    server_optimizer: applied to the pseudo-gradient `-mean delta`.
    weighted: weight clients by example count (FedAvg) or equally.
    alpha: inner (and fine-tuning) step size, > 0.
    finetune_steps: fine-tuning batches at evaluation, >= 0 (0 evaluates
      the global model).

  Returns:
    The algorithm, with its `personalization`.

  Examples:
    >>> algorithm = per_fedavg_fo(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                           alpha=0.01, finetune_steps=1)
  """
  _check_positive('alpha', alpha)
  grad_fn = losses.loss_and_grad(apply_fn)

  def meta_grad(params, batch):
    d, d_prime = _split(batch, 2)
    return _inner_step(grad_fn, params, d, d_prime, alpha)

  return _per_fedavg(apply_fn, meta_grad, local_sgd, server_optimizer,
                     weighted, alpha, finetune_steps)


def per_fedavg_hf(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
                  server_optimizer: optax.GradientTransformation, *,
                  weighted: bool = True, alpha: float = 0.01,
                  finetune_steps: int = 1,
                  delta: float = 0.001) -> Algorithm:
  """Per-FedAvg (HF): the MAML gradient with a finite-difference Hessian.

  As `per_fedavg_fo`, with each batch split into thirds D, D', D'' and
  the step's direction `u - alpha d`, `u = grad f(tmp; D')` and
  `d = (grad f(w + delta u; D'') - grad f(w - delta u; D'')) / (2 delta)`,
  the paper's estimate of `H(w; D'') u`. Arguments and result as
  `per_fedavg_fo`'s, and:

  Args:
    delta: the finite difference's step, > 0.

  Examples:
    >>> algorithm = per_fedavg_hf(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                           alpha=0.01, delta=0.001)
  """
  _check_positive('alpha', alpha)
  _check_positive('delta', delta)
  grad_fn = losses.loss_and_grad(apply_fn)

  def meta_grad(params, batch):
    d, d_prime, d_second = _split(batch, 3)
    loss, u = _inner_step(grad_fn, params, d, d_prime, alpha)
    plus = grad_fn(optax.tree.add_scale(params, delta, u), d_second)[1]
    minus = grad_fn(optax.tree.add_scale(params, -delta, u), d_second)[1]
    return loss, jax.tree.map(
        lambda u, p, m: u - alpha * (p - m) / (2 * delta), u, plus, minus)

  return _per_fedavg(apply_fn, meta_grad, local_sgd, server_optimizer,
                     weighted, alpha, finetune_steps)


def _per_fedavg(apply_fn, meta_grad, local_sgd, server_optimizer, weighted,
                alpha, finetune_steps):
  """FedAvg with local SGD on `meta_grad`, personalized by fine-tuning."""
  fedavg = local_sgd_lib.stateless_algorithm(
      meta_grad, drift.uncorrected, local_sgd, server_optimizer,
      weighted=weighted)
  return fine_tuning.global_model_fine_tuned(
      fedavg, apply_fn, lambda server_state: alpha, finetune_steps)


def _inner_step(grad_fn: GradFn, params: PyTree, d: Batch, d_prime: Batch,
                alpha: float) -> tuple[jax.Array, PyTree]:
  """`(f(w; D), grad f(tmp; D'))` with `tmp = w - alpha grad f(w; D)`."""
  loss, grads = grad_fn(params, d)
  _, outer = grad_fn(optax.tree.add_scale(params, -alpha, grads), d_prime)
  return loss, outer


def _split(batch: Batch, parts: int) -> list[Batch]:
  """`batch` cut along its batch axis into `parts` contiguous parts as equal
  as can be, each padded with masked rows to ceil(B / parts) rows."""
  size = batch.mask.shape[0]
  width = -(-size // parts)
  split = []
  for i in range(parts):
    start, stop = i * size // parts, (i + 1) * size // parts
    positions = np.arange(start, start + width)
    part = jax.tree.map(lambda v: v[np.minimum(positions, size - 1)], batch)
    split.append(part._replace(mask=part.mask * (positions < stop)))
  return split


def _check_positive(name: str, value: float) -> None:
  if not is_traced(value) and not value > 0:
    raise SettingError(name, f'Per-FedAvg needs {name} > 0, got {value!r}.')
