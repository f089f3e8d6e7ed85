"""Sharpness-aware gradients as `grad_fn -> grad_fn` transforms.

A `GradFn` maps `(params, batch)` to `(loss, grads)`. Each transform here
returns another `GradFn` that evaluates the gradient somewhere near `params`
(the loss it reports is still the loss at `params`), so an algorithm turns
SAM on by wrapping its gradient function and changes nothing else.

- SAM (Foret et al. 2021) as used by FedSAM (Qu et al. 2022; Caldarola et
  al. 2022): eps = rho g / (||g|| + 1e-12), gradient taken at y + eps.
- ASAM (Kwon et al. 2021): T_w = |w| + eta_a, eps = rho T_w^2 g / ||T_w g||.
- FedSpeed's merged gradient (Sun et al., ICLR 2023, Algorithm 1): y_hat =
  y + rho g1 without normalization, g = (1 - alpha) g1 + alpha g(y_hat).
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from fedjax_core.algorithm import Batch

PyTree = Any
GradFn = Callable[[PyTree, Batch], tuple[jax.Array, PyTree]]
_NORM_EPS = 1e-12


def sam_perturbation(params: PyTree, grads: PyTree, rho: float, *,
                     adaptive: bool = False, eta: float = 0.0) -> PyTree:
  """The ascent step eps of SAM, or of ASAM if `adaptive`.

  SAM: eps = rho g / (||g|| + 1e-12). ASAM: with T = |w| + eta,
  eps = rho T^2 g / (||T g|| + 1e-12).
  """
  if adaptive:
    scale = jax.tree.map(lambda w: jnp.abs(w) + eta, params)
    scaled = jax.tree.map(jnp.multiply, scale, grads)
    norm = optax.tree.norm(scaled)
    return jax.tree.map(lambda t, tg: rho * t * tg / (norm + _NORM_EPS),
                        scale, scaled)
  norm = optax.tree.norm(grads)
  return jax.tree.map(lambda g: rho * g / (norm + _NORM_EPS), grads)


def sam(grad_fn: GradFn, rho: float, *, adaptive: bool = False,
        eta: float = 0.0) -> GradFn:
  """`grad_fn` evaluated at the SAM (or ASAM) ascent point `y + eps`.

  Examples:
    >>> grad_fn = sam(losses.loss_and_grad(model.apply), rho=0.05)
    >>> loss, grads = grad_fn(params, batch)
  """

  def sam_grad_fn(params, batch):
    loss, grads = grad_fn(params, batch)
    eps = sam_perturbation(params, grads, rho, adaptive=adaptive, eta=eta)
    _, perturbed_grads = grad_fn(optax.tree.add(params, eps), batch)
    return loss, perturbed_grads

  return sam_grad_fn


def fedspeed_merge(grad_fn: GradFn, rho: float, alpha: float) -> GradFn:
  """FedSpeed's merged gradient `(1 - alpha) g(y) + alpha g(y + rho g(y))`.

  Sun et al., ICLR 2023, Algorithm 1: the extra ascent step is not
  normalized, and the two gradients are mixed rather than replaced.
  """

  def merged_grad_fn(params, batch):
    loss, g1 = grad_fn(params, batch)
    y_hat = optax.tree.add_scale(params, rho, g1)
    _, g2 = grad_fn(y_hat, batch)
    return loss, jax.tree.map(lambda a, b: (1 - alpha) * a + alpha * b,
                              g1, g2)

  return merged_grad_fn
