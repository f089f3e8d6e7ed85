"""Adapting a model to one client's data at evaluation: plain SGD steps on
some or all of its layers, and the loss of a model on the client's batches.

The personalized algorithms evaluate a client's model after adapting it to
the client's own training split: FedAvg-FT and Per-FedAvg fine-tune the
global model (Fallah et al. 2020, "Personalized Federated Learning with
Theoretical Guarantees: A Model-Agnostic Meta-Learning Approach"), FedBABU
fine-tunes the head (Oh et al. 2022), IFCA and HypCluster pick the cluster
model of least loss (Ghosh et al. 2020; Mansour et al. 2020). `train` is a
`Batch` with a leading step axis, as `Personalization.personal_params`
receives it; all-padding steps leave the model unchanged.

Examples:
  >>> tuned = fine_tune(model.apply, params, train, learning_rate=0.01)
  >>> head_only = fine_tune(model.apply, params, train, 0.01,
  ...                       trainable=PersonalLayers('^params/Dense_2/'))
"""

from typing import Any, Callable

import jax

from fedjax_core.algorithm import Algorithm, Batch, Personalization
from fedjax_core.errors import check_count
from fedjax_core.toolkit import losses
from fedjax_core.toolkit.personal_layers import PersonalLayers

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]


def fine_tune(apply_fn: ApplyFn, params: PyTree, train: Batch,
              learning_rate: float | jax.Array, *,
              trainable: PersonalLayers | None = None) -> PyTree:
  """`params` after one SGD step per batch of `train` on the masked mean
  cross-entropy, moving only the `trainable` layers (all if None)."""
  if trainable is None:
    frozen, tuned = {}, params
    whole = lambda tuned: tuned
  else:
    frozen, tuned = trainable.split(params)
    whole = lambda tuned: trainable.merge(frozen, tuned)
  loss_and_grad = jax.grad(lambda tuned, batch: losses.cross_entropy(
      apply_fn(whole(tuned), batch.x), batch.y, batch.mask))

  def step(tuned, batch):
    grads = loss_and_grad(tuned, batch)
    return jax.tree.map(lambda p, g: p - learning_rate * g, tuned,
                        grads), None

  tuned, _ = jax.lax.scan(step, tuned, train)
  return whole(tuned)


def mean_loss(apply_fn: ApplyFn, params: PyTree, train: Batch) -> jax.Array:
  """The mean cross-entropy of `params` over the real examples of every
  batch of `train` (0 if it has none)."""
  logits = jax.vmap(apply_fn, in_axes=(None, 0))(params, train.x)
  merge_batches = lambda a: a.reshape(-1, *a.shape[2:])
  return losses.cross_entropy(merge_batches(logits), merge_batches(train.y),
                              merge_batches(train.mask))


def global_model_fine_tuned(
    algorithm: Algorithm, apply_fn: ApplyFn,
    learning_rate: Callable[[PyTree], float | jax.Array],
    finetune_steps: int) -> Algorithm:
  """`algorithm` (whose server state has `params`), each client's personal
  model the global model after `fine_tune` on `finetune_steps` batches of
  its training split at `learning_rate(server_state)` (FedAvg-FT,
  Per-FedAvg); a client that never trained gets the same.

  Raises:
    SettingError: `finetune_steps` is not an int >= 0.
  """
  check_count('finetune_steps', finetune_steps)

  def personal_params(server_state, client_state, train, rng):
    del client_state, rng
    return fine_tune(apply_fn, server_state.params, train,
                     learning_rate(server_state))

  return algorithm._replace(
      personalization=Personalization(personal_params, finetune_steps))
