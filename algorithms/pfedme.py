"""pFedMe: Dinh et al. 2020, "Personalized Federated Learning with Moreau
Envelopes", Algorithm 1.

Client i's personal model theta solves, approximately, the Moreau-envelope
problem `min_theta f_i(theta) + lam/2 ||theta - w||^2` around its local
copy w of the global model. Per local step, on one batch: K = inner_steps
gradient steps with learning rate personal_lr,

  theta <- theta - personal_lr (grad f_i(theta) + lam (theta - w)),

then w moves towards the approximate solution,

  w <- w - eta lam (w - theta).

As in the authors' code (github.com/CharlieDinh/pFedMe), theta starts each
round at the round's global model and each local step's inner steps start
from the previous step's theta. Both steps go through the clients' SGD
(clipping and coupled weight decay alike; eta decays per round,
personal_lr does not). The server moves the global model x by
`x <- (1 - beta) x + beta mean_S w_i`, i.e. by beta times the mean change,
through the server optimizer (SGD with learning rate 1 is the paper's
server; beta = 1 is plain averaging).

A client's personal model is its last theta, the personalized model the
paper evaluates (the authors' code keeps theta in a list aliasing the
model's parameters, which it then sets to w, so it evaluates w: their
issue #5); a client that never trained gets the global model.

Defaults: lam = 15, inner_steps (K) = 5 and beta = 1, as the authors' MNIST
runs (which take personal_lr = 0.1 and eta = 0.005); personal_lr = 0.01.
"""

from typing import Any, Callable

import flax.struct
import jax
import optax

from fedjax_core.algorithm import Algorithm, Personalization, is_traced
from fedjax_core.errors import SettingError, check_count
from fedjax_core.toolkit import drift
from fedjax_core.toolkit import local_sgd as local_sgd_lib
from fedjax_core.toolkit import losses
from fedjax_core.toolkit import personal_state

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


@flax.struct.dataclass
class LocalState:
  """The local copy w of the global model (with x and eta), and theta."""

  sgd: local_sgd_lib.LocalState
  personal: PyTree


def _check(lam, inner_steps, personal_lr, beta, learning_rate):
  """Raises SettingError for hyperparameters out of range (skipping the
  values traced along a run axis)."""
  check_count('inner_steps', inner_steps, 1)
  for name, value in (('lam', lam), ('personal_lr', personal_lr),
                      ('beta', beta)):
    if not is_traced(value) and not value > 0:
      raise SettingError(name, f'pFedMe needs {name} > 0, got {value!r}.')
  if is_traced(lam):
    return
  for name, value in (('personal_lr', personal_lr),
                      ('client learning rate', learning_rate)):
    if not is_traced(value) and not lam * value < 2:
      raise SettingError(
          'lam', f'pFedMe needs lam * {name} < 2 (beyond, its steps '
          f'diverge), got lam={lam!r} with {name} {value!r}; lower either.')


def pfedme(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
           server_optimizer: optax.GradientTransformation, *,
           weighted: bool = True, lam: float = 15.0, inner_steps: int = 5,
           personal_lr: float = 0.01, beta: float = 1.0) -> Algorithm:
  """pFedMe: personal models as Moreau-envelope proximal points.

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the clients' SGD (eta, for w; and theta's clipping and
      weight decay).
    server_optimizer: applied to the pseudo-gradient `-beta mean delta`.
    weighted: weight clients by example count (as the authors' code) or
      equally (as the paper).
    lam: the Moreau envelope's regularization, > 0, with lam times the
      learning rate and lam * personal_lr below 2.
    inner_steps: K, the inner steps on theta per local step, >= 1.
    personal_lr: the inner steps' learning rate, > 0.
    beta: the server's step along the mean client change, > 0.

  Returns:
    The algorithm, with its `personalization`.

  Examples:
    >>> algorithm = pfedme(model.apply, LocalSGD(0.005), optax.sgd(1.0),
    ...                    lam=15.0, inner_steps=5, personal_lr=0.01)
  """
  _check(lam, inner_steps, personal_lr, beta, local_sgd.learning_rate)
  grad_fn = losses.loss_and_grad(apply_fn)
  # FedAvg's messages and server (moved by beta), pFedMe's local step.
  base = local_sgd_lib.stateless_algorithm(
      grad_fn, drift.uncorrected, local_sgd, server_optimizer,
      weighted=weighted)

  def client_init(server_state, client_state, rng):
    del client_state, rng
    return LocalState(sgd=local_sgd_lib.start(server_state, local_sgd),
                      personal=server_state.params)

  def local_step(local, batch, rng):
    del rng
    sgd, theta = local.sgd, local.personal
    inner_losses = []  # The first is theta's loss as the step found it.
    for _ in range(inner_steps):  # Unrolled: K is small and static.
      loss, grads = grad_fn(theta, batch)
      inner_losses.append(loss)
      theta = local_sgd.step(theta, drift.prox(grads, theta, sgd.params, lam),
                             personal_lr)
    params = local_sgd.step(
        sgd.params, optax.tree.scale(lam, optax.tree.sub(sgd.params, theta)),
        sgd.learning_rate)
    return (LocalState(sgd=sgd.replace(params=params), personal=theta),
            {'loss': inner_losses[0]})

  def client_final(server_state, client_state, local, info):
    output = base.client_final(server_state, client_state, local.sgd, info)
    return output._replace(
        client_state=personal_state.trained(local.personal))

  def server_update(server_state, mean_delta, cohort):
    return base.server_update(server_state,
                              optax.tree.scale(beta, mean_delta), cohort)

  def personal_params(server_state, client_state, train, rng):
    del train, rng
    return personal_state.personal_or_global(client_state,
                                             server_state.params)

  return base._replace(
      client_state_init=personal_state.initial,
      client_init=client_init,
      local_step=local_step,
      client_final=client_final,
      server_update=server_update,
      personalization=Personalization(personal_params))
