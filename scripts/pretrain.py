r"""Pre-trains a base model centrally on one part of a dataset.

The base is what federated fine-tuning starts from (`scripts/train.py
--algorithm=fedlora|ffa_lora --init_checkpoint=WORKDIR/base`). By default it
trains the character transformer on the 'pretrain' half of the embedded
pydoc_topics corpus (Python's help topics); fine-tuning then runs on the
other half's topics, one client per topic. It reports test accuracy on both
halves, so the fine-tuning's gain can be read against the base's.

Training is resumable: re-run with the same --workdir to continue from the
last checkpoint. The base is written to WORKDIR/base (orbax params and
base.json).

Examples:
  python -m scripts.pretrain --workdir=/tmp/base
  python -m scripts.pretrain --dataset=digits --model=mlp --steps=300 \
      --workdir=/tmp/digits_base
"""

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from fedjax_core import targets
from fedjax_core.data import datasets
from fedjax_core.toolkit import losses
from fedjax_core.toolkit import optimizers
from fedjax_core.toolkit import pretrained
from fedjax_core.algorithm import Batch
from fedjax_core.data.federated import as_float
from fedjax_core.engine.evaluation import Evaluator
import models

_DATASET = flags.DEFINE_enum('dataset', 'pydoc_topics',
                             datasets.DATASET_NAMES, 'Dataset.')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'TFDS data directory (TFDS datasets only).')
_DATA_PART = flags.DEFINE_enum(
    'data_part', 'pretrain', datasets.DATA_PARTS,
    'Part of the dataset to train on; fine-tune on another.')
_MODEL = flags.DEFINE_enum('model', 'transformer', models.MODEL_NAMES,
                           'Model.')
