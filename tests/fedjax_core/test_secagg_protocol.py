"""Tests of fedjax_core.channel.secagg_protocol."""

import numpy as np
import pytest

from fedjax_core.channel import secagg_protocol
from fedjax_core.channel import shamir

# 8 cohort slots, 7 participants with non-contiguous global ids, one
# padding slot (index 5).
_IDS = np.array([40, 3, 17, 1000, 8, 0, 61, 9], np.int32)
_PART = np.array([1, 1, 1, 1, 1, 0, 1, 1], bool)


def _setup(seed=0, round_num=1, dropout_fraction=0.3, threshold=None,
           ids=_IDS, part=_PART):
  return secagg_protocol.round_setup(seed, round_num, ids, part,
                                     dropout_fraction, threshold)


def test_shapes_and_dtypes():
  inputs = _setup()
  assert inputs.pair_seeds.shape == (8, 8, 2)
  assert inputs.recovered_pair_seeds.shape == (8, 8, 2)
  assert inputs.self_seeds.shape == (8, 2)
  assert inputs.recovered_self_seeds.shape == (8, 2)
  assert inputs.arrived.shape == (8,)
  assert inputs.arrived.dtype == bool
  for a in (inputs.pair_seeds, inputs.self_seeds, inputs.recovered_pair_seeds,
            inputs.recovered_self_seeds):
    assert a.dtype == np.uint32


def test_dropouts_are_round_of_the_fraction_of_participants():
  """round(0.3 * 7) = 2 participants drop; padding never arrives."""
  inputs = _setup()
  assert inputs.arrived.sum() == 5
  assert not np.any(inputs.arrived & ~_PART)
  assert _setup(dropout_fraction=0.0).arrived.tolist() == _PART.tolist()
  assert _setup(dropout_fraction=0.5, threshold=3).arrived.sum() == 7 - 4


def test_pair_seeds_are_symmetric_and_zero_off_the_participants():
  inputs = _setup()
  seeds = inputs.pair_seeds
  np.testing.assert_array_equal(seeds, seeds.transpose(1, 0, 2))
  np.testing.assert_array_equal(seeds[np.arange(8), np.arange(8)], 0)
  np.testing.assert_array_equal(seeds[5], 0)
  np.testing.assert_array_equal(seeds[:, 5], 0)
  np.testing.assert_array_equal(inputs.self_seeds[5], 0)
  # The 21 pairs of participants all have distinct 64-bit secrets.
  upper = [tuple(seeds[i, j]) for i in range(8) for j in range(i + 1, 8)
           if _PART[i] and _PART[j]]
  assert len(upper) == 21
  assert len(set(upper)) == 21
  assert len({tuple(s) for s in inputs.self_seeds[_PART]}) == 7


def test_recovered_seeds_equal_the_true_ones_on_the_read_entries():
  """The server recovers pair secrets [arrived i, dropped j] and the self
  seeds of the arrived clients, and nothing else."""
  inputs = _setup()
  arrived = inputs.arrived
  dropped = _PART & ~arrived
  assert dropped.sum() == 2
  read = arrived[:, None] & dropped[None, :]
  np.testing.assert_array_equal(inputs.recovered_pair_seeds[read],
                                inputs.pair_seeds[read])
  np.testing.assert_array_equal(inputs.recovered_pair_seeds[~read], 0)
  np.testing.assert_array_equal(inputs.recovered_self_seeds[arrived],
                                inputs.self_seeds[arrived])
  np.testing.assert_array_equal(inputs.recovered_self_seeds[~arrived], 0)


