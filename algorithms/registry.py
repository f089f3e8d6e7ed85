"""Algorithm names -> builders, as the command line selects them."""

from typing import Any, Callable, NamedTuple

import optax

from algorithms.fedavg import fedavg
from fedjax_core import optimizers
from fedjax_core.algorithm import Algorithm

PyTree = Any


class _FedOptVariant(NamedTuple):
  server_optimizer: str
  server_lr: float


# Server optimizer and learning rate each FedAvg-family name stands for.
_FEDAVG_FAMILY = {
    'fedavg': _FedOptVariant('sgd', 1.0),
    'fedavgm': _FedOptVariant('momentum', 1.0),
    'fedadagrad': _FedOptVariant('adagrad', 0.1),
    'fedadam': _FedOptVariant('adam', 0.01),
    'fedyogi': _FedOptVariant('yogi', 0.01),
}
ALGORITHM_NAMES = tuple(sorted(_FEDAVG_FAMILY))


def default_server_lr(name: str) -> float:
  """The server learning rate `name` uses unless one is given."""
  return _variant(name).server_lr


def _variant(name: str) -> _FedOptVariant:
  if name not in _FEDAVG_FAMILY:
    raise ValueError(f'Unknown algorithm {name!r}; valid algorithms: '
                     f'{", ".join(ALGORITHM_NAMES)}.')
  return _FEDAVG_FAMILY[name]


def build_algorithm(name: str, apply_fn: Callable[[PyTree, Any], Any], *,
                    client_optimizer: str = 'sgd', client_lr: float = 0.1,
                    server_optimizer: str | None = None,
                    server_lr: float | None = None,
                    server_momentum: float = 0.9, weighted: bool = True,
                    ) -> Algorithm:
  """Builds algorithm `name` for a model.

  Args:
    name: one of `ALGORITHM_NAMES`.
    apply_fn: `(params, x) -> logits`.
    client_optimizer: local optimizer name (see `fedjax_core.optimizers`).
    client_lr: local learning rate.
    server_optimizer: server optimizer name; None uses the one `name` stands
      for. Only 'fedavg' may be combined with another server optimizer.
    server_lr: server learning rate; None uses `name`'s default.
    server_momentum: momentum of the 'momentum' server optimizer.
    weighted: weight clients by their example counts.

  Returns:
    The algorithm.

  Examples:
    >>> algorithm = build_algorithm('fedadam', model.apply, client_lr=0.05)
  """
  variant = _variant(name)
  if server_optimizer is None:
    server_optimizer = variant.server_optimizer
  elif name != 'fedavg' and server_optimizer != variant.server_optimizer:
    raise ValueError(
        f'--algorithm={name} implies --server_optimizer='
        f'{variant.server_optimizer}, got {server_optimizer!r}; use '
        f'--algorithm=fedavg --server_optimizer={server_optimizer} instead.')
  server_tx: optax.GradientTransformation = optimizers.server_optimizer(
      server_optimizer, variant.server_lr if server_lr is None else server_lr,
      momentum=server_momentum)
  client_tx = optimizers.client_optimizer(client_optimizer, client_lr)
  return fedavg(apply_fn, client_tx, server_tx, weighted=weighted)
