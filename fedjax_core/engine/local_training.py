"""One client's local training over its padded batches.

The loop over local steps is a `lax.scan`, either rolled (a `while` loop: the
fast choice on GPU and TPU) or fully unrolled (straight-line code: XLA:CPU runs
convolutions inside loops far slower, jax-ml/jax#12868). Steps without a real
example leave the local state untouched, so padding never moves the model,
whatever the optimizer. Inputs are converted to float32 (`data.as_float`)
and, when asked, augmented per step with a key of their own; a data-poisoning
attack then rewrites the batch (a backdoor's trigger is stamped after
augmentation, so it is never cropped away).
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from fedjax_core import streams
from fedjax_core.algorithm import (Algorithm, Batch, ClientInfo,
                                   ClientOutput, Frozen)
from fedjax_core.data.federated import as_float

PyTree = Any
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]
PoisonFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def _kept_if_empty(count: jax.Array, new: PyTree, old: PyTree) -> PyTree:
  """`new` if the step had a real example, else `old`. `Frozen` state is
  passed through as it is: selecting it per client would give every client
  its own copy."""
  is_frozen = lambda node: isinstance(node, Frozen)
  return jax.tree.map(
      lambda n, o: o if is_frozen(o) else jnp.where(count > 0, n, o), new,
      old, is_leaf=is_frozen)


def client_update(algorithm: Algorithm, server_state: PyTree,
                  client_state: PyTree, indices: jax.Array, mask: jax.Array,
                  rng: jax.Array, train_x: jax.Array, train_y: jax.Array, *,
                  unroll: bool, skip_empty_steps: bool,
                  augment: AugmentFn | None = None,
                  poison: PoisonFn | None = None
                  ) -> tuple[ClientOutput, ClientInfo, dict[str, jax.Array]]:
  """Runs one client's round: init, local steps, final message.

  Args:
    algorithm: the algorithm's pure functions.
    server_state: the broadcast server state.
    client_state: this client's persistent state.
    indices: `[num_steps, batch]` rows of `train_x` / `train_y`.
    mask: `[num_steps, batch]` 1.0 for real examples.
    rng: this client's key for the round.
    train_x: `[num_train, ...]` training inputs of the population.
    train_y: `[num_train]` training labels.
    unroll: fully unroll the step loop instead of a rolled `while` loop.
    skip_empty_steps: guard each step so an all-padding step is a no-op
      (needed whenever some steps can be empty).
    augment: `(key, x) -> x` applied to every float batch, or None.
    poison: `(x, y) -> (x, y)` applied to every batch after augmentation
      (data poisoning: label flipping, backdoor triggers), or None.

  Returns:
    The algorithm's `ClientOutput`, the engine's `ClientInfo`, and the
    example-weighted means of the step metrics over the local steps.
  """
  num_steps = indices.shape[0]
  init_rng, steps_rng = jax.random.split(rng)
  local = algorithm.client_init(server_state, client_state, init_rng)

  def step(local, inputs):
    step_indices, step_mask, step_rng = inputs
    x = as_float(train_x[step_indices])
    if augment is not None:
      x = augment(jax.random.fold_in(step_rng, streams.AUGMENT), x)
    y = train_y[step_indices]
    if poison is not None:
      x, y = poison(x, y)
    batch = Batch(x=x, y=y, mask=step_mask)
    new_local, step_metrics = algorithm.local_step(local, batch, step_rng)
    count = jnp.sum(step_mask)
    if skip_empty_steps:
      new_local = _kept_if_empty(count, new_local, local)
    weighted = jax.tree.map(lambda v: v * count, step_metrics)
    return new_local, (count, weighted)

  local, (counts, weighted_metrics) = jax.lax.scan(
      step, local, (indices, mask, jax.random.split(steps_rng, num_steps)),
      unroll=num_steps if unroll else 1)
  num_examples = jnp.sum(counts)
  info = ClientInfo(num_examples=num_examples,
                    num_steps=jnp.sum(counts > 0).astype(jnp.int32))
  train_metrics = jax.tree.map(
      lambda v: jnp.sum(v) / jnp.maximum(num_examples, 1.0), weighted_metrics)
  output = algorithm.client_final(server_state, client_state, local, info)
  return output, info, train_metrics
