"""Workload `inversion`: 64 Inverting-Gradients restarts vmapped in one
program against the same 64 restarts run one after another.

The attack (Geiping et al., NeurIPS 2020, "Inverting Gradients") targets one
digits image's gradient through the registry CNN (`get_model('cnn', (8, 8,
1), 10)`, McMahan et al.'s MNIST CNN, untrained). Each variant runs the same
number of iterations per restart in a `lax.fori_loop`:
  sequential: the jitted one-restart program called 64 times (keys differ);
  vmapped: all 64 restarts vmapped in one program;
  vmapped_matmul: the same with the model's convolutions run as patch
    matmuls (`conv_as_matmul`), so per-restart conv gradients are batched
    matmuls, not grouped convolutions;
  chunked_matmul: that, 16 restarts at a time (`restart_chunk=16`).
Reported: s_<variant> (the run, compile excluded: the first call's excess
over the timed second call is compile_s_<variant>), speedup_<variant> =
s_sequential / s_<variant>, and the best restart's PSNR of each (dB; the
sequential restarts start from other random points than the vmapped ones,
which share theirs).
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
_VARIANTS = {
    'vmapped': {},
    'vmapped_matmul': {'conv_as_matmul': True},
    'chunked_matmul': {'conv_as_matmul': True, 'restart_chunk': 16},
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

  def sequential():
    results = [attack(key, 1) for key in keys]
    return min(results, key=lambda r: float(r.losses[0])).images

  result = {'workload': 'inversion', 'backend': jax.default_backend(),
            'devices': jax.device_count(), 'restarts': _RESTARTS,
            'iterations': _ITERATIONS, 'loop': 'fori'}
  compile_s, seconds, images = _timed(sequential)
  result.update(compile_s_sequential=compile_s, s_sequential=seconds,
                psnr_sequential=float(image_metrics.psnr(x, images)[0]))
  for name, options in _VARIANTS.items():
    compile_s, seconds, inverted = _timed(
        lambda o=options: attack(jax.random.key(1), _RESTARTS, **o))
    result.update({
        f'compile_s_{name}': compile_s, f's_{name}': seconds,
        f'speedup_{name}': result['s_sequential'] / seconds,
        f'psnr_{name}': float(image_metrics.psnr(x, inverted.images)[0])})
  return result
