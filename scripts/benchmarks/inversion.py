"""Workload `inversion`: 64 Inverting-Gradients restarts vmapped in one
program against the same 64 restarts run one after another.

The attack (Geiping et al., NeurIPS 2020, "Inverting Gradients") targets one
digits image's gradient through the registry CNN (`get_model('cnn', (8, 8,
1), 10)`, McMahan et al.'s MNIST CNN, untrained), 40 iterations per restart
in a `lax.fori_loop`. Each variant is an `InversionConfig`:
  plain: the gradient matched as a built params-shaped tree (`ghost=False`),
    the model's own convolutions;
  ghost: the default, `ghost_objectives.gradient_products` (no per-restart
    kernel gradients);
  ghost_matmul: that with the convolutions run as patch matmuls
    (`conv_as_matmul=True`);
  ghost_matmul_chunk16: that, 16 restarts at a time (`restart_chunk=16`).
For each variant, sequential = its one-restart program, jitted once and
called with 64 keys; vmapped = its 64-restart program. Reported:
s_sequential_<variant> and s_vmapped_<variant> (the run, compile excluded:
the first call's excess over the timed second call is compile_s_...),
speedup_<variant> = its sequential over its vmapped seconds (the issue's
ratio), speedup_vs_plain_<variant> = s_sequential_plain over its vmapped
seconds, and the best restart's PSNR (dB) of each vmapped run.
"""

import time

import jax

from fedjax_core.adversary import gradient_inversion
from fedjax_core.adversary import image_metrics
from fedjax_core.adversary import inversion_objectives
from fedjax_core.data import datasets
from models import registry

_RESTARTS = 64
_ITERATIONS = 40
_SHAPE = (8, 8, 1)
# name -> (InversionConfig options, whose sequential run it shares).
_VARIANTS = {
    'plain': ({'ghost': False}, 'plain'),
    'ghost': ({}, 'ghost'),
    'ghost_matmul': ({'conv_as_matmul': True}, 'ghost_matmul'),
    'ghost_matmul_chunk16': ({'conv_as_matmul': True, 'restart_chunk': 16},
                             'ghost_matmul'),
}


def _timed(fn) -> tuple[float, float, object]:
  """Compile seconds (first call's excess), run seconds and the result."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  start = time.perf_counter()
  result = jax.block_until_ready(fn())
  seconds = time.perf_counter() - start
  return max(first - seconds, 0.0), seconds, result


def run() -> dict:
  """Workload `inversion` (module docstring)."""
  data = datasets.load_digits(0)
  x, y = data.train_x[:1], data.train_y[:1]
  model = registry.get_model('cnn', _SHAPE, 10)
  params = model.init(jax.random.key(0))
  observed = inversion_objectives.observed_gradient(model.apply, params, x,
                                                    y)
  keys = jax.random.split(jax.random.key(1), _RESTARTS)

  def attack(key, restarts, **options):
    config = gradient_inversion.InversionConfig(
        method='ig', iterations=_ITERATIONS, num_restarts=restarts,
        **options)
    return gradient_inversion.invert(
        model.apply, params, observed, input_shape=_SHAPE, num_classes=10,
        config=config, key=key)

  result = {'workload': 'inversion', 'backend': jax.default_backend(),
            'devices': jax.device_count(), 'restarts': _RESTARTS,
            'iterations': _ITERATIONS, 'loop': 'fori'}
  for name, (options, sequential) in _VARIANTS.items():
    if sequential == name:
      compile_s, seconds, _ = _timed(
          lambda o=options: [attack(key, 1, **o).losses for key in keys])
      result.update({f'compile_s_sequential_{name}': compile_s,
                     f's_sequential_{name}': seconds})
    compile_s, seconds, inverted = _timed(
        lambda o=options: attack(jax.random.key(1), _RESTARTS, **o))
    result.update({
        f'compile_s_vmapped_{name}': compile_s, f's_vmapped_{name}': seconds,
        f'speedup_{name}': result[f's_sequential_{sequential}'] / seconds,
        f'speedup_vs_plain_{name}': result['s_sequential_plain'] / seconds,
        f'psnr_{name}': float(image_metrics.psnr(x, inverted.images)[0])})
  return result
