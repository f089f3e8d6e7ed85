"""Gradient inversion: reconstructing a client's batch from its message.

Optimization attacks, every restart `jax.vmap`ped in one jitted program:
- 'dlg': Zhu, Liu, Han, NeurIPS 2019, "Deep Leakage from Gradients": random
  dummy images and soft dummy labels, optimized jointly to minimize the
  squared L2 distance of their gradient to the observed one. The paper uses
  L-BFGS; here Adam with learning rate `lr` (one optimizer for all methods,
  and no line search inside the vmapped loop).
- 'idlg': Zhao, Mopuri, Bilen 2020, "iDLG: Improved Deep Leakage from
  Gradients": the same with the labels fixed to those recovered from the
  last layer (`label_recovery`).
- 'ig': Geiping, Bauermeister, Droege, Moeller, NeurIPS 2020, "Inverting
  Gradients - How easy is it to break privacy in federated learning?": one
  minus the cosine similarity plus `tv_weight` times the total variation;
  Adam on the sign of the input gradient, its learning rate divided by 10 at
  3/8, 5/8 and 7/8 of the iterations, inputs clamped to the data range.
With `observed='fedavg'` the attacker simulates `local_steps` SGD steps on
the dummy batch and matches the simulated delta (Geiping et al., Sec. 5).

And the analytic attack: one example's input read off the gradient of a
first Dense layer with a bias (Phong, Aono, Hayashi, Wang, Moriai, IEEE TIFS
2018, "Privacy-Preserving Deep Learning via Additively Homomorphic
Encryption"; Geiping et al., Sec. 4).
"""

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_core import errors
from fedjax_core.adversary import ghost_objectives
from fedjax_core.adversary import inversion_objectives as objectives
from fedjax_core.adversary import label_recovery

PyTree = Any
_METHODS = ('dlg', 'idlg', 'ig')
_LOOPS = ('fori', 'host')


@dataclasses.dataclass(frozen=True)
class InversionConfig:
  """How an optimization attack runs.

  Attributes:
    method: 'dlg', 'idlg' or 'ig' (module docstring).
    observed: 'gradient' (a batch-mean gradient) or 'fedavg' (a delta).
    iterations: optimizer steps per restart.
    lr: Adam's learning rate (the initial one for 'ig').
    tv_weight: the total-variation weight ('ig' only).
    num_restarts: random initializations, run vmapped; the best is kept.
    num_examples: examples in the attacked batch.
    local_steps: the client's SGD steps ('fedavg').
    local_lr: the client's SGD learning rate ('fedavg').
    batch_size: the client's minibatch size ('fedavg'); None means
      `num_examples`.
    input_range: `(low, high)` of the data; 'ig' clamps to it.
    loop: 'fori' (iterations in a `lax.fori_loop`, one program) or 'host'
      (a Python loop over the jitted, vmapped step; XLA:CPU runs convs in
      loops slowly, DESIGN.md).
    restart_chunk: None vmaps all restarts at once; k runs them k at a
      time (`lax.map` with `batch_size=k`, still one program), for less
      memory (with `ghost` and `conv_as_matmul`, 8 to 32 of 64 restarts a
      time measured no faster on 2 CPU cores than all at once).
    conv_as_matmul: run the model's flax `nn.Conv` layers as patch matrix
      products (`inversion_objectives.conv_as_matmul`): on XLA:CPU several
      times faster for small maps, and vmapped per-restart conv gradients
      become batched matmuls, not grouped convs.
    ghost: for 'ig' with `observed='gradient'`, compute the cosine from
      `ghost_objectives.gradient_products` (the same values, without
      building the dummy's Dense and Conv kernel gradients). Not used for
      'fedavg' (many steps) nor for DLG's squared distance, which written
      as `|g|^2 - 2 <g, G> + |G|^2` would cancel catastrophically in float32
      near a match.

  Examples:
    >>> InversionConfig(method='ig', iterations=200, num_restarts=8)
  """

  method: str = 'ig'
  observed: str = 'gradient'
  iterations: int = 200
  lr: float = 0.1
  tv_weight: float = 1e-4
  num_restarts: int = 1
  num_examples: int = 1
  local_steps: int = 1
  local_lr: float = 0.1
  batch_size: int | None = None
  input_range: tuple[float, float] = (0.0, 1.0)
  loop: str = 'fori'
  restart_chunk: int | None = None
  conv_as_matmul: bool = False
  ghost: bool = True

  def __post_init__(self):
    for name, valid in (('method', _METHODS), ('loop', _LOOPS),
                        ('observed', tuple(label_recovery.MESSAGE_SIGNS))):
      if getattr(self, name) not in valid:
        raise errors.SettingError(
            name, f'{name} must be one of {", ".join(valid)}, got '
            f'{getattr(self, name)!r}.')
    for name in ('iterations', 'num_restarts', 'num_examples',
                 'local_steps'):
      errors.check_count(name, getattr(self, name), least=1)
    for name in ('lr', 'local_lr'):
      if not getattr(self, name) > 0:
        raise errors.SettingError(
            name, f'{name} must be positive, got {getattr(self, name)}.')
    if not self.tv_weight >= 0:
      raise errors.SettingError(
          'tv_weight', f'tv_weight must be >= 0, got {self.tv_weight}.')
    if self.restart_chunk is not None:
      errors.check_count('restart_chunk', self.restart_chunk, least=1)
    if self.batch_size is not None:
      errors.check_count('batch_size', self.batch_size, least=1)
      if self.batch_size > self.num_examples:
        raise errors.SettingError(
            'batch_size', f'batch_size ({self.batch_size}) cannot exceed '
            f'num_examples ({self.num_examples}); lower it or pass None.')
    low, high = self.input_range
    if not low < high:
      raise errors.SettingError(
          'input_range', f'input_range must be (low, high) with low < high,'
          f' got {self.input_range}.')


