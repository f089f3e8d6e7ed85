"""fedjax_core/channel/backdoor.py and engine/backdoor_evaluation.py:
triggers against hand-worked arrays, the poison hook and the boost on
small cohorts, the ASR evaluator with a fake model, and a pattern backdoor
on digits with and without norm bounding."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import algorithms
from fedjax_core.channel import assembly
from fedjax_core.channel import attacks
from fedjax_core.channel import backdoor as bd
from fedjax_core.channel.stage import Chain, Packet, RoundContext
from fedjax_core.data import datasets
from fedjax_core.engine import simulation
from fedjax_core.engine.backdoor_evaluation import BackdoorEvaluator
from fedjax_core.errors import SettingError
import models

SHAPE = (8, 8, 1)


def _ctx(client_ids, is_real=None):
  ids = jnp.asarray(client_ids, jnp.int32)
  real = jnp.ones(len(client_ids), bool) if is_real is None else jnp.asarray(
      is_real)
  return RoundContext(ids, real, real, None, None)


def test_pattern_sets_the_bottom_right_square_to_one():
  x = np.full((2,) + SHAPE, 0.25, np.float32)
  out = np.asarray(bd.pattern(jnp.asarray(x)))
  expected = x.copy()
  expected[:, 5:8, 5:8, :] = 1.0  # side max(3, 8 // 8) = 3, margin 0.
  np.testing.assert_array_equal(out, expected)


def test_pattern_corners_and_margin_on_larger_images():
  # 32x32: side 32 // 8 = 4, margin 32 // 16 = 2; target 1 is top left.
  masks = bd.trigger_parts('pattern', (32, 32, 3), target_index=1)[0]
  expected = np.zeros((32, 32), bool)
  expected[2:6, 2:6] = True
  np.testing.assert_array_equal(masks, expected)
  bottom_left = bd.trigger_parts('pattern', (32, 32, 3), target_index=3)[0]
  assert np.argwhere(bottom_left).tolist()[0] == [26, 2]


def test_blend_formula():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(3,) + SHAPE).astype(np.float32)
  p = bd.blend_values(SHAPE, seed=5)
  assert p.shape == SHAPE and 0 <= p.min() and p.max() <= 1
  out = np.asarray(bd.blend(jnp.asarray(x), alpha=0.2, seed=5))
  np.testing.assert_allclose(out, 0.8 * x + 0.2 * p[None], rtol=1e-6)
  assert not np.allclose(bd.blend_values(SHAPE, seed=6), p)


def test_dba_parts_are_disjoint_and_make_up_the_whole_trigger():
  parts = bd.trigger_parts('pattern', SHAPE, parts=4)
  whole = bd.trigger_parts('pattern', SHAPE)[0]
  assert parts.sum(axis=(1, 2)).tolist() == [3, 2, 2, 2]  # 9 pixels.
  np.testing.assert_array_equal(parts.any(axis=0), whole)
  assert parts.sum(axis=0).max() == 1  # Disjoint.
  # Raster order: part 0 is the square's first row, part 1 starts the next.
  assert np.argwhere(parts[0]).tolist() == [[5, 5], [5, 6], [5, 7]]
  assert np.argwhere(parts[1]).tolist() == [[6, 5], [6, 6]]
  halves = bd.trigger_parts('blend', SHAPE, parts=2)
  assert halves[0, :4].all() and not halves[0, 4:].any()
  x = jnp.zeros((1,) + SHAPE)
  one_part = np.asarray(bd.pattern(x, parts=4, part=2))[0, ..., 0]
  np.testing.assert_array_equal(one_part == 1.0, parts[2])


@pytest.mark.parametrize('kwargs, field', [
    (dict(trigger='cross'), 'backdoor.trigger'),
    (dict(targets=(1, 1)), 'backdoor.targets'),
    (dict(targets=()), 'backdoor.targets'),
    (dict(targets=(0, 1, 2, 3, 4), num_attackers=5), 'backdoor.targets'),
    (dict(targets=(0, 1), num_attackers=1), 'backdoor.num_attackers'),
    (dict(dba_parts=4, num_attackers=3), 'backdoor.num_attackers'),
    (dict(dba_parts=0), 'backdoor.dba_parts'),
    (dict(poison_fraction=0.0), 'backdoor.poison_fraction'),
    (dict(boost=0.0), 'backdoor.boost'),
    (dict(blend_alpha=1.5), 'backdoor.blend_alpha'),
])
def test_bad_settings_are_refused(kwargs, field):
  with pytest.raises(SettingError) as info:
    bd.Backdoor(**kwargs)
  assert info.value.setting == field


def test_stages_refuse_non_class_labels_bad_targets_and_shapes():
  with pytest.raises(SettingError, match='class label per example'):
    bd.backdoor_stages(bd.Backdoor(), 10, SHAPE, num_classes=None)
  with pytest.raises(SettingError, match=r'classes in \[0, 5\)'):
    bd.backdoor_stages(bd.Backdoor(targets=(7,)), 10, SHAPE, num_classes=5)
  with pytest.raises(SettingError, match='images'):
    bd.backdoor_stages(bd.Backdoor(), 10, (64,), num_classes=10)
  with pytest.raises(SettingError, match='exceed the population'):
    bd.backdoor_stages(bd.Backdoor(num_attackers=3), 2, SHAPE, 10)
  with pytest.raises(SettingError, match='fewer than 12 parts'):
    bd.backdoor_stages(bd.Backdoor(dba_parts=12, num_attackers=12), 20,
                       SHAPE, 10)


def test_attackers_are_a_fixed_seeded_set():
  backdoor = bd.Backdoor(num_attackers=3, seed=1)
  ids = backdoor.attackers(20)
  assert len(set(ids.tolist())) == 3 and list(ids) == sorted(ids)
  np.testing.assert_array_equal(ids, backdoor.attackers(20))


def _poisoned(backdoor, client, x, y, num_clients=6):
  client_stage, _ = bd.backdoor_stages(backdoor, num_clients, SHAPE, 10)
  rows = Chain((client_stage,)).client_inputs(_ctx([client]))
  return Chain((client_stage,)).poison((rows[0][0],), x, y)


def test_poison_stamps_round_fraction_of_an_attackers_batch_only():
  backdoor = bd.Backdoor(targets=(7,), num_attackers=2, poison_fraction=0.3)
  attackers = backdoor.attackers(6).tolist()
  honest = next(c for c in range(6) if c not in attackers)
  x = jnp.asarray(np.random.default_rng(0).uniform(size=(10,) + SHAPE),
                  jnp.float32)
  y = jnp.arange(10, dtype=jnp.int32)
  px, py = _poisoned(backdoor, attackers[0], x, y)
  changed = np.any(np.asarray(px) != np.asarray(x), axis=(1, 2, 3))
  assert changed.tolist() == [True] * 3 + [False] * 7  # round(0.3 * 10).
  np.testing.assert_array_equal(px[:3], bd.pattern(x[:3]))
  assert py.tolist() == [7, 7, 7, 3, 4, 5, 6, 7, 8, 9]
  hx, hy = _poisoned(backdoor, honest, x, y)
  np.testing.assert_array_equal(hx, x)  # Bit-identical.
  np.testing.assert_array_equal(hy, y)


def test_poison_targets_and_dba_parts_by_attacker_index():
  # Attacker j: target j mod 2; part (j // 2) mod 2.
  backdoor = bd.Backdoor(targets=(7, 1), num_attackers=4, dba_parts=2,
                         poison_fraction=1.0)
  ids = backdoor.attackers(8).tolist()
  x, y = jnp.zeros((2,) + SHAPE), jnp.zeros(2, jnp.int32)
  expected = [(7, 0, 0), (1, 1, 0), (7, 0, 1), (1, 1, 1)]  # target, t, part
  for j, (target, t, part) in enumerate(expected):
    px, py = _poisoned(backdoor, ids[j], x, y, num_clients=8)
    assert py.tolist() == [target, target]
    mask = bd.trigger_parts('pattern', SHAPE, 2, target_index=t)[part]
    np.testing.assert_array_equal(np.asarray(px[0, ..., 0]) == 1.0, mask)


def test_boost_scales_only_real_attacker_rows():
  backdoor = bd.Backdoor(num_attackers=2, boost=3.0)
  attackers = backdoor.attackers(6).tolist()
  honest = [c for c in range(6) if c not in attackers]
  ids = [attackers[0], honest[0], attackers[1], honest[1]]
  _, cohort = bd.backdoor_stages(backdoor, 6, SHAPE, 10)
  message = {'w': jnp.arange(8.0).reshape(4, 2) + 0.1}
  packets = Packet(message, jnp.ones(4), {})
  out, _, metrics = cohort.apply((), packets, _ctx(
      ids, [True, True, False, True]))  # The second attacker only pads.
  w = np.asarray(message['w'])
  np.testing.assert_array_equal(out.message['w'], np.stack(
      [3 * w[0], w[1], w[2], w[3]]))
  assert float(metrics['backdoor_attackers']) == 1.0


def test_triggered_test_set_leaves_out_the_target_class():
  x = np.zeros((5,) + SHAPE, np.uint8)
  x[:, 0, 0, 0] = 255
  y = np.array([7, 0, 7, 1, 2])
  sets = bd.triggered_test_set(bd.Backdoor(targets=(7, 1), num_attackers=2),
                               x, y)
  assert sets[7].shape == (3,) + SHAPE and sets[1].shape == (4,) + SHAPE
  assert sets[7].dtype == np.float32
  assert sets[7][:, 5:, 5:].min() == 1.0 and sets[7][:, 0, 0, 0].max() == 1.0
  assert sets[7][:, 3, 3].max() == 0.0
  assert sets[1][:, :3, :3].min() == 1.0 and sets[1][:, 5:, 5:].max() == 0.0


def _fake_apply(params, x):
  """Class 7 if the bottom-right trigger is on and pixel (4, 4) is off;
  else class 1 if the top-left trigger is on and pixels (4, 4) and (3, 3)
  are off; else class 0."""
  del params
  free = x[:, 4, 4, 0] < 0.5
  seven = (x[:, 7, 7, 0] == 1) & free
  one = (x[:, 0, 0, 0] == 1) & free & (x[:, 3, 3, 0] < 0.5)
  label = jnp.where(seven, 7, jnp.where(one, 1, 0))
  return jax.nn.one_hot(label, 10) * 10.0


def test_asr_evaluator_on_a_hand_computed_case():
  y = np.array([7, 1, 0, 2])
  x = np.zeros((4,) + SHAPE, np.float32)
  x[2, 4, 4, 0] = 1.0  # Label 0 resists both triggers.
  x[3, 3, 3, 0] = 1.0  # Label 2 resists the top-left one.
  evaluator = BackdoorEvaluator(
      _fake_apply, bd.Backdoor(targets=(7, 1), num_attackers=2), x, y,
      batch_size=2)
  metrics = evaluator({})
  # Target 7 on labels 1, 0, 2: hit, miss, hit. Target 1 on labels 7, 0, 2:
  # hit, miss, miss.
  assert metrics['backdoor_asr_7'] == pytest.approx(2 / 3)
  assert metrics['backdoor_asr_1'] == pytest.approx(1 / 3)
  assert metrics['backdoor_asr'] == pytest.approx(0.5)
  assert BackdoorEvaluator(_fake_apply, None, x, y)({}) == {}


def test_chain_order_puts_boost_before_the_norm_bound():
  chain = assembly.build_chain(
      attack=attacks.Attack('label_flip'), num_classes=10,
      backdoor=bd.Backdoor(boost=2.0), norm_bound=1.0, num_clients=10,
      example_shape=SHAPE)
  assert [s.name for s in chain.stages] == [
      'label flip', 'pattern backdoor', 'label_flip attack',
      'backdoor boost', 'norm bound', 'mean']
  assert chain.poisons


def test_config_validation():
  with pytest.raises(SettingError, match='norm bound'):
    simulation.SimulationConfig(1, 1, 1, norm_bound=0.0).validate()
  with pytest.raises(SettingError, match='exceed the population'):
    simulation.SimulationConfig(1, 1, 1, backdoor=bd.Backdoor(
        num_attackers=4)).validate(num_clients=3)


def _digits_asr(norm_bound):
  dataset = datasets.load_dataset('digits', num_clients=20, seed=0,
                                  partition='iid')
  model = models.get_model('mlp', dataset.example_shape, dataset.num_classes)
  algorithm = algorithms.build_algorithm('fedavg', model.apply,
                                         num_clients=20, client_lr=0.1)
  config = simulation.SimulationConfig(
      num_rounds=15, clients_per_round=10, batch_size=16, eval_every=0,
      progress=False, norm_bound=norm_bound,
      backdoor=bd.Backdoor(targets=(7,), num_attackers=2, boost=5.0))
  sim = simulation.Simulation(algorithm, model, dataset, config)
  sim.run()
  return sim.history[-1]


@pytest.mark.slow
def test_pattern_backdoor_on_digits_and_norm_bounding():
  """Two of 20 clients plant a pattern backdoor with model replacement
  (boost 5): > 90% success in 15 rounds; a norm bound near the honest
  updates' norms takes the boost away and the success with it."""
  start = time.perf_counter()
  attacked = _digits_asr(None)
  bounded = _digits_asr(0.3)
  elapsed = time.perf_counter() - start
  assert attacked['backdoor_asr'] > 0.9
  assert attacked['test_accuracy'] > 0.8
  assert bounded['backdoor_asr'] < attacked['backdoor_asr'] - 0.5
  assert bounded['test_accuracy'] > 0.8
  assert 'norm_bound_clipped' in bounded
  assert elapsed < 30
