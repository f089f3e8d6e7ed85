"""The compressed broadcast's pieces: swapping the clients' model into an
algorithm's server state, and the broadcast update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.channel import downlink
from fedjax_core.channel import uplink
from fedjax_core.algorithm import Algorithm


def _algorithm(server_params):
  return Algorithm(*([None] * 6), server_params=server_params)


def test_with_params_swaps_exactly_the_model_arrays():
  state = {'model': {'params': {'w': jnp.ones(3), 'b': jnp.zeros(2)},
                     'opt': jnp.full(3, 7.0)},
           'control': jnp.full(2, 5.0)}
  algorithm = _algorithm(lambda s: s['model']['params'])
  new = {'w': jnp.full(3, 2.0), 'b': jnp.full(2, 3.0)}
  swapped = downlink.with_params(algorithm, state, new)
  np.testing.assert_array_equal(swapped['model']['params']['w'], 2.0)
  np.testing.assert_array_equal(swapped['model']['params']['b'], 3.0)
  np.testing.assert_array_equal(swapped['model']['opt'], 7.0)
  np.testing.assert_array_equal(swapped['control'], 5.0)


def test_with_params_refuses_computed_params():
  state = {'params': {'w': jnp.ones(3)}}
  algorithm = _algorithm(lambda s: {'w': s['params']['w'] * 2})
  with pytest.raises(ValueError, match='return arrays held in its server'):
    downlink.with_params(algorithm, state, {'w': jnp.zeros(3)})


def test_uncompressed_broadcast_catches_up_at_float32_cost():
  params = {'w': jnp.arange(6.0).reshape(2, 3), 'b': jnp.array([1.0])}
  held = {'w': jnp.zeros((2, 3)), 'b': jnp.zeros(1)}
  new, num_bytes = downlink.compress_broadcast(
      params, held, jax.random.key(0), uplink.Uplink('none'))
  np.testing.assert_array_equal(new['w'], params['w'])
  np.testing.assert_array_equal(new['b'], params['b'])
  assert num_bytes == 4 * 7


def test_qsgd_broadcast_steps_by_one_over_one_plus_omega():
  """x - b = (3, -4) lies on QSGD's levels for s = 5, so C(x - b) is exact;
  omega = min(2 / 25, sqrt(2) / 5) = 0.08 damps the step to 1 / 1.08."""
  params = {'w': jnp.array([3.0, -4.0])}
  held = {'w': jnp.zeros(2)}
  new, num_bytes = downlink.compress_broadcast(
      params, held, jax.random.key(3), uplink.Uplink('qsgd', levels=5))
  np.testing.assert_allclose(new['w'], np.array([3.0, -4.0]) / 1.08,
                             rtol=1e-6)
  assert num_bytes == 5  # A float32 norm and 2 x (1 + 3) bits.
