"""Client-drift corrections as pure functions of gradient pytrees.

Each maps the client's gradient g at its model y to the direction its local
step follows; x is the global model the client started from.

- `uncorrected`: g itself, FedAvg's local SGD.
- `prox`: FedProx (Li et al. 2020), g + mu (y - x); with a linear term it is
  also the dynamic regularizer of FedDyn (Acar et al. 2021) and FedSpeed.
- `correct`: SCAFFOLD's control variates (Karimireddy et al. 2020),
  g + (c - c_i); FedDyn's and FedSpeed's linear terms, g - h_i.
- `momentum_mix`: FedCM (Xu et al. 2021) and FedAvg-M / SCAFFOLD-M (Cheng et
  al. 2023), beta g + (1 - beta) Delta with the server's last direction.
"""

from typing import Any

import jax

PyTree = Any


def uncorrected(grads: PyTree, params: PyTree, anchor: PyTree) -> PyTree:
  """`g`: no correction."""
  del params, anchor
  return grads


def prox(grads: PyTree, params: PyTree, anchor: PyTree, mu: float) -> PyTree:
  """`g + mu (y - x)`: the gradient of `f(y) + mu/2 ||y - x||^2`."""
  return jax.tree.map(lambda g, y, x: g + mu * (y - x), grads, params, anchor)


def correct(grads: PyTree, correction: PyTree) -> PyTree:
  """`g + correction` (SCAFFOLD: `correction = c - c_i`)."""
  return jax.tree.map(lambda g, c: g + c, grads, correction)


def momentum_mix(grads: PyTree, momentum: PyTree, beta: float) -> PyTree:
  """`beta g + (1 - beta) momentum`."""
  return jax.tree.map(lambda g, m: beta * g + (1 - beta) * m, grads,
                      momentum)
