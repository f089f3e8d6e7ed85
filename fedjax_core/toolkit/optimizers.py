"""Client and server optimizers as optax transforms, selected by name.

The server treats the negated mean client delta as a pseudo-gradient (FedOpt:
Reddi et al. 2021, "Adaptive Federated Optimization", Algorithm 2), so any
optax transform can serve as a server optimizer. FedAdam, FedYogi and
FedAdagrad follow that paper's Algorithm 2 exactly: no bias correction, tau
added outside the square root, and the second moment started at tau^2.
optax's `adam`, `yogi` and `adagrad` differ on each of those points, which
is why `scale_by_fedopt_adaptive` exists.
"""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_core.algorithm import is_traced
from fedjax_core.errors import SettingError

CLIENT_OPTIMIZERS = ('adam', 'momentum', 'sgd')
SERVER_OPTIMIZERS = ('adagrad', 'adam', 'momentum', 'sgd', 'yogi')


class FedOptAdaptiveState(NamedTuple):
  """First and second moments of the server pseudo-gradient."""

  m: optax.Params
  v: optax.Params


def scale_by_fedopt_adaptive(variant: str, b1: float = 0.9, b2: float = 0.99,
                             tau: float = 1e-3) -> optax.GradientTransformation:
  """Reddi et al.'s adaptive server direction `m / (sqrt(v) + tau)`.

  With pseudo-gradient g (the negated mean client delta):
    m <- b1 m + (1 - b1) g
    v <- v + g^2                                (adagrad)
    v <- v - (1 - b2) g^2 sign(v - g^2)         (yogi)
    v <- b2 v + (1 - b2) g^2                    (adam)
  starting from m = 0 and v = tau^2.

  Args:
    variant: 'adagrad', 'yogi' or 'adam'.
    b1: first-moment decay.
    b2: second-moment decay (unused by adagrad).
    tau: adaptivity constant.

  Returns:
    An optax transform; chain it with a learning-rate scale.

  Examples:
    >>> tx = optax.chain(scale_by_fedopt_adaptive('adam'),
    ...                  optax.scale_by_learning_rate(0.01))
  """
  second_moment = {
      'adagrad': lambda v, g2: v + g2,
      'yogi': lambda v, g2: v - (1 - b2) * g2 * jnp.sign(v - g2),
      'adam': lambda v, g2: b2 * v + (1 - b2) * g2,
  }
  if variant not in second_moment:
    raise ValueError(f'Unknown adaptive variant {variant!r}; valid: '
                     f'{", ".join(sorted(second_moment))}.')
  update_v = second_moment[variant]

  def init_fn(params):
    return FedOptAdaptiveState(
        m=jax.tree.map(jnp.zeros_like, params),
        v=jax.tree.map(lambda p: jnp.full_like(p, tau**2), params))

  def update_fn(updates, state, params=None):
    del params
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.m, updates)
    v = jax.tree.map(lambda v, g: update_v(v, g * g), state.v, updates)
    direction = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + tau), m, v)
    return direction, FedOptAdaptiveState(m=m, v=v)

  return optax.GradientTransformation(init_fn, update_fn)


def check_learning_rate(role: str, learning_rate: float) -> None:
  """Raises `SettingError` for `{role}_lr` unless `learning_rate` is a
  positive number (or traced along a run axis: `algorithm.is_traced`)."""
  if is_traced(learning_rate):
    return
  if not (isinstance(learning_rate, (int, float))
          and math.isfinite(learning_rate) and learning_rate > 0):
    raise SettingError(f'{role}_lr', f'The {role} learning rate {role}_lr '
                       f'must be a positive number, got {learning_rate!r}.')


def _unknown(role: str, name: str, valid: tuple[str, ...]) -> ValueError:
  return ValueError(f'Unknown {role} optimizer {name!r}; valid {role} '
                    f'optimizers: {", ".join(valid)}.')


def client_optimizer(name: str, learning_rate: float, momentum: float = 0.9,
                     *, weight_decay: float = 0.0,
                     max_grad_norm: float | None = None
                     ) -> optax.GradientTransformation:
  """The local optimizer of every client: 'sgd', 'momentum' or 'adam'.

  Gradients are clipped to `max_grad_norm` (if set), then `weight_decay * w`
  is added (coupled weight decay, as torch's SGD), then the optimizer runs:
  the order of `fedjax_core.toolkit.local_sgd`.

  Examples:
    >>> tx = client_optimizer('sgd', 0.1, weight_decay=1e-3)
  """
  check_learning_rate('client', learning_rate)
  if name == 'sgd':
    tx = optax.sgd(learning_rate)
  elif name == 'momentum':
    tx = optax.sgd(learning_rate, momentum=momentum)
  elif name == 'adam':
    tx = optax.adam(learning_rate)
  else:
    raise _unknown('client', name, CLIENT_OPTIMIZERS)
  prefix = []
  if max_grad_norm is not None:
    prefix.append(optax.clip_by_global_norm(max_grad_norm))
  if weight_decay:
    prefix.append(optax.add_decayed_weights(weight_decay))
  return optax.chain(*prefix, tx) if prefix else tx


def server_optimizer(name: str, learning_rate: float, *, momentum: float = 0.9,
                     b1: float = 0.9, b2: float = 0.99,
                     tau: float = 1e-3) -> optax.GradientTransformation:
  """The server optimizer applied to the pseudo-gradient.

  'sgd' with learning rate 1 is FedAvg, 'momentum' is FedAvgM (Hsu et al.
  2019), and 'adagrad', 'yogi', 'adam' are FedAdagrad, FedYogi and FedAdam
  (Reddi et al. 2021).

  Examples:
    >>> tx = server_optimizer('adam', 0.01)
  """
  check_learning_rate('server', learning_rate)
  if name == 'sgd':
    return optax.sgd(learning_rate)
  if name == 'momentum':
    return optax.sgd(learning_rate, momentum=momentum)
  if name in ('adagrad', 'yogi', 'adam'):
    return optax.chain(scale_by_fedopt_adaptive(name, b1=b1, b2=b2, tau=tau),
                       optax.scale_by_learning_rate(learning_rate))
  raise _unknown('server', name, SERVER_OPTIMIZERS)


def apply_pseudo_gradient(server_optimizer: optax.GradientTransformation,
                          params: optax.Params, opt_state: optax.OptState,
                          pseudo_gradient: optax.Params
                          ) -> tuple[optax.Params, optax.OptState, jax.Array]:
  """One server step on a pseudo-gradient (the negated model change).

  Returns:
    The new params, the new optimizer state and the norm of the applied
    update.

  Examples:
    >>> params, opt_state, norm = apply_pseudo_gradient(
    ...     optax.sgd(1.0), params, opt_state, optax.tree.scale(-1, delta))
  """
  updates, opt_state = server_optimizer.update(pseudo_gradient, opt_state,
                                               params)
  return (optax.apply_updates(params, updates), opt_state,
          optax.tree.norm(updates))