_STEPS = flags.DEFINE_integer('steps', 2000, 'Training steps.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 64, 'Batch size.')
_OPTIMIZER = flags.DEFINE_enum('optimizer', 'adam',
                               optimizers.CLIENT_OPTIMIZERS, 'Optimizer.')
_LR = flags.DEFINE_float('lr', 3e-3, 'Learning rate.')
_EVAL_EVERY = flags.DEFINE_integer(
    'eval_every', 500, 'Evaluate every this many steps (and at the end).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the init and the batches.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Where checkpoints and the base go (default: '
    'runs/pretrain-TIME).')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')


def _other_part(part: str) -> str | None:
  return {'pretrain': 'finetune', 'finetune': 'pretrain'}.get(part)


def _batch_rows(seed: int, step: int, num_rows: int,
                batch_size: int) -> np.ndarray:
  """The rows of step `step`: epochs of seeded permutations, so a resumed
  run draws the batches an uninterrupted one would."""
  per_epoch = max(num_rows // batch_size, 1)
  epoch, position = divmod(step, per_epoch)
  order = np.random.default_rng([seed, epoch]).permutation(num_rows)
  return order[position * batch_size:(position + 1) * batch_size]


def _train_step(apply_fn, tx):
  grad_fn = losses.loss_and_grad(apply_fn)

  @jax.jit
  def step(params, opt_state, x, y):
    loss, grads = grad_fn(params, Batch(x=as_float(x), y=y,
                                        mask=np.ones(len(y), np.float32)))
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step


def _evaluate(evaluators: dict[str, Evaluator], params) -> dict[str, float]:
  metrics = {}
  for part, evaluator in evaluators.items():
    result = evaluator(params)
    metrics[f'{part}_test_accuracy'] = result['accuracy']
    metrics[f'{part}_test_loss'] = result['loss']
  return metrics


def pretrain(workdir: str) -> dict[str, float]:
  """Trains (or resumes) the base; returns its final metrics."""
  whole = datasets.load_central(_DATASET.value, num_clients=1,
                                seed=_SEED.value, data_dir=_DATA_DIR.value)
  data = datasets.select_part(whole, _DATA_PART.value)
  example_shape = tuple(data.train_x.shape[1:])
  model = models.get_model(
      _MODEL.value, example_shape, data.num_classes,
      input_vocab=data.input_vocab,
      per_position=targets.kind(data.train_y) == targets.TOKENS)
  evaluators = {_DATA_PART.value: Evaluator(model.apply, data.test_x,
                                            data.test_y)}
  other = _other_part(_DATA_PART.value)
  if other is not None:
    other_data = datasets.select_part(whole, other)
    evaluators[other] = Evaluator(model.apply, other_data.test_x,
                                  other_data.test_y)
  print(f'{_DATASET.value} ({_DATA_PART.value}): {len(data.train_y)} train / '
        f'{len(data.test_y)} test examples of shape {example_shape}; model '
        f'{_MODEL.value}')
  tx = optimizers.client_optimizer(_OPTIMIZER.value, _LR.value)
  params = model.init(jax.random.key(_SEED.value))
  opt_state = tx.init(params)
  manager = ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, 'checkpoints')),
      options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True))
  step = manager.latest_step() or 0
  save = lambda **kwargs: manager.save(
      step, args=ocp.args.StandardSave(
          {'params': params, 'opt_state': opt_state}), **kwargs)
  if step:
    restored = manager.restore(step, args=ocp.args.StandardRestore(
        {'params': params, 'opt_state': opt_state}))
    params, opt_state = restored['params'], restored['opt_state']
    print(f'Resumed from step {step}.')
  train_step = _train_step(model.apply, tx)
  bar = tqdm.tqdm(total=_STEPS.value, initial=step, unit='step',
                  disable=not _PROGRESS.value, dynamic_ncols=True)
  metrics = {}
  try:
    while step < _STEPS.value:
      rows = _batch_rows(_SEED.value, step, len(data.train_y),
                         _BATCH_SIZE.value)
      params, opt_state, loss = train_step(params, opt_state,
                                           data.train_x[rows],
                                           data.train_y[rows])
      step += 1
      bar.update(1)
      if step % _EVAL_EVERY.value == 0 or step == _STEPS.value:
        if not np.isfinite(float(loss)):
          raise FloatingPointError(
              f'The training loss is {float(loss)} at step {step}; lower '
              '--lr.')
        metrics = {'step': step, 'train_loss': float(loss),
                   **_evaluate(evaluators, params)}
        bar.set_postfix({k: f'{v:.4f}' for k, v in metrics.items()
                         if k.endswith('accuracy')})
        save()
  except KeyboardInterrupt:
    save(force=True)
    manager.wait_until_finished()
    print(f'\nInterrupted; step {step} is saved in {workdir}. Re-run with '
          'the same --workdir to resume.')
    raise
  finally:
    bar.close()
    manager.wait_until_finished()
    manager.close()
  if not metrics:  # Resumed after the last step.
    metrics = {'step': step, **_evaluate(evaluators, params)}
  pretrained.save_base(
      os.path.join(workdir, 'base'), params,
      {'model': _MODEL.value, 'dataset': _DATASET.value,
       'data_part': _DATA_PART.value, 'example_shape': list(example_shape),
       'num_classes': data.num_classes, **metrics})
  return metrics


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  workdir = _WORKDIR.value or os.path.join(
      'runs', time.strftime('pretrain-%Y%m%d-%H%M%S'))
  try:
    for name in ('steps', 'batch_size', 'eval_every'):
      if flags.FLAGS[name].value < 1:
        raise ValueError(f'--{name} must be positive, got '
                         f'{flags.FLAGS[name].value}.')
    if not _LR.value > 0:
      raise ValueError(f'--lr must be positive, got {_LR.value}.')
    metrics = pretrain(workdir)
  except (ValueError, FloatingPointError) as e:
    sys.exit(f'error: {e}')
  except KeyboardInterrupt:
    sys.exit(130)
  for key, value in metrics.items():
    print(f'{key}: {value:.4f}' if isinstance(value, float)
          else f'{key}: {value}')
  print(f'\nBase: {os.path.join(workdir, "base")}')


if __name__ == '__main__':
  app.run(main)
