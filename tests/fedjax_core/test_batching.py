"""Tests of fedjax_core.engine.batching."""

import math

import chex
import numpy as np
import pytest

from fedjax_core.engine import batching
from fedjax_core.data.client_indices import ClientIndices

# Three clients of sizes 5, 12 and 7 owning disjoint, interleaved rows.
_ROWS = np.random.default_rng(0).permutation(24)
_CLIENTS = (np.sort(_ROWS[:5]), np.sort(_ROWS[5:17]), np.sort(_ROWS[17:]))
_SIZES = np.array([5, 12, 7])


def test_client_num_steps_epoch_mode_by_hand():
  """Sizes [5, 12, 7], B=4, E=2: [2, 3, 2] * 2 steps."""
  np.testing.assert_array_equal(
      batching.client_num_steps(_SIZES, 4, local_epochs=2), [4, 6, 4])
  np.testing.assert_array_equal(
      batching.client_num_steps(_SIZES, 5, local_epochs=3), [3, 9, 6])
  np.testing.assert_array_equal(
      batching.client_num_steps(_SIZES, 12, local_epochs=1), [1, 1, 1])


def test_client_num_steps_passes_local_steps_through():
  """In step mode every client runs local_steps steps."""
  np.testing.assert_array_equal(
      batching.client_num_steps(_SIZES, 4, local_steps=7), [7, 7, 7])


def test_step_buckets_are_cohort_max_quantiles():
  """Steps 1..100, cohort 2, 4 buckets: levels (k/4)^(1/2) = 0.5, 0.7071,
  0.8660, 1 at sorted positions level * 99 = 49.5, 70.004, 85.74, 99,
  rounded up to 50, 71, 86, 99: steps 51, 72, 87, 100."""
  steps = np.arange(1, 101)
  np.testing.assert_array_equal(batching.step_buckets(steps, 2, 4),
                                [51, 72, 87, 100])
  # One bucket pads every round to the largest client.
  np.testing.assert_array_equal(batching.step_buckets(steps, 2, 1), [100])
  # Equal clients need one bucket, whatever is asked.
  np.testing.assert_array_equal(
      batching.step_buckets(np.full(9, 6), 3, 4), [6])


def test_bucket_steps_is_the_smallest_bucket_that_fits():
  buckets = np.array([51, 71, 87, 100])
  assert batching.bucket_steps(buckets, np.array([3, 51])) == 51
  assert batching.bucket_steps(buckets, np.array([52, 10])) == 71
  assert batching.bucket_steps(buckets, np.array([100])) == 100


def test_step_buckets_rejects_zero_buckets():
  with pytest.raises(ValueError, match='size_buckets must be >= 1'):
    batching.step_buckets(np.arange(1, 5), 2, 0)


@pytest.mark.parametrize('kwargs,match', [
    (dict(batch_size=4, local_epochs=1, local_steps=3), 'exactly one'),
    (dict(batch_size=4), 'exactly one'),
    (dict(batch_size=13, local_epochs=1), 'larger than every client'),
    (dict(batch_size=0, local_epochs=1), 'batch_size must be positive'),
    (dict(batch_size=-2, local_steps=1), 'batch_size must be positive'),
    (dict(batch_size=4, local_epochs=0), 'local_epochs must be positive'),
    (dict(batch_size=4, local_epochs=-1), 'local_epochs must be positive'),
    (dict(batch_size=4, local_steps=0), 'local_steps must be positive'),
])
def test_client_num_steps_rejects_bad_settings(kwargs, match):
  """Bad settings raise ValueError naming the problem."""
  with pytest.raises(ValueError, match=match):
    batching.client_num_steps(_SIZES, **kwargs)


def _epoch_batches(ids, seed=0, round_num=0, batch_size=4, epochs=2):
  num_steps = batching.client_num_steps(_SIZES, batch_size,
                                        local_epochs=epochs).max()
  return batching.cohort_batches(
      ClientIndices.from_lists(_CLIENTS), np.asarray(ids), seed=seed,
      round_num=round_num, batch_size=batch_size, num_steps=num_steps,
      local_epochs=epochs)


def test_epoch_mode_shapes_and_dtypes():
  """Indices are int32 and masks float32, both [cohort, steps, B]."""
  b = _epoch_batches([0, 1, 2])
  chex.assert_shape([b.indices, b.mask], (3, 6, 4))
  assert b.indices.dtype == np.int32
  assert b.mask.dtype == np.float32
  assert set(np.unique(b.mask)) <= {0.0, 1.0}


@pytest.mark.parametrize('slot,cid', [(0, 0), (1, 1), (2, 2)])
def test_epoch_mode_each_epoch_covers_the_client_rows_once(slot, cid):
  """Per epoch, the real rows are exactly the client's rows, each once; the
  last batch of an epoch is partial and the remaining steps are padding."""
  b = _epoch_batches([0, 1, 2], batch_size=4, epochs=2)
  n, bsz, epochs = len(_CLIENTS[cid]), 4, 2
  per_epoch = math.ceil(n / bsz)
  mask, idx = b.mask[slot], b.indices[slot]
  # Batch sizes per step, by hand: e.g. n=5 -> [4, 1, 4, 1, 0, 0].
  sizes = [min(bsz, n - j * bsz) for j in range(per_epoch)] * epochs
  sizes += [0] * (6 - len(sizes))
  np.testing.assert_array_equal(mask.sum(axis=1), sizes)
  assert int((mask.sum(axis=1) > 0).sum()) == per_epoch * epochs
  np.testing.assert_array_equal(mask[per_epoch * epochs:], 0.0)
  np.testing.assert_array_equal(idx[mask == 0], 0)
  for e in range(epochs):
    steps = slice(e * per_epoch, (e + 1) * per_epoch)
    real = idx[steps][mask[steps] == 1]
    np.testing.assert_array_equal(np.sort(real), _CLIENTS[cid])


