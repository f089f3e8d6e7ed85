"""Gradient inversion against each defence: PSNR, SSIM and labels recovered.

The victim (and, under secure aggregation, the rest of its cohort) runs
FedAvg's local SGD from the freshly initialized model on a few digits
training images; the curious server inverts what it observes of the
message (`defences.observed_message`; under secure aggregation the sum of a
cohort of `clients_per_round`) with the FedAvg-update variant of the attack,
which knows the local steps, learning rate and batch size. Each
reconstruction is paired with its original by the best assignment, so a
batch's images count in whatever order they come back.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_core.adversary import gradient_inversion
from fedjax_core.adversary import image_metrics
from fedjax_core.adversary import inversion_objectives
from scripts.attack_tables import defences
from scripts.attack_tables import report
from scripts.attack_tables import training


@dataclasses.dataclass(frozen=True)
class InversionSetup:
  """What the attacker and its victim do.

  Attributes:
    batch_size: the victim's images (its local batch); `batch:B` overrides.
    local_steps: the victim's local SGD steps; `steps:E` overrides.
    iterations: the attack's optimization steps.
    restarts: random restarts, vmapped; the best by the attack's loss wins.
    lr: the attack's learning rate.
    tv_weight: Inverting Gradients' total-variation weight.
  """

  batch_size: int = 1
  local_steps: int = 1
  iterations: int = 500
  restarts: int = 4
  lr: float = 0.1
  tv_weight: float = 1e-4


def _victims(setup: training.Setup, count: int) -> tuple[np.ndarray,
                                                         np.ndarray]:
  """`count` training images and labels drawn by the seed, as floats."""
  dataset = setup.dataset
  rows = np.random.default_rng(setup.seed).choice(
      len(dataset.train_y), count, replace=False)
  return (dataset.train_x[rows].astype(np.float32), dataset.train_y[rows])


def attack_cell(setup: training.Setup, attack: InversionSetup, method: str,
                defence: defences.Defence
                ) -> tuple[report.Cell, np.ndarray, np.ndarray]:
  """One inversion against one defence: its cell, the originals and the
  reconstructions (matched to the originals' order)."""
  batch = int(defence.value) if defence.name == 'batch' else attack.batch_size
  steps = (int(defence.value) if defence.name == 'steps'
           else attack.local_steps)
  cohort = setup.clients_per_round if defence.name == 'secagg' else 1
  x, y = _victims(setup, cohort * batch)
  model = setup.model_fns
  key = jax.random.key(setup.seed)
  params = model.init(key)
  messages = jax.vmap(lambda xs, ys: inversion_objectives.fedavg_delta(
      model.apply, params, xs, ys, local_steps=steps,
      local_lr=setup.client_lr, batch_size=batch))(
          jnp.asarray(x).reshape((cohort, batch) + x.shape[1:]),
          jnp.asarray(y).reshape(cohort, batch))
  observed = defences.observed_message(
      defence, messages, jax.random.fold_in(key, 1),
      dp_clip_norm=setup.dp_clip_norm)
  config = gradient_inversion.InversionConfig(
      method=method, observed='fedavg', iterations=attack.iterations,
      lr=attack.lr, tv_weight=attack.tv_weight,
      num_restarts=attack.restarts, num_examples=len(x),
      local_steps=steps, local_lr=setup.client_lr, batch_size=len(x))
  result = gradient_inversion.invert(
      model.apply, params, observed, input_shape=x.shape[1:],
      num_classes=setup.dataset.num_classes, config=config,
      key=jax.random.fold_in(key, 2))
  reconstructed = np.asarray(result.images)
  matched = image_metrics.match_reconstructions(x, reconstructed)
  metrics = {
      'psnr': float(np.mean(matched.psnr)),
      'ssim': float(np.mean(matched.ssim)),
      'label_accuracy': float(image_metrics.label_accuracy(
          y, np.asarray(result.labels)))}
  cell = report.Cell('inversion', method, defence.label,
                     training.clean_accuracy(setup, defence), metrics)
  return cell, x, reconstructed[matched.assignment]