class InversionResult(NamedTuple):
  """An attack's output.

  Attributes:
    images: `[num_examples, *input_shape]`, the best restart's batch.
    labels: `[num_examples]` int labels (DLG: the arg-max of its soft ones).
    losses: `[num_restarts]` final objective of each restart.
    all_images: `[num_restarts, num_examples, *input_shape]`.
  """

  images: jax.Array
  labels: jax.Array
  losses: jax.Array
  all_images: jax.Array


def _optimizer(config: InversionConfig) -> optax.GradientTransformation:
  """Adam; for 'ig' on the gradient's sign with Geiping et al.'s steps."""
  if config.method != 'ig':
    return optax.adam(config.lr)
  milestones = {int(config.iterations * f): 0.1 for f in (3 / 8, 5 / 8,
                                                           7 / 8)}
  schedule = optax.piecewise_constant_schedule(config.lr, milestones)
  return optax.chain(optax.scale_by_sign(), optax.adam(schedule))


def _program(apply_fn, input_shape: tuple[int, ...], num_classes: int,
             config: InversionConfig):
  """`(params, observed, labels, keys) -> (images, label_scores, losses)`
  for a `[num_restarts]` stack of keys: pure, jittable functions."""
  optimizer = _optimizer(config)
  if config.conv_as_matmul:
    apply_fn = objectives.conv_as_matmul(apply_fn)
  low, high = config.input_range
  batch = config.num_examples
  simulate = (objectives.observed_gradient if config.observed == 'gradient'
              else functools.partial(
                  objectives.fedavg_delta, local_steps=config.local_steps,
                  local_lr=config.local_lr,
                  batch_size=config.batch_size or batch))

  def distance(x, targets, params, observed):
    if (config.ghost and config.observed == 'gradient'
        and config.method == 'ig'):
      return objectives.cosine_from_products(
          *ghost_objectives.gradient_products(
              apply_fn, params, x,
              lambda logits: objectives.batch_loss(logits, targets),
              observed), observed)
    message = simulate(apply_fn, params, x, targets)
    if config.method != 'ig':
      return objectives.squared_distance(message, observed)
    return objectives.cosine_distance(message, observed)

  def objective(dummy, params, observed, labels):
    targets = (jax.nn.softmax(dummy['y']) if config.method == 'dlg'
               else labels)
    loss = distance(dummy['x'], targets, params, observed)
    if config.method != 'ig':
      return loss
    return loss + config.tv_weight * objectives.total_variation(dummy['x'])

  def init(key):
    x_key, y_key = jax.random.split(key)
    dummy = {'x': jax.random.normal(x_key, (batch, *input_shape))}
    if config.method == 'dlg':
      dummy['y'] = jax.random.normal(y_key, (batch, num_classes))
    return dummy, optimizer.init(dummy)

  def step(state, params, observed, labels):
    dummy, opt_state = state
    grads = jax.grad(objective)(dummy, params, observed, labels)
    updates, opt_state = optimizer.update(grads, opt_state, dummy)
    dummy = optax.apply_updates(dummy, updates)
    if config.method == 'ig':
      dummy['x'] = jnp.clip(dummy['x'], low, high)
    return dummy, opt_state

  def finish(state, params, observed, labels):
    dummy, _ = state
    scores = (dummy['y'] if config.method == 'dlg'
              else jax.nn.one_hot(labels, num_classes))
    return (dummy['x'], scores,
            objective(dummy, params, observed, labels))

  return (_over_restarts(init, config.restart_chunk),
          _over_restarts(step, config.restart_chunk),
          _over_restarts(finish, config.restart_chunk))


def _over_restarts(fn, chunk: int | None):
  """`fn(one_restart, *shared)` mapped over a stack of restarts: vmapped,
  or `chunk` restarts at a time."""
  def mapped(restarts, *shared):
    one = lambda restart: fn(restart, *shared)
    if chunk is None:
      return jax.vmap(one)(restarts)
    return jax.lax.map(one, restarts, batch_size=chunk)
  return mapped