def test_epoch_mode_shuffles_between_epochs_and_rounds():
  """Row order is shuffled: the two epochs (or two rounds) of the
  12-example client are not in the same order."""
  b = _epoch_batches([1])
  first = b.indices[0, :3].ravel()
  second = b.indices[0, 3:6].ravel()
  assert not np.array_equal(first, second)
  assert not np.array_equal(first, np.sort(first))


def test_batches_are_deterministic_in_seed_round_and_client():
  """Same (seed, round) gives identical batches; a different round or seed
  gives a different shuffle."""
  a = _epoch_batches([0, 1, 2], seed=3, round_num=5)
  b = _epoch_batches([0, 1, 2], seed=3, round_num=5)
  np.testing.assert_array_equal(a.indices, b.indices)
  np.testing.assert_array_equal(a.mask, b.mask)
  other_round = _epoch_batches([0, 1, 2], seed=3, round_num=6)
  other_seed = _epoch_batches([0, 1, 2], seed=4, round_num=5)
  assert not np.array_equal(a.indices, other_round.indices)
  assert not np.array_equal(a.indices, other_seed.indices)
  np.testing.assert_array_equal(a.mask, other_round.mask)


@pytest.mark.parametrize('mode', ['epochs', 'steps'])
def test_client_batches_do_not_depend_on_the_rest_of_the_cohort(mode):
  """Client 2's batches are the same alone, with client 0 or with 1."""
  kwargs = (dict(num_steps=6, local_epochs=2) if mode == 'epochs'
            else dict(num_steps=5, local_steps=5))
  outs = [batching.cohort_batches(_CLIENTS, np.array(ids), seed=1,
                                  round_num=2, batch_size=4, **kwargs)
          for ids in ([2], [0, 2], [1, 2])]
  for out in outs[1:]:
    np.testing.assert_array_equal(out.indices[-1], outs[0].indices[0])
    np.testing.assert_array_equal(out.mask[-1], outs[0].mask[0])


# A fourth client smaller than the batch exercises min(B, n).
_STEP_CLIENTS = _CLIENTS + (np.array([30, 31, 32]),)


def _step_batches(ids, seed=0, round_num=0, batch_size=4, steps=5):
  return batching.cohort_batches(_STEP_CLIENTS, np.asarray(ids), seed=seed,
                                 round_num=round_num, batch_size=batch_size,
                                 num_steps=steps, local_steps=steps)


@pytest.mark.parametrize('slot,cid', [(0, 0), (1, 1), (2, 2), (3, 3)])
def test_step_mode_every_step_has_min_b_n_client_rows(slot, cid):
  """Every step holds min(B, n) real rows of this client, masks first, and
  over all steps the rows are used evenly (counts differ by at most 1)."""
  b = _step_batches([0, 1, 2, 3])
  chex.assert_shape([b.indices, b.mask], (4, 5, 4))
  n = len(_STEP_CLIENTS[cid])
  width = min(4, n)
  np.testing.assert_array_equal(b.mask[slot].sum(axis=1), [width] * 5)
  np.testing.assert_array_equal(b.mask[slot][:, :width], 1.0)
  real = b.indices[slot][:, :width]
  assert np.all(np.isin(real, _STEP_CLIENTS[cid]))
  counts = np.array([np.sum(real == r) for r in _STEP_CLIENTS[cid]])
  assert counts.sum() == 5 * width
  assert counts.max() - counts.min() <= 1, counts


def test_step_mode_is_deterministic_and_round_dependent():
  """Step-mode batches repeat for the same round and change with it."""
  a = _step_batches([1], round_num=4)
  b = _step_batches([1], round_num=4)
  c = _step_batches([1], round_num=5)
  np.testing.assert_array_equal(a.indices, b.indices)
  assert not np.array_equal(a.indices, c.indices)


def test_step_mode_batches_have_no_duplicate_rows():
  """No batch in step mode contains the same training row twice."""
  for seed in range(10):
    b = batching.cohort_batches((np.arange(5),), np.array([0]), seed=seed,
                                round_num=0, batch_size=4, num_steps=3,
                                local_steps=3)
    for step in b.indices[0]:
      assert len(set(step.tolist())) == 4, (seed, step)


def test_local_work_defaults_to_one_epoch_and_pads_to_the_bucket():
  """Sizes [5, 12, 7], B=4, no epochs or steps given: one epoch, [2, 3, 2]
  steps; one bucket pads every cohort to 3 steps; the batches are
  cohort_batches' at that step count."""
  indices = ClientIndices.from_lists(_CLIENTS)
  work = batching.LocalWork(indices, seed=3, batch_size=4, local_epochs=None,
                            local_steps=None, cohort_size=2, size_buckets=1)
  np.testing.assert_array_equal(work.steps, [2, 3, 2])
  np.testing.assert_array_equal(work.buckets, [3])
  got = work.batches(np.array([0, 2]), round_num=5)
  want = batching.cohort_batches(indices, np.array([0, 2]), seed=3,
                                 round_num=5, batch_size=4, num_steps=3,
                                 local_epochs=1)
  np.testing.assert_array_equal(got.indices, want.indices)
  np.testing.assert_array_equal(got.mask, want.mask)
  assert got.mask[:, 2].sum() == 0  # Both clients' third step is padding.
