"""FedSpeed: Sun et al., ICLR 2023, "FedSpeed: Larger Local Interval, Less
Communication Round, and Higher Generalization Accuracy".

Two published forms, chosen by `form`; clients are weighted uniformly in
both. x is the global model, y the client's, K its local steps, eta the
round's local learning rate, S the cohort and N the population.

- 'paper' (the paper's Algorithm 1). Client i keeps g_hat_i (zero at the
  start). Each local step merges the gradient with one from an unnormalized
  ascent step and applies the prox-correction, with prox_coef = 1/lambda:
    g1 = g(y),  g2 = g(y + rho g1),  g = (1 - alpha) g1 + alpha g2,
    y <- y - eta (g - g_hat_i + prox_coef (y - x));
  then g_hat_i <- g_hat_i - prox_coef (y_K - x), the client uploads
  y_K - lambda g_hat_i and the server averages the uploads over S.
- 'reference' (the authors' FL-Simulator code, client/fedspeed.py and
  server/FedSpeed.py). Client i keeps h_i, the running sum of its own deltas
  (zero at the start). The gradient is SAM's, at the normalized ascent point
  y + rho g / ||g||, without the alpha merge:
    y <- y - eta (g_sam(y) + prox_coef (y - x + h_i));
  then h_i <- h_i + (y_K - x) and the server sets x <- mean_S y_K + mean_N
  h_i, keeping mean_N h_i incrementally: it grows by (|S|/N) mean_S (y_K -
  x) each round.

The forms coincide in their dynamic regularizer (g_hat_i = -prox_coef h_i)
and differ in the gradient and in the server: the paper averages y_K + h_i
over the cohort only, the code adds the population's mean of h_i to the
cohort's mean model. The server's change of x goes through the server
optimizer; SGD with learning rate 1 is each form's rule exactly.

Differences from FL-Simulator that remain: its torch SGD takes weight decay
`wd + lamb` and the linear term `lamb (h_i - x)` separately, which is the
direction above plus `wd y` (`--weight_decay`), but it clips the gradient
before adding `lamb y` where `LocalSGD` clips the whole direction (the same
unless `--max_grad_norm` is hit); its SAM divides by ||g|| + 1e-7, ours by
||g|| + 1e-12.

Defaults: rho = 0.1 and prox_coef = 0.1 (FL-Simulator's `--rho` and
`--lamb`); alpha = 0.5 is ours (we did not find the paper's value). FL-
Simulator trains with lr 0.1, lr decay 0.998, weight decay 1e-3, gradients
clipped to norm 10 (`--client_lr --client_lr_decay --weight_decay
--max_grad_norm`), 5 local epochs of batch 25.
"""

from typing import Any, Callable

import flax.struct
import jax.numpy as jnp
import optax

from fedjax_core.toolkit import drift
from fedjax_core.toolkit import local_sgd as local_sgd_lib
from fedjax_core.toolkit import losses
from fedjax_core.toolkit import server_model
from fedjax_core.toolkit import sharpness
from fedjax_core.algorithm import Algorithm, ClientOutput, is_traced

PyTree = Any
ApplyFn = Callable[[PyTree, Any], Any]

FORMS = ('paper', 'reference')
DEFAULT_ALPHA = 0.5


@flax.struct.dataclass
class ServerState:
  """The global model x and, in form 'reference', mean_N h_i (else None)."""

  model: server_model.ServerModel
  h_mean: PyTree | None


@flax.struct.dataclass
class PaperClientState:
  """Form 'paper': client i's prox-correction g_hat_i."""

  g_hat: PyTree


@flax.struct.dataclass
class ReferenceClientState:
  """Form 'reference': h_i, the sum of client i's deltas y_K - x so far."""

  h: PyTree


@flax.struct.dataclass
class LocalState:
  """Local training state: y, x and eta, with the constant linear term of
  the direction (`-g_hat_i`, or `prox_coef h_i`)."""

  sgd: local_sgd_lib.LocalState
  correction: PyTree