def test_recovered_seeds_come_from_the_shamir_reconstruction(monkeypatch):
  """If the shares need one more holder than the server collects (a broken
  sharing), the recovered seeds are wrong, not copied from the truth."""
  split = shamir.split

  def one_too_high(secret, xs, threshold, rng):
    return split(secret, xs, threshold + 1, rng)

  monkeypatch.setattr(secagg_protocol.shamir, 'split', one_too_high)
  broken = _setup()
  monkeypatch.setattr(secagg_protocol.shamir, 'split', split)
  good = _setup()
  np.testing.assert_array_equal(broken.pair_seeds, good.pair_seeds)
  arrived = good.arrived
  read = arrived[:, None] & (_PART & ~arrived)[None, :]
  assert np.all(np.any(broken.recovered_pair_seeds[read]
                       != good.pair_seeds[read], axis=-1))
  assert np.all(np.any(broken.recovered_self_seeds[arrived]
                       != good.self_seeds[arrived], axis=-1))


def test_deterministic_in_seed_and_round():
  a, b = _setup(seed=3, round_num=7), _setup(seed=3, round_num=7)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  other_round = _setup(seed=3, round_num=8)
  other_seed = _setup(seed=4, round_num=7)
  for other in (other_round, other_seed):
    assert not np.array_equal(a.pair_seeds, other.pair_seeds)
    assert not np.array_equal(a.self_seeds, other.self_seeds)


def test_too_many_dropouts_raise_the_threshold_error():
  """5 of 7 arrive (0.3 dropped): threshold 6 cannot be met."""
  with pytest.raises(secagg_protocol.SecAggThresholdError,
                     match=r'only 5 of 7 .* threshold t = 6.*Lower '
                     r'dropout_fraction \(now 0.3\) or threshold \(now 6\)'
                     ) as error:
    _setup(threshold=6)
  assert error.value.setting == 'secure_aggregation.dropout_fraction'
  assert _setup(threshold=5).arrived.sum() == 5
  # Default threshold 7 // 2 + 1 = 4: 0.5 leaves 3 survivors, too few.
  with pytest.raises(secagg_protocol.SecAggThresholdError,
                     match='only 3 of 7'):
    _setup(dropout_fraction=0.5)
  assert issubclass(secagg_protocol.SecAggThresholdError, ValueError)


@pytest.mark.parametrize('kwargs, match', [
    ({'threshold': 0}, r'threshold must be in \[1, 7\]'),
    ({'threshold': 8}, r'threshold must be in \[1, 7\]'),
    ({'dropout_fraction': 1.0}, r'dropout_fraction must be in \[0, 1\)'),
    ({'dropout_fraction': -0.1}, r'dropout_fraction must be in \[0, 1\)'),
    ({'part': np.zeros(8, bool)}, 'at least one participant'),
    ({'ids': np.array([1, 1, 2, 3, 4, 5, 6, 7])}, 'distinct'),
])
def test_refuses_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match) as error:
    _setup(**kwargs)
  if 'threshold' in kwargs or 'dropout_fraction' in kwargs:
    assert error.value.setting == (
        f'secure_aggregation.{next(iter(kwargs))}')


def test_padding_slots_may_repeat_ids():
  """Only participants need distinct ids (padding slots often repeat 0)."""
  ids = np.array([5, 0, 0, 9], np.int32)
  part = np.array([1, 1, 0, 1], bool)
  inputs = _setup(ids=ids, part=part, dropout_fraction=0.0)
  assert inputs.arrived.tolist() == [True, True, False, True]


def test_check_threshold_by_hand():
  """5 participants, 40% drop: round(2.0) = 2 drop, 3 survive. The default
  t is a majority, 5 // 2 + 1 = 3."""
  assert secagg_protocol.check_threshold(5, 0.4, None) == 3
  assert secagg_protocol.check_threshold(5, 0.4, 2) == 2
  with pytest.raises(secagg_protocol.SecAggThresholdError,
                     match='only 3 of 5 participating clients survive'):
    secagg_protocol.check_threshold(5, 0.4, 4)
  with pytest.raises(ValueError, match=r'must be in \[1, 5\]'):
    secagg_protocol.check_threshold(5, 0.0, 6)