@functools.lru_cache(maxsize=None)
def _compiled(apply_fn, input_shape: tuple[int, ...], num_classes: int,
              config: InversionConfig):
  """`invert`'s jitted program, built once per model, shape and config."""
  init, step, finish = _program(apply_fn, input_shape, num_classes, config)

  def labels_of(observed, labels):
    if labels is not None or config.method == 'dlg':
      return labels
    return label_recovery.recover_labels(
        observed, num_classes, config.num_examples, kind=config.observed)

  if config.loop == 'fori':
    @jax.jit
    def run(params, observed, labels, keys):
      labels = labels_of(observed, labels)
      state = jax.lax.fori_loop(
          0, config.iterations,
          lambda _, s: step(s, params, observed, labels), init(keys))
      return finish(state, params, observed, labels)
    return run

  jit_step = jax.jit(step)
  jit_finish = jax.jit(finish)
  jit_labels = jax.jit(labels_of)

  def run_host(params, observed, labels, keys):
    labels = jit_labels(observed, labels)
    state = jax.jit(init)(keys)
    for _ in range(config.iterations):
      state = jit_step(state, params, observed, labels)
    return jit_finish(state, params, observed, labels)
  return run_host


def invert(apply_fn, params: PyTree, observed: PyTree, *,
           input_shape: tuple[int, ...], num_classes: int,
           config: InversionConfig, key: jax.Array,
           labels: jax.Array | None = None) -> InversionResult:
  """Reconstructs the batch behind `observed` by an optimization attack.

  Args:
    apply_fn: `(params, x) -> logits`, the model the client trained.
    params: the variables the client started from (the broadcast).
    observed: a params-shaped message as the server sees it: a gradient or
      a FedAvg delta, possibly clipped, noised or summed by a defence.
    input_shape: one example's shape, e.g. `(8, 8, 1)`.
    num_classes: the model's output width.
    config: the attack.
    key: PRNG key; restart i starts from `split(key, num_restarts)[i]`.
    labels: `[num_examples]` known labels for 'idlg'/'ig'; None recovers
      them from the last layer. Not accepted by 'dlg' (it learns them).

  Returns:
    `InversionResult`; the best restart is the one with the lowest loss.

  Examples:
    >>> config = InversionConfig(method='ig', iterations=300,
    ...                          num_restarts=4)
    >>> result = invert(model.apply, params, grads, input_shape=(8, 8, 1),
    ...                 num_classes=10, config=config,
    ...                 key=jax.random.key(0))
  """
  if labels is not None and config.method == 'dlg':
    raise errors.SettingError(
        'method', "'dlg' learns the labels; pass labels=None or use 'idlg'.")
  if config.method == 'ig' and len(input_shape) != 3:
    raise errors.SettingError(
        'method', "'ig' needs [height, width, channels] inputs for its "
        f'total variation, got input shape {tuple(input_shape)}.')
  run = _compiled(apply_fn, tuple(input_shape), num_classes, config)
  images, scores, losses = run(params, observed, labels,
                               jax.random.split(key, config.num_restarts))
  best = jnp.argmin(jnp.nan_to_num(losses, nan=jnp.inf))
  return InversionResult(images=images[best],
                         labels=jnp.argmax(scores[best], -1).astype(
                             jnp.int32),
                         losses=losses, all_images=images)


def analytic_dense_inversion(observed: PyTree, *, input_size: int | None = None,
                             layer: str | None = None) -> jax.Array:
  """One example's input from the gradient of a Dense layer with a bias.

  For `z = x W + b`, `dL/dW[:, j] = x * dL/db[j]`, so `x = dL/dW[:, j] /
  dL/db[j]` for the `j` with the largest `|dL/db[j]|` (flax kernels are
  `[in, out]`). Exact for one example's gradient (or FedAvg delta of one
  step); a batch gives a mixture. The inputs as the layer sees them:
  flattened for logistic regression and the MLP.

  Args:
    observed: a params-shaped gradient or one-step delta.
    input_size: picks the Dense layer with this input width (the first
      layer: the flattened example size).
    layer: or a path regex naming the layer, e.g. `'^params/Dense_0/'`.

  Returns:
    `[in]` the recovered input.

  Examples:
    >>> analytic_dense_inversion(grads, input_size=64).reshape(8, 8, 1)
  """
  if input_size is None and layer is None:
    raise ValueError('analytic_dense_inversion needs input_size (the first '
                     'layer\'s input width) or layer (a path regex).')
  kernel, bias = label_recovery.find_dense_layer(observed, layer=layer,
                                                 in_size=input_size)
  if bias is None:
    raise ValueError('analytic_dense_inversion needs a Dense layer with a '
                     'bias; the chosen layer has none.')
  j = jnp.argmax(jnp.abs(bias))
  return kernel[:, j] / bias[j]
