"""The compressed broadcast's pieces: swapping the clients' model into an
algorithm's server state, and the broadcast update."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core import downlink
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
  new, num_bytes = downlink.compress_broadcast(params, held,
                                                 jax.random.key(0), 'none')
  np.testing.assert_array_equal(new['w'], params['w'])
  np.testing.assert_array_equal(new['b'], params['b'])
  assert num_bytes == 4 * 7
