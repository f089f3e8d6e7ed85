"""A client's personal state: the personal model once trained, else the
global model, for one client and for a stacked cohort."""

import jax
import numpy as np

from fedjax_core.toolkit import personal_state

OWN = {'w': np.array([[1.0, 2.0]], np.float32), 'b': np.float32(3.0)}
GLOBAL = {'w': np.array([[-1.0, -2.0]], np.float32), 'b': np.float32(-3.0)}


def _assert_trees_equal(got, want):
  jax.tree.map(np.testing.assert_array_equal, got, want)


def test_initial_and_trained_states():
  initial, trained = personal_state.initial(OWN), personal_state.trained(OWN)
  assert (initial.trained, trained.trained) == (0.0, 1.0)
  _assert_trees_equal(personal_state.personal_or_global(initial, GLOBAL),
                      GLOBAL)
  _assert_trees_equal(personal_state.personal_or_global(trained, GLOBAL),
                      OWN)


def test_stacked_clients_each_get_their_own_choice():
  stacked = jax.tree.map(lambda *leaves: np.stack(leaves),
                         personal_state.initial(OWN),
                         personal_state.trained(OWN))
  got = jax.vmap(personal_state.personal_or_global, in_axes=(0, None))(
      stacked, GLOBAL)
  _assert_trees_equal(jax.tree.map(lambda leaf: leaf[0], got), GLOBAL)
  _assert_trees_equal(jax.tree.map(lambda leaf: leaf[1], got), OWN)
