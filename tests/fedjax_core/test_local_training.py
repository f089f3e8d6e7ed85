"""Tests of fedjax_core.engine.local_training.client_update."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.engine import local_training
from fedjax_core.algorithm import Algorithm, ClientOutput

_LR = 0.1
_TRAIN_X = np.array([[1.0, -1.0], [2.0, 0.5], [-3.0, 1.0], [0.5, 2.0],
                     [4.0, -2.0], [1.5, 1.5]], np.float32)
_TRAIN_Y = np.zeros(6, np.int32)
# Five steps of batch 3: full, partial (non-prefix mask), empty, partial,
# empty. The masked slots point at row 4 to catch any leak of padding.
_INDICES = np.array([[0, 1, 2], [3, 4, 5], [4, 4, 4], [2, 4, 0], [4, 4, 4]],
                    np.int32)
_MASK = np.array([[1, 1, 1], [1, 0, 1], [0, 0, 0], [1, 0, 1], [0, 0, 0]],
                 np.float32)
_W0 = np.array([0.5, -0.25], np.float32)


def _algorithm(local_step):
  """A tiny algorithm: server state = params, local state = params."""
  return Algorithm(
      server_init=lambda params, rng: params,
      client_state_init=lambda params: (),
      client_init=lambda server, client, rng: server,
      local_step=local_step,
      client_final=lambda server, client, local, info: ClientOutput(
          message=local, weight=info.num_examples, client_state=client,
          metrics={}),
      server_update=lambda server, message, cohort: (message, {}),
      server_params=lambda server: server)


def _sgd_step(w, batch, rng):
  """SGD on the masked quadratic mean_i (w - x_i)^2 (gradient by hand)."""
  del rng
  m = batch.mask[:, None]
  count = jnp.maximum(jnp.sum(batch.mask), 1.0)
  diff = w[None, :] - batch.x
  loss = jnp.sum(m * diff ** 2) / count
  grad = 2.0 * jnp.sum(m * diff, axis=0) / count
  return w - _LR * grad, {'loss': loss, 'twice': 2.0 * loss}


def _numpy_reference():
  """Final params and the example-weighted mean loss over real steps."""
  w = _W0.astype(np.float64)
  loss_sum, examples = 0.0, 0.0
  for idx, m in zip(_INDICES, _MASK):
    if m.sum() == 0:
      continue
    x = _TRAIN_X[idx[m == 1]].astype(np.float64)
    loss = np.mean(np.sum((w - x) ** 2, axis=1))
    loss_sum += loss * len(x)
    examples += len(x)
    w = w - _LR * 2.0 * np.mean(w - x, axis=0)
  return w, loss_sum / examples


def _run(algorithm, unroll, skip_empty_steps):
  fn = jax.jit(functools.partial(local_training.client_update, algorithm,
                                 unroll=unroll,
                                 skip_empty_steps=skip_empty_steps))
  return fn(jnp.asarray(_W0), (), jnp.asarray(_INDICES), jnp.asarray(_MASK),
            jax.random.key(0), jnp.asarray(_TRAIN_X), jnp.asarray(_TRAIN_Y))


@pytest.mark.parametrize('unroll', [False, True])
@pytest.mark.parametrize('skip_empty_steps', [False, True])
def test_sgd_on_masked_quadratic_matches_numpy(unroll, skip_empty_steps):
  """Rolled and unrolled scans give the hand-written SGD loop's params and
  the example-weighted mean of the step metrics."""
  output, info, metrics = _run(_algorithm(_sgd_step), unroll,
                               skip_empty_steps)
  w, mean_loss = _numpy_reference()
  np.testing.assert_allclose(output.message, w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics['loss'], mean_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics['twice'], 2 * mean_loss, rtol=1e-5)


@pytest.mark.parametrize('unroll', [False, True])
def test_client_info_counts_examples_and_nonempty_steps(unroll):
  """num_examples = 3 + 2 + 0 + 2 + 0 = 7 and num_steps = 3 real steps."""
  output, info, _ = _run(_algorithm(_sgd_step), unroll, True)
  assert float(info.num_examples) == 7.0
  assert int(info.num_steps) == 3
  assert info.num_steps.dtype == jnp.int32
  assert float(output.weight) == 7.0
  assert output.client_state == ()


def _drift_step(w, batch, rng):
  """An update that moves the params even on an empty batch."""
  del batch, rng
  return w + 1.0, {'loss': jnp.float32(0.0)}


@pytest.mark.parametrize('unroll', [False, True])
def test_empty_steps_are_skipped_only_when_asked(unroll):
  """With skip_empty_steps the 2 all-padding steps leave the state alone
  (3 moves); without it every one of the 5 steps moves it."""
  skipped, _, _ = _run(_algorithm(_drift_step), unroll, True)
  np.testing.assert_allclose(skipped.message, _W0 + 3.0)
  unskipped, _, _ = _run(_algorithm(_drift_step), unroll, False)
  np.testing.assert_allclose(unskipped.message, _W0 + 5.0)


def test_all_padding_client_is_unchanged_with_zero_weight():
  """A client with no real example returns the initial params, weight 0
  and zero metrics (no 0/0)."""
  fn = functools.partial(local_training.client_update,
                         _algorithm(_drift_step), unroll=False,
                         skip_empty_steps=True)
  output, info, metrics = fn(
      jnp.asarray(_W0), (), jnp.zeros((4, 3), jnp.int32),
      jnp.zeros((4, 3)), jax.random.key(1), jnp.asarray(_TRAIN_X),
      jnp.asarray(_TRAIN_Y))
  np.testing.assert_array_equal(output.message, _W0)
  assert float(info.num_examples) == 0.0 and int(info.num_steps) == 0
  assert float(metrics['loss']) == 0.0


def test_step_rngs_differ_between_steps():
  """Each local step gets its own key: two steps that record a uniform draw
  record two different values."""
  def recording_step(state, batch, rng):
    del batch
    count, draws = state
    draws = draws.at[count].set(jax.random.uniform(rng))
    return (count + 1, draws), {}
  algorithm = _algorithm(recording_step)._replace(
      client_init=lambda server, client, rng: (jnp.int32(0), jnp.zeros(2)))
  out, _, _ = local_training.client_update(
      algorithm, jnp.zeros(2), (), jnp.zeros((2, 1), jnp.int32),
      jnp.ones((2, 1)), jax.random.key(2), jnp.asarray(_TRAIN_X),
      jnp.asarray(_TRAIN_Y), unroll=False, skip_empty_steps=False)
  count, draws = out.message
  assert int(count) == 2
  assert np.all(np.asarray(draws) > 0)
  assert float(draws[0]) != float(draws[1])
