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
  return batch_loss(apply_fn(params, x), targets)


def batch_loss(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """The batch-mean cross-entropy of `logits` for `[n]` integer labels or
  `[n, classes]` class probabilities.

  Examples:
    >>> batch_loss(jnp.zeros((1, 10)), jnp.array([3]))  # log(10).
  """
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


def cosine_from_products(dot: jax.Array, sq_norm: jax.Array,
                         observed: PyTree) -> jax.Array:
  """`cosine_distance(a, observed)` from `dot = <a, observed>` and
  `sq_norm = |a|^2` alone (what `ghost_objectives.gradient_products`
  gives).

  Examples:
    >>> cosine_from_products(3.0, 1.0, {'u': jnp.array([3.0, 4.0])})  # 0.4
  """
  return 1.0 - dot / (jnp.sqrt(sq_norm) * optax.tree.norm(observed) + _EPS)


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


def conv_geometry(module: nn.Module, x: jax.Array
                  ) -> tuple[tuple[int, int], tuple[int, int], str] | None:
  """`(window, strides, padding)` of a plain 2-D flax `nn.Conv` (no
  groups, dilation or mask; 'SAME' or 'VALID' padding) applied to a
  `[n, height, width, channels]` x; None for any other module.

  Examples:
    >>> conv_geometry(nn.Conv(4, (3, 3)), x)  # ((3, 3), (1, 1), 'SAME')
  """
  if (type(module) is not nn.Conv or x.ndim != 4
      or module.feature_group_count != 1 or module.mask is not None
      or module.padding not in ('SAME', 'VALID')
      or module.kernel_dilation not in (None, 1, (1, 1))
      or module.input_dilation not in (None, 1, (1, 1))
      or len(module.kernel_size) != 2):
    return None
  strides = module.strides or 1
  strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
  return tuple(module.kernel_size), strides, module.padding


def conv_patches(x: jax.Array, window: tuple[int, int],
                 strides: tuple[int, int], padding: str) -> jax.Array:
  """`[n, out_h, out_w, kh * kw * channels]` the input patches of a 2-D
  convolution of `[n, h, w, channels]` x, features ordered (row, column,
  channel) like a flax `HWIO` kernel reshaped to `[kh * kw * channels,
  features]`. Built from strided slices, so its transpose is padding and
  adds (`lax.conv_general_dilated_patches` is a grouped convolution, slow
  on XLA:CPU).

  Examples:
    >>> conv_patches(jnp.ones((1, 4, 4, 2)), (3, 3), (1, 1), 'SAME').shape
    (1, 4, 4, 18)
  """
  pads = jax.lax.padtype_to_pads(x.shape[1:3], window, strides, padding)
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  out = [(x.shape[k + 1] - window[k]) // strides[k] + 1 for k in (0, 1)]
  return jnp.concatenate([
      x[:, i:i + (out[0] - 1) * strides[0] + 1:strides[0],
        j:j + (out[1] - 1) * strides[1] + 1:strides[1]]
      for i in range(window[0]) for j in range(window[1])], axis=-1)


def _conv_interceptor(next_fun, args, kwargs, context):
  """Runs a plain flax `nn.Conv` call (`conv_geometry`) as its patches
  times the reshaped kernel; any other call as it is."""
  module = context.module
  geometry = (None if context.method_name != '__call__' or kwargs
              or len(args) != 1 else conv_geometry(module, args[0]))
  if geometry is None:
    return next_fun(*args, **kwargs)
  kernel = module.get_variable('params', 'kernel')
  out = conv_patches(args[0], *geometry) @ kernel.reshape(
      -1, kernel.shape[-1])
  if module.use_bias:
    out = out + module.get_variable('params', 'bias')
  return out


def conv_as_matmul(apply_fn: ApplyFn) -> ApplyFn:
  """`apply_fn` with its 2-D flax `nn.Conv` layers run as patch matrix
  products (`conv_patches`): the same function (up to float rounding). On
  XLA:CPU the matmuls run faster than its convolutions of small maps with
  shared kernels, and their kernel gradients vmapped over restarts are
  batched matmuls rather than grouped convolutions (DESIGN.md).

  Examples:
    >>> fast_apply = conv_as_matmul(model.apply)
  """
  def apply(params: PyTree, x: jax.Array) -> jax.Array:
    with nn.intercept_methods(_conv_interceptor):
      return apply_fn(params, x)
  return apply