def fedspeed(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
             server_optimizer: optax.GradientTransformation, *,
             num_clients: int, form: str = 'paper', rho: float = 0.1,
             prox_coef: float = 0.1, alpha: float = DEFAULT_ALPHA
             ) -> Algorithm:
  """FedSpeed in the paper's form or in its authors' code's.

  Args:
    apply_fn: `(params, x) -> logits`.
    local_sgd: the clients' SGD.
    server_optimizer: applied to the pseudo-gradient `-(x_new - x)`; SGD
      with learning rate 1 is the published server.
    num_clients: the population size N (form 'reference' averages h_i over
      it; form 'paper' does not use it).
    form: 'paper' (Algorithm 1) or 'reference' (FL-Simulator).
    rho: the ascent step's radius, >= 0.
    prox_coef: the prox term's coefficient 1/lambda, > 0.
    alpha: form 'paper' only: the weight of the perturbed gradient, in
      [0, 1].

  Returns:
    The algorithm.

  Examples:
    >>> algorithm = fedspeed(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                      num_clients=100, form='reference')
  """
  if form not in FORMS:
    raise ValueError(f'FedSpeed form must be one of {FORMS}, got {form!r}.')
  server_model.check_population('FedSpeed', num_clients)
  if not is_traced(rho) and not rho >= 0:
    raise ValueError(f'FedSpeed needs rho >= 0, got {rho}.')
  if not is_traced(prox_coef) and not prox_coef > 0:
    raise ValueError(f'FedSpeed needs prox_coef > 0, got {prox_coef}.')
  if not is_traced(alpha) and not 0 <= alpha <= 1:
    raise ValueError(f'FedSpeed needs 0 <= alpha <= 1, got {alpha}.')
  if (form == 'reference' and not is_traced(alpha)
      and alpha != DEFAULT_ALPHA):
    raise ValueError(f"FedSpeed's alpha applies only to form='paper'; got "
                     f"alpha={alpha} with form='reference'.")
  paper = form == 'paper'
  grad_fn = losses.loss_and_grad(apply_fn)
  if paper:
    grad_fn = sharpness.fedspeed_merge(grad_fn, rho, alpha)
  else:
    grad_fn = sharpness.sam(grad_fn, rho)

  def server_init(params, rng):
    del rng
    return ServerState(
        model=server_model.init(server_optimizer, params),
        h_mean=None if paper else optax.tree.zeros_like(params))

  def client_state_init(params):
    zeros = optax.tree.zeros_like(params)
    return PaperClientState(g_hat=zeros) if paper else ReferenceClientState(
        h=zeros)

  def client_init(server_state, client_state, rng):
    del rng
    if paper:
      correction = optax.tree.scale(-1.0, client_state.g_hat)
    else:
      correction = optax.tree.scale(prox_coef, client_state.h)
    return LocalState(sgd=local_sgd_lib.start(server_state.model, local_sgd),
                      correction=correction)

  def local_step(local, batch, rng):
    del rng
    sgd = local.sgd
    loss, grads = grad_fn(sgd.params, batch)
    direction = drift.prox(drift.correct(grads, local.correction),
                           sgd.params, sgd.anchor, prox_coef)
    params = local_sgd.step(sgd.params, direction, sgd.learning_rate)
    return local.replace(sgd=sgd.replace(params=params)), {'loss': loss}

  def client_final(server_state, client_state, local, info):
    del info
    delta = local_sgd_lib.model_delta(server_state.model, local.sgd)
    if paper:
      g_hat = optax.tree.add_scale(client_state.g_hat, -prox_coef, delta)
      new_state = PaperClientState(g_hat=g_hat)
      # The upload y_K - lambda g_hat_i, relative to x.
      message = optax.tree.add_scale(delta, -1.0 / prox_coef, g_hat)
    else:
      new_state = ReferenceClientState(h=optax.tree.add(client_state.h,
                                                        delta))
      message = delta  # Also h_i's change.
    return ClientOutput(message=message, weight=jnp.float32(1.0),
                        client_state=new_state,
                        metrics={'delta_norm': optax.tree.norm(delta)})

  def server_update(server_state, mean_message, cohort):
    if paper:
      h_mean, change = None, mean_message
    else:
      h_mean = optax.tree.add_scale(server_state.h_mean,
                                    cohort.num_clients / num_clients,
                                    mean_message)
      change = optax.tree.add(mean_message, h_mean)
    model, update_norm = server_model.apply_delta(
        server_optimizer, server_state.model, change)
    metrics = {'server_update_norm': update_norm}
    if not paper:
      metrics['h_mean_norm'] = optax.tree.norm(h_mean)
    return ServerState(model=model, h_mean=h_mean), metrics

  return Algorithm(
      server_init=server_init,
      client_state_init=client_state_init,
      client_init=client_init,
      local_step=local_step,
      client_final=client_final,
      server_update=server_update,
      server_params=lambda server_state: server_state.model.params)
