"""Workload `cnn_cifar`: FedAvg with McMahan's CIFAR CNN against the limits
of its arithmetic.

10 of 100 clients a round, one local epoch of 10 steps of batch 50 on random
CIFAR-10-shaped images. It reports what workload `mlp` does, against the
round's 100 SGD steps of batch 50 and its 10 steps at batch 500 (cohort x
batch), each as a Python loop over one jitted step, measured in a child
process on one default JAX device.
"""

import jax
import jax.numpy as jnp

import models
from scripts.benchmarks import harness
from scripts.benchmarks import setups


def limits() -> dict:
  """The sequential and batched limits of workload `cnn_cifar`: the round's
  100 SGD steps of batch 50, and its 10 steps at batch 500 (cohort x
  batch), each as a Python loop over one jitted step."""
  model = models.get_model('cnn', setups.CIFAR_SHAPE, setups.CLASSES)
  params = model.init(jax.random.key(0))
  step = setups.sgd_step_fn(model)
  x, y = setups.cifar_data(setups.CIFAR_COHORT * setups.CIFAR_EXAMPLES)
  x = jnp.asarray(x, jnp.float32) / 255.0
  seq_x = x.reshape(-1, setups.CIFAR_BATCH, *setups.CIFAR_SHAPE)
  seq_y = jnp.asarray(y).reshape(-1, setups.CIFAR_BATCH)
  steps = setups.CIFAR_EXAMPLES // setups.CIFAR_BATCH
  return {
      'sequential_limit_s': harness.python_loop_seconds(
          step, params, seq_x, seq_y, harness.REPEATS.value),
      'batched_limit_s': harness.python_loop_seconds(
          step, params, seq_x.reshape(steps, -1, *setups.CIFAR_SHAPE),
          seq_y.reshape(steps, -1), harness.REPEATS.value),
  }


def run() -> dict:
  """Workload `cnn_cifar`: FedAvg with McMahan's CIFAR CNN, 10 of 100
  clients a round, one local epoch of 10 steps of batch 50."""
  sim = setups.cifar_simulation('fedavg', 'cnn', 1, 1 + harness.ROUNDS.value)
  compile_s, round_s = harness.timed_rounds(sim)
  limits_s = harness.limits_in_child_process('cnn_cifar')
  return {
      'workload': 'cnn_cifar',
      **harness.placement_figures(sim),
      'compile_s': compile_s,
      's_per_round': round_s,
      'examples_per_s': setups.CIFAR_COHORT * setups.CIFAR_EXAMPLES / round_s,
      **limits_s,
      'ratio_sequential_limit': round_s / limits_s['sequential_limit_s'],
      'ratio_batched_limit': round_s / limits_s['batched_limit_s'],
      'peak_mem_mb': harness.peak_host_mb(),
      'peak_device_mem_mb': harness.peak_device_mb(),
  }
