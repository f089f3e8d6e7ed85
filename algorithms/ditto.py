"""Ditto: Li et al. 2021, "Ditto: Fair and Robust Federated Learning
Through Personalization", Algorithm 1.

The global model w is FedAvg's (McMahan et al. 2017): each client of the
cohort runs local SGD from the round's global model w^t and sends its
model change. Each also keeps a personal model v_k, which it trains on the
same batches, one step per local step, towards its own data and the
round's global model,

  v_k <- v_k - eta (grad F_k(v_k) + lam (v_k - w^t)),

the gradient of `F_k(v) + lam/2 ||v - w^t||^2`; both steps go through the
clients' SGD (clipping and coupled weight decay alike). The personal model
never reaches the server, so w moves exactly as FedAvg's, whatever lam.
lam = 0 is purely local training of v; at lam = 1/eta, the largest value
that does not overshoot w^t, `v <- w^t - eta grad F_k(v)` keeps v one
gradient step from the round's global model, and lam -> infinity is FedAvg.

A client's personal model is v_k; a client that never trained gets the
global model. The authors' code (github.com/litian96/ditto) starts every
v_k at the initial model w^0; here v_k starts at the global model of the
client's first round, the model it was evaluated with until then.

Defaults: lam = 1 (the paper searches lam in {0.05, 0.1, 0.2, 0.5, 1, 2}).
"""

from typing import Any, Callable

import flax.struct
import jax
import optax

from fedjax_core.algorithm import Algorithm, Personalization, is_traced
from fedjax_core.errors import SettingError
from fedjax_core.toolkit import drift
from fedjax_core.toolkit import local_sgd as local_sgd_lib
from fedjax_core.toolkit import losses
from fedjax_core.toolkit import personal_state

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


@flax.struct.dataclass
class LocalState:
  """The local copy of the global model (with w^t and eta) and v_k."""

  sgd: local_sgd_lib.LocalState
  personal: PyTree


def ditto(apply_fn: ApplyFn, local_sgd: local_sgd_lib.LocalSGD,
          server_optimizer: optax.GradientTransformation, *,
          weighted: bool = True, lam: float = 1.0) -> Algorithm:
  """Ditto: FedAvg, and a personal model per client pulled towards it.

  Args:
    apply_fn: `(params, x) -> logits` of the model.
    local_sgd: the clients' SGD, for the global and the personal model.
    server_optimizer: applied to the pseudo-gradient `-mean delta`.
    weighted: weight clients by example count (FedAvg) or equally.
    lam: the personal model's pull towards the global model, in
      [0, 2 / learning_rate) (beyond, its steps diverge).

  Returns:
    The algorithm, with its `personalization`.

  Examples:
    >>> algorithm = ditto(model.apply, LocalSGD(0.1), optax.sgd(1.0),
    ...                   lam=1.0)
  """
  if not is_traced(lam):
    if not lam >= 0:
      raise SettingError('lam', f'Ditto needs lam >= 0, got {lam!r}.')
    if (not is_traced(local_sgd.learning_rate)
        and not lam * local_sgd.learning_rate < 2):
      raise SettingError(
          'lam', f'Ditto needs lam * client learning rate < 2 (at most 1 '
          f'to not overshoot the global model), got lam={lam!r} with '
          f'learning rate {local_sgd.learning_rate!r}; lower either.')
  grad_fn = losses.loss_and_grad(apply_fn)
  fedavg = local_sgd_lib.stateless_algorithm(
      grad_fn, drift.uncorrected, local_sgd, server_optimizer,
      weighted=weighted)

  def client_init(server_state, client_state, rng):
    return LocalState(
        sgd=fedavg.client_init(server_state, client_state, rng),
        personal=personal_state.personal_or_global(client_state,
                                                   server_state.params))

  def local_step(local, batch, rng):
    sgd, metrics = fedavg.local_step(local.sgd, batch, rng)
    personal_loss, personal_grads = grad_fn(local.personal, batch)
    personal = local_sgd.step(
        local.personal,
        drift.prox(personal_grads, local.personal, sgd.anchor, lam),
        sgd.learning_rate)
    return (LocalState(sgd=sgd, personal=personal),
            {**metrics, 'personal_loss': personal_loss})

  def client_final(server_state, client_state, local, info):
    output = fedavg.client_final(server_state, client_state, local.sgd, info)
    return output._replace(
        client_state=personal_state.trained(local.personal))

  def personal_params(server_state, client_state, train, rng):
    del train, rng
    return personal_state.personal_or_global(client_state,
                                             server_state.params)

  return fedavg._replace(
      client_state_init=personal_state.initial,
      client_init=client_init,
      local_step=local_step,
      client_final=client_final,
      personalization=Personalization(personal_params))
