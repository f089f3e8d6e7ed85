"""What a gradient-inversion attacker simulates and the distances it matches.

The server sees a client's message: the mean gradient of a batch (FedSGD,
what Zhu, Liu, Han, NeurIPS 2019, "Deep Leakage from Gradients" (DLG)
attack) or the FedAvg delta after several local SGD steps (Geiping,
Bauermeister, Droege, Moeller, NeurIPS 2020, "Inverting Gradients - How easy
is it to break privacy in federated learning?", Sec. 5). The attacker
simulates the same message on a dummy batch and matches it to the observed
one by the squared L2 distance (DLG; Zhao, Mopuri, Bilen 2020, "iDLG:
Improved Deep Leakage from Gradients") or by one minus the cosine
similarity plus a total-variation prior on the dummy images (Geiping et al.).

Targets are integer labels `[n]` or class probabilities `[n, classes]`
(DLG's soft dummy labels); the loss is the batch-mean softmax
cross-entropy, as the engine's `losses.cross_entropy` computes it for
integer labels.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_core.toolkit import losses

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
# Keeps the cosine finite when a message is all zeros.
_EPS = 1e-12


def _mean_loss(apply_fn: ApplyFn, params: PyTree, x: jax.Array,
               targets: jax.Array) -> jax.Array:
  """Batch-mean cross-entropy for integer labels or class probabilities."""
  logits = apply_fn(params, x)
  if targets.ndim == 1:
    return losses.cross_entropy(logits, targets, jnp.ones(targets.shape))
  return optax.softmax_cross_entropy(logits, targets).mean()


def observed_gradient(apply_fn: ApplyFn, params: PyTree, x: jax.Array,
                      y: jax.Array) -> PyTree:
  """The gradient of the batch-mean cross-entropy at `params`: what a
  FedSGD client sends and DLG attacks.

  Args:
    apply_fn: `(params, x) -> logits`.
    params: the model's variables (the server's broadcast).
    x: `[n, *example_shape]` inputs.
    y: `[n]` integer labels or `[n, classes]` probabilities.

  Examples:
    >>> g = observed_gradient(model.apply, params, x[:1], y[:1])
  """
  return jax.grad(lambda p: _mean_loss(apply_fn, p, x, y))(params)


def fedavg_delta(apply_fn: ApplyFn, params: PyTree, x: jax.Array,
                 y: jax.Array, *, local_steps: int, local_lr: float,
                 batch_size: int) -> PyTree:
  """`params_after - params_before` of `local_steps` plain SGD steps (optax
  `sgd`, learning rate `local_lr`): FedAvg's message with an SGD client.

  Step k uses the examples `(k * batch_size + i) mod n` for `i <
  batch_size`: consecutive minibatches cycling through the data in order
  (whole epochs in order when `batch_size` divides `n`). The steps are
  unrolled (XLA:CPU runs convolutions inside loops slowly; DESIGN.md).

  Args:
    apply_fn: `(params, x) -> logits`.
    params: the model's variables (the server's broadcast).
    x: `[n, *example_shape]` inputs.
    y: `[n]` integer labels or `[n, classes]` probabilities.
    local_steps: SGD steps.
    local_lr: SGD learning rate.
    batch_size: examples per step, at most `n`.

  Examples:
    >>> d = fedavg_delta(model.apply, params, x, y, local_steps=2,
    ...                  local_lr=0.1, batch_size=4)
  """
  n = x.shape[0]
  if not 1 <= batch_size <= n:
    raise ValueError(f'batch_size must be in [1, {n}] (the examples given),'
                     f' got {batch_size}.')
  optimizer = optax.sgd(local_lr)
  grad_fn = jax.grad(lambda p, xb, yb: _mean_loss(apply_fn, p, xb, yb))
  trained, state = params, optimizer.init(params)
  for step in range(local_steps):
    rows = (step * batch_size + np.arange(batch_size)) % n
    updates, state = optimizer.update(
        grad_fn(trained, x[rows], y[rows]), state, trained)
    trained = optax.apply_updates(trained, updates)
  return jax.tree.map(jnp.subtract, trained, params)


def squared_distance(a: PyTree, b: PyTree) -> jax.Array:
  """DLG's distance: the squared L2 norm of `a - b` over all leaves.

  Examples:
    >>> squared_distance(dummy_grads, observed)
  """
  return sum(jnp.sum(jnp.square(u - v))
             for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def cosine_distance(a: PyTree, b: PyTree) -> jax.Array:
  """Geiping et al.'s distance: `1 - <a, b> / (|a| |b|)`, the trees taken
  as one flat vector each.

  Examples:
    >>> cosine_distance(dummy_grads, observed)  # in [0, 2]
  """
  dot = sum(jnp.vdot(u, v)
            for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
  return 1.0 - dot / (optax.tree.norm(a) * optax.tree.norm(b) + _EPS)


def total_variation(x: jax.Array) -> jax.Array:
  """The anisotropic total variation of Geiping et al.'s code: the mean
  absolute difference of horizontal neighbours plus that of vertical ones,
  over a `[n, height, width, channels]` batch.

  Examples:
    >>> total_variation(jnp.zeros((1, 8, 8, 1)))  # 0.
  """
  dx = jnp.mean(jnp.abs(x[:, :, 1:, :] - x[:, :, :-1, :]))
  dy = jnp.mean(jnp.abs(x[:, 1:, :, :] - x[:, :-1, :, :]))
  return dx + dy


def _conv_interceptor(next_fun, args, kwargs, context):
  """Runs a plain flax `nn.Conv` call as patches (`lax.
  conv_general_dilated_patches`) times the reshaped kernel; any other call
  (or a Conv with groups, dilation or non-string padding) as it is."""
  module = context.module
  if (context.method_name != '__call__' or type(module) is not nn.Conv
      or module.feature_group_count != 1 or kwargs
      or not isinstance(module.padding, str)
      or module.kernel_dilation not in (None, 1)
      or module.input_dilation not in (None, 1)
      or module.get_variable('params', 'kernel').ndim != 4):
    return next_fun(*args, **kwargs)
  kernel = module.get_variable('params', 'kernel')
  height, width, channels, features = kernel.shape
  strides = module.strides or 1
  strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
  patches = jax.lax.conv_general_dilated_patches(
      args[0], (height, width), strides, module.padding,
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  # The patches' features are ordered (channel, row, column).
  out = patches @ kernel.transpose(2, 0, 1, 3).reshape(-1, features)
  if module.use_bias:
    out = out + module.get_variable('params', 'bias')
  return out


def conv_as_matmul(apply_fn: ApplyFn) -> ApplyFn:
  """`apply_fn` with its 2-D flax `nn.Conv` layers run as patch matrix
  products: the same function (up to float rounding), whose gradients with
  respect to the kernels, vmapped over restarts, are batched matmuls rather
  than the grouped convolutions XLA:CPU runs slowly (DESIGN.md).

  Examples:
    >>> fast_apply = conv_as_matmul(model.apply)
  """
  def apply(params: PyTree, x: jax.Array) -> jax.Array:
    with nn.intercept_methods(_conv_interceptor):
      return apply_fn(params, x)
  return apply
