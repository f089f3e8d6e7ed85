"""Gradient matching without building the dummy's per-layer weight gradients.

An attacker that matches a dummy batch's gradient `g` to an observed one
`G` (Zhu, Liu, Han, NeurIPS 2019, "Deep Leakage from Gradients"; Geiping,
Bauermeister, Droege, Moeller, NeurIPS 2020, "Inverting Gradients - How easy
is it to break privacy in federated learning?") needs only `<g, G>` and
`|g|^2`. For a layer `y = a W + b` applied to rows `a_i` with output
cotangents `d_i`, the kernel gradient is `sum_i a_i d_i^T`, so

  <g_W, G_W> = sum_i a_i^T G_W d_i,   |g_W|^2 = sum_ij (a_i . a_j)(d_i . d_j)

(the "ghost norm" of Goodfellow 2015, "Efficient Per-Example Gradient
Computations"; Li, Tramer, Liang, Hashimoto, ICLR 2022, "Large Language
Models Can Be Strong Differentially Private Learners"). A convolution is the
same layer over its input patches (rows: examples times output positions).
Vmapped over attack restarts, the per-restart `[in, out]` kernel gradients
(and, for convolutions, the grouped convolutions XLA:CPU runs slowly) give
way to matmuls against the shared `G_W` and small Gram matrices.

Every plain flax `nn.Dense` and 2-D `nn.Conv` (no groups, dilation or
mask; 'SAME' or 'VALID' padding) is handled so; a layer takes the Gram form
when `rows * (in + out) <= in * out`, else its kernel gradient is built as
`patches^T d` (still a matmul). Every other parameter's gradient comes from
ordinary autodiff. The values equal those of the plain gradient to float
rounding.
"""

from collections.abc import Callable
import dataclasses
from typing import Any

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp

from fedjax_core.adversary import inversion_objectives as objectives

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
LossFn = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class _Layer:
  """One ghosted call: its kernel's path and how its rows are formed."""

  kernel_path: tuple[str, ...]
  window: tuple[int, int] | None  # None for Dense.
  strides: tuple[int, int] = (1, 1)
  padding: str = 'VALID'


def _layer_of(context, args, kwargs) -> _Layer | None:
  """The `_Layer` of an intercepted call, or None to run it as it is."""
  module = context.module
  if (context.method_name != '__call__' or kwargs or len(args) != 1
      or not module.has_variable('params', 'kernel')):
    return None
  path = ('params', *module.scope.path, 'kernel')
  if (type(module) is nn.Dense
      and module.get_variable('params', 'kernel').ndim == 2):
    return _Layer(path, None)
  geometry = objectives.conv_geometry(module, args[0])
  return None if geometry is None else _Layer(path, *geometry)


def _rows(layer: _Layer, inputs: jax.Array) -> jax.Array:
  """`[rows, in]` the layer's input rows: Dense inputs, or conv patches
  (`inversion_objectives.conv_patches`)."""
  if layer.window is not None:
    inputs = objectives.conv_patches(inputs, layer.window, layer.strides,
                                     layer.padding)
  return inputs.reshape(-1, inputs.shape[-1])


def _intercepting(layers: list[_Layer], inputs: list[jax.Array],
                  perturbations: list[jax.Array] | None):
  """A flax interceptor recording each ghostable call (into `layers` and
  `inputs`) and adding `perturbations[k]` to the k-th call's output."""
  def intercept(next_fun, args, kwargs, context):
    layer = _layer_of(context, args, kwargs)
    out = next_fun(*args, **kwargs)
    if layer is None:
      return out
    layers.append(layer)
    inputs.append(args[0])
    return out if perturbations is None else out + perturbations[
        len(layers) - 1]
  return intercept


