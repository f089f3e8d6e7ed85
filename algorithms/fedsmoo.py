"""FedSMOO: Sun et al., ICML 2023, "Dynamic Regularized Sharpness Aware
Minimization in Federated Learning: Approaching Global Consistency and
Smooth Landscape".

The form of the authors' code (FL-Simulator: client/fedsmoo.py,
server/FedSMOO.py, optimizer/DRegSAM.py), clients weighted uniformly: the
dynamic regularizer of FedSpeed's code plus a SAM perturbation corrected
towards a global one. x is the global model, y the client's, S the cohort
and N the population. Client i keeps h_i (the sum of its own deltas) and
the dual mu_i; the server keeps s and mean_N h_i (all zero at the start).
Each local step:

  g1 = g(y),  g_tilde = g1 - mu_i - s,
  eps = rho g_tilde / (||g_tilde|| + 1e-12),  mu_i <- mu_i + eps - s,
  y <- y - eta (g(y + eps) + prox_coef (y - x + h_i));

after K steps h_i <- h_i + (y_K - x). The server, with m = mean_S mu_i of
the cohort's new duals,

  s <- rho m / (||m|| + 1e-12),
  x <- mean_S y_K + mean_N h_i,

keeping mean_N h_i incrementally (it grows by (|S|/N) mean_S (y_K - x)),
and moving x through the server optimizer (SGD with learning rate 1 is the
rule above). As the code says, this s simplifies the paper's global
perturbation by dropping its small s_hat_{i,K} term.

Differences from FL-Simulator that remain: its torch SGD takes weight decay
`wd + lamb` and the linear term `lamb (h_i - x)` separately, which is the
direction above plus `wd y` (`--weight_decay`), but it clips the gradient
before adding `lamb y` where `LocalSGD` clips the whole direction (the same
unless `--max_grad_norm` is hit); its norms add 1e-7, ours 1e-12.

Defaults: rho = 0.1 and prox_coef = 0.1 (FL-Simulator's `--rho` and
`--lamb`). FL-Simulator trains with lr 0.1, lr decay 0.998, weight decay
1e-3, gradients clipped to norm 10 (`--client_lr --client_lr_decay
--weight_decay --max_grad_norm`), 5 local epochs of batch 25.
"""

from typing import Any, Callable

import flax.struct
import jax
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


@flax.struct.dataclass
class ServerState:
  """The global model x, mean_N h_i and the global perturbation s."""

  model: server_model.ServerModel
  h_mean: PyTree
  s: PyTree


@flax.struct.dataclass
class ClientState:
  """Client i's sum of deltas h_i and its perturbation dual mu_i."""

  h: PyTree
  mu: PyTree


@flax.struct.dataclass
class LocalState:
  """Local training state: y, x and eta, with `prox_coef h_i`, the dual
  mu_i (updated every step) and the server's s."""

  sgd: local_sgd_lib.LocalState
  correction: PyTree
  mu: PyTree
  s: PyTree


def fedsmoo(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
            server_optimizer: optax.GradientTransformation, *,
            num_clients: int, rho: float = 0.1,
            prox_coef: float = 0.1) -> Algorithm:
  """FedSMOO, as its authors' code, for a population of `num_clients`.

  Args:
    apply_fn: `(params, x) -> logits`.
    local_sgd: the clients' SGD.
    server_optimizer: applied to the pseudo-gradient `-(x_new - x)`; SGD
      with learning rate 1 is the published server.
    num_clients: the population size N (not the cohort size).
    rho: the SAM radius of both the local and the global perturbation, >= 0.
    prox_coef: the dynamic regularizer's coefficient (the code's lamb), > 0.

  Returns:
    The algorithm.

  Examples:
    >>> algorithm = fedsmoo(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                     num_clients=100, rho=0.1, prox_coef=0.1)
  """
  server_model.check_population('FedSMOO', num_clients)
  if not is_traced(rho) and not rho >= 0:
    raise ValueError(f'FedSMOO needs rho >= 0, got {rho}.')
  if not is_traced(prox_coef) and not prox_coef > 0:
    raise ValueError(f'FedSMOO needs prox_coef > 0, got {prox_coef}.')
  grad_fn = losses.loss_and_grad(apply_fn)

  def server_init(params, rng):
    del rng
    zeros = optax.tree.zeros_like(params)
    return ServerState(model=server_model.init(server_optimizer, params),
                       h_mean=zeros, s=zeros)

  def client_state_init(params):
    zeros = optax.tree.zeros_like(params)
    return ClientState(h=zeros, mu=zeros)

  def client_init(server_state, client_state, rng):
    del rng
    return LocalState(sgd=local_sgd_lib.start(server_state.model, local_sgd),
                      correction=optax.tree.scale(prox_coef, client_state.h),
                      mu=client_state.mu, s=server_state.s)

  def local_step(local, batch, rng):
    del rng
    sgd = local.sgd
    loss, grads = grad_fn(sgd.params, batch)
    corrected = jax.tree.map(lambda g, m, s: g - m - s, grads, local.mu,
                             local.s)
    eps = sharpness.sam_perturbation(sgd.params, corrected, rho)
    mu = jax.tree.map(lambda m, e, s: m + e - s, local.mu, eps, local.s)
    _, perturbed = grad_fn(optax.tree.add(sgd.params, eps), batch)
    direction = drift.prox(drift.correct(perturbed, local.correction),
                           sgd.params, sgd.anchor, prox_coef)
    params = local_sgd.step(sgd.params, direction, sgd.learning_rate)
    return (local.replace(sgd=sgd.replace(params=params), mu=mu),
            {'loss': loss})

  def client_final(server_state, client_state, local, info):
    del info
    delta = local_sgd_lib.model_delta(server_state.model, local.sgd)
    new_state = ClientState(h=optax.tree.add(client_state.h, delta),
                            mu=local.mu)
    return ClientOutput(message={'delta': delta, 'mu': local.mu},
                        weight=jnp.float32(1.0), client_state=new_state,
                        metrics={'delta_norm': optax.tree.norm(delta)})

  def server_update(server_state, mean, cohort):
    # h_i grew by delta_i: mean_N h_i grows by (|S|/N) mean_S delta.
    h_mean = optax.tree.add_scale(server_state.h_mean,
                                  cohort.num_clients / num_clients,
                                  mean['delta'])
    s = sharpness.sam_perturbation(mean['mu'], mean['mu'], rho)
    model, update_norm = server_model.apply_delta(
        server_optimizer, server_state.model,
        optax.tree.add(mean['delta'], h_mean))
    return (ServerState(model=model, h_mean=h_mean, s=s),
            {'server_update_norm': update_norm,
             'h_mean_norm': optax.tree.norm(h_mean),
             's_norm': optax.tree.norm(s)})

  return Algorithm(
      server_init=server_init,
      client_state_init=client_state_init,
      client_init=client_init,
      local_step=local_step,
      client_final=client_final,
      server_update=server_update,
      server_params=lambda server_state: server_state.model.params)
