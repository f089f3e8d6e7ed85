"""Tests of fedjax_core.engine.state_store."""

import chex
import numpy as np
import pytest

from fedjax_core.engine.state_store import ClientStateStore


def _store():
  """Five clients; row i of 'a' is [i, 10 i], of 'b'['c'] is i * ones(2, 2)."""
  i = np.arange(5, dtype=np.float32)
  stacked = {'a': np.stack([i, 10 * i], axis=1),
             'b': {'c': i[:, None, None] * np.ones((5, 2, 2), np.float32),
                   'd': np.arange(5, dtype=np.int32)}}
  return ClientStateStore(stacked, num_clients=5)


def test_replicate_copies_one_client_to_every_row():
  """Every row of a replicated store equals the one-client state."""
  one = {'w': np.array([1.0, 2.0]), 'k': np.int32(3)}
  store = ClientStateStore.replicate(one, num_clients=4)
  assert store.num_clients == 4
  chex.assert_shape(store.stacked['w'], (4, 2))
  chex.assert_shape(store.stacked['k'], (4,))
  np.testing.assert_array_equal(store.stacked['w'], [[1.0, 2.0]] * 4)
  np.testing.assert_array_equal(store.stacked['k'], [3, 3, 3, 3])


def test_replicated_rows_are_independent_of_the_template():
  """Scattering into a replicated store touches neither the template nor
  other rows."""
  one = {'w': np.zeros(2)}
  store = ClientStateStore.replicate(one, num_clients=3)
  store.scatter(np.array([1]), {'w': np.full((1, 2), 7.0)})
  np.testing.assert_array_equal(one['w'], [0.0, 0.0])
  np.testing.assert_array_equal(store.stacked['w'],
                                [[0, 0], [7, 7], [0, 0]])


def test_gather_returns_rows_in_the_given_order():
  """gather(ids) is row ids[j] at position j, for every leaf."""
  store = _store()
  rows = store.gather(np.array([3, 0, 4]))
  chex.assert_tree_shape_prefix(rows, (3,))
  np.testing.assert_array_equal(rows['a'], [[3, 30], [0, 0], [4, 40]])
  np.testing.assert_array_equal(rows['b']['c'][:, 0, 0], [3, 0, 4])
  np.testing.assert_array_equal(rows['b']['d'], [3, 0, 4])


def test_scatter_writes_only_the_given_rows():
  """scatter(ids, rows) writes row j to client ids[j] and nothing else."""
  store = _store()
  ids = np.array([4, 1])
  store.scatter(ids, {'a': np.array([[-4.0, -40.0], [-1.0, -10.0]]),
                      'b': {'c': -np.ones((2, 2, 2)),
                            'd': np.array([40, 10])}})
  np.testing.assert_array_equal(
      store.stacked['a'],
      [[0, 0], [-1, -10], [2, 20], [3, 30], [-4, -40]])
  np.testing.assert_array_equal(store.stacked['b']['c'][:, 1, 1],
                                [0, -1, 2, 3, -1])
  np.testing.assert_array_equal(store.stacked['b']['d'], [0, 10, 2, 3, 40])
  # And gather sees the writes.
  np.testing.assert_array_equal(store.gather(np.array([1, 4]))['b']['d'],
                                [10, 40])


def test_empty_tuple_state_supports_gather_and_scatter():
  """Stateless clients (state `()`) gather to `()` and scatter as a no-op."""
  store = ClientStateStore.replicate((), num_clients=7)
  assert store.num_clients == 7
  assert store.gather(np.array([2, 5])) == ()
  store.scatter(np.array([2, 5]), ())
  assert store.stacked == ()


@pytest.mark.parametrize('shape', [(4, 3), (3,), ()])
def test_constructor_rejects_leaves_without_the_client_axis(shape):
  """A leaf whose leading axis is not [num_clients] raises."""
  stacked = {'ok': np.zeros((5, 3)), 'bad': np.zeros(shape)}
  with pytest.raises(ValueError, match=r'no leading \[5\] client axis'):
    ClientStateStore(stacked, num_clients=5)