def gradient_products(apply_fn: ApplyFn, params: PyTree, x: jax.Array,
                      loss_fn: Callable[[jax.Array], jax.Array],
                      observed: PyTree) -> tuple[jax.Array, jax.Array]:
  """`(<g, observed>, |g|^2)` for `g` the gradient of `loss_fn(apply_fn(
  params, x))` with respect to `params`, without building the kernel
  gradients of flax Dense and Conv layers (module docstring).

  Args:
    apply_fn: `(params, x) -> logits`, a flax model's apply.
    params: the model's variables.
    x: the inputs.
    loss_fn: `logits -> scalar` loss.
    observed: a params-shaped tree to take the inner product with.

  Returns:
    The inner product and the squared norm, scalars.

  Examples:
    >>> dot, sq = gradient_products(
    ...     model.apply, params, x, lambda z: losses.cross_entropy(
    ...         z, y, jnp.ones(y.shape)), observed)
  """
  probe_layers, perturb_shapes = _probe(apply_fn, params, x)
  kernel_paths = {layer.kernel_path for layer in probe_layers}
  flat = traverse_util.flatten_dict(params)
  flat_observed = traverse_util.flatten_dict(observed)
  rest = {k: v for k, v in flat.items() if k not in kernel_paths}
  kernels = {k: v for k, v in flat.items() if k in kernel_paths}

  def loss_of(rest, perturbations):
    inputs = []
    full = traverse_util.unflatten_dict({**rest, **kernels})
    with nn.intercept_methods(_intercepting([], inputs, perturbations)):
      logits = apply_fn(full, x)
    return loss_fn(logits), inputs

  zeros = [jnp.zeros(s.shape, s.dtype) for s in perturb_shapes]
  _, vjp_fn, inputs = jax.vjp(loss_of, rest, zeros, has_aux=True)
  rest_grads, cotangents = vjp_fn(jnp.ones((), x.dtype))
  dot = sum(jnp.vdot(g, flat_observed[k]) for k, g in rest_grads.items())
  sq = sum(jnp.vdot(g, g) for g in rest_grads.values())
  by_kernel = {}
  for layer, a, d in zip(probe_layers, inputs, cotangents):
    rows_a, rows_d = by_kernel.setdefault(layer.kernel_path, ([], []))
    rows_a.append(_rows(layer, a))
    rows_d.append(d.reshape(-1, d.shape[-1]))
  for layer in {layer.kernel_path: layer for layer in probe_layers}.values():
    rows_a, rows_d = by_kernel[layer.kernel_path]
    a, d = jnp.concatenate(rows_a), jnp.concatenate(rows_d)
    target = flat_observed[layer.kernel_path]
    target = target.reshape(-1, target.shape[-1])
    layer_dot, layer_sq = _kernel_products(a, d, target)
    dot, sq = dot + layer_dot, sq + layer_sq
  return dot, sq


def _kernel_products(a: jax.Array, d: jax.Array, target: jax.Array
                     ) -> tuple[jax.Array, jax.Array]:
  """`(<a^T d, target>, |a^T d|^2)`, by Gram matrices when cheaper."""
  rows, (fan_in, fan_out) = a.shape[0], target.shape
  if rows * (fan_in + fan_out) > fan_in * fan_out:
    grad = a.T @ d
    return jnp.vdot(grad, target), jnp.vdot(grad, grad)
  dot = jnp.sum((a @ target) * d)
  return dot, jnp.sum((a @ a.T) * (d @ d.T))


def _probe(apply_fn: ApplyFn, params: PyTree, x: jax.Array
           ) -> tuple[list[_Layer], list[jax.ShapeDtypeStruct]]:
  """The ghostable calls and their output shapes, in call order, from an
  abstract run."""
  layers = []

  def outputs(p, xs):
    del layers[:]
    captured = []

    def record(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      layer = _layer_of(context, args, kwargs)
      if layer is not None:
        layers.append(layer)
        captured.append(out)
      return out
    with nn.intercept_methods(record):
      apply_fn(p, xs)
    return captured
  return layers, jax.eval_shape(outputs, params, x)
