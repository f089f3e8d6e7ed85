"""Tests of fedjax_core.data.client_indices."""

import numpy as np
import pytest

from fedjax_core.data.client_indices import ClientIndices


def test_from_assignment_by_hand():
  """Rows 0..5 go to clients [2, 0, 2, 1, 0, 2]."""
  clients = ClientIndices.from_assignment(np.array([2, 0, 2, 1, 0, 2]), 4)
  assert len(clients) == 4
  assert [c.tolist() for c in clients] == [[1, 4], [3], [0, 2, 5], []]
  np.testing.assert_array_equal(clients.sizes, [2, 1, 3, 0])
  np.testing.assert_array_equal(clients.offsets, [0, 2, 3, 6, 6])
  np.testing.assert_array_equal(clients.client_of_row(), [0, 0, 1, 2, 2, 2])


def test_from_lists_sorts_each_client():
  clients = ClientIndices.from_lists([np.array([5, 1]), np.array([0])])
  assert [c.tolist() for c in clients] == [[1, 5], [0]]


@pytest.mark.parametrize('rows,offsets,match', [
    ([0, 1], [1, 2], 'starting at 0'),
    ([0, 1], [0, 2, 1], 'non-decreasing'),
    ([0, 1], [0, 1], 'end at len'),
])
def test_rejects_inconsistent_offsets(rows, offsets, match):
  with pytest.raises(ValueError, match=match):
    ClientIndices(np.array(rows), np.array(offsets))


def test_from_assignment_rejects_out_of_range_clients():
  with pytest.raises(ValueError, match=r'client ids must lie in \[0, 2\)'):
    ClientIndices.from_assignment(np.array([0, 2]), 2)


def test_hold_out_splits_each_client_by_hand_counts():
  """Sizes 10, 3, 1 at fraction 0.25 hold out floor(2.5)=2, floor(0.75)=0
  and 0 (a client always keeps one row)."""
  assignment = np.repeat([0, 1, 2], [10, 3, 1])
  clients = ClientIndices.from_assignment(
      np.random.default_rng(0).permutation(assignment), 3)
  kept, held = clients.hold_out(0.25, seed=1)
  np.testing.assert_array_equal(held.sizes, [2, 0, 0])
  np.testing.assert_array_equal(kept.sizes, [8, 3, 1])
  for i in range(3):
    together = np.sort(np.concatenate([kept[i], held[i]]))
    np.testing.assert_array_equal(together, clients[i])
    assert not np.intersect1d(kept[i], held[i]).size
    assert np.all(np.diff(kept[i]) > 0)


def test_hold_out_keeps_one_row_and_is_seeded():
  clients = ClientIndices.from_assignment(np.zeros(2, np.int64), 1)
  kept, held = clients.hold_out(0.9, seed=0)
  assert kept.sizes.tolist() == [1] and held.sizes.tolist() == [1]
  big = ClientIndices.from_assignment(np.zeros(1000, np.int64), 1)
  a = big.hold_out(0.5, seed=3)[1][0]
  np.testing.assert_array_equal(a, big.hold_out(0.5, seed=3)[1][0])
  assert not np.array_equal(a, big.hold_out(0.5, seed=4)[1][0])
  # The held-out rows are a random draw, not the first or last rows.
  assert 100 < np.median(a) < 900 and a.min() < 100 and a.max() > 900


@pytest.mark.parametrize('fraction', [-0.1, 1.0])
def test_hold_out_rejects_bad_fractions(fraction):
  clients = ClientIndices.from_assignment(np.zeros(4, np.int64), 1)
  with pytest.raises(ValueError, match=r'must be in \[0, 1\)'):
    clients.hold_out(fraction, seed=0)
