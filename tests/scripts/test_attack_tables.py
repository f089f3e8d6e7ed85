"""The attack tables' defences, views and reports (scripts/attack_tables)."""

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.errors import SettingError
from scripts.attack_tables import backdoor
from scripts.attack_tables import defences
from scripts.attack_tables import inversion
from scripts.attack_tables import membership
from scripts.attack_tables import report
from scripts.attack_tables import training


@pytest.mark.parametrize('spec, message', [
    ('shuffle', 'Unknown defence'),
    ('dp', 'needs its noise multiplier'),
    ('dp:-1', 'must be positive'),
    ('median:3', 'takes no value'),
    ('topk:1.5', r'in \(0, 1\]'),
    ('steps:2.5', 'a positive integer'),
])
def test_bad_defences_are_named_with_the_fix(spec, message):
  with pytest.raises(SettingError, match=message):
    defences.parse_defence(spec)


def test_defences_set_the_simulation_fields_they_name():
  fields = lambda spec: defences.simulation_fields(
      defences.parse_defence(spec), dp_clip_norm=0.7)
  dp = fields('dp:1.5')['client_dp']
  assert (dp.clip_norm, dp.noise_multiplier) == (0.7, 1.5)
  assert fields('clip:0.5') == {'norm_bound': 0.5}
  assert fields('secagg')['secure_aggregation'].bits == 32
  assert fields('median')['robust'].rule == 'median'
  assert fields('topk:0.1')['uplink'].fraction == 0.1
  assert fields('steps:5') == {'local_steps': 5}
  assert fields('batch:4') == {'batch_size': 4}
  assert fields('none') == {}
  assert defences.parse_defence('dp:1').label == 'dp:1'


def _cohort():
  rng = np.random.default_rng(0)
  return {'w': rng.normal(size=(3, 40, 5)).astype(np.float32),
          'b': rng.normal(size=(3, 5)).astype(np.float32)}


def _view(spec, messages, key=0, clip=1.0):
  return jax.tree.map(np.asarray, defences.observed_message(
      defences.parse_defence(spec), jax.tree.map(jnp.asarray, messages),
      jax.random.key(key), dp_clip_norm=clip))


def _norm(tree):
  return np.sqrt(sum(np.sum(np.square(v)) for v in tree.values()))


def test_the_server_sees_the_victim_or_only_the_cohort_sum():
  messages = _cohort()
  for spec in ('none', 'median', 'steps:3', 'batch:2'):
    view = _view(spec, messages)
    np.testing.assert_array_equal(view['w'], messages['w'][0])
  view = _view('secagg', messages)
  np.testing.assert_allclose(view['w'], messages['w'].sum(0), rtol=1e-6)
  np.testing.assert_allclose(view['b'], messages['b'].sum(0), rtol=1e-6)


def test_clipping_and_dp_views_against_numpy():
  messages = _cohort()
  victim = {k: v[0] for k, v in messages.items()}
  norm = _norm(victim)
  clipped = _view('clip:0.5', messages)
  np.testing.assert_allclose(clipped['w'], victim['w'] * 0.5 / norm,
                             rtol=1e-5)
  # DP: the clipped message plus N(0, (z S)^2) on every coordinate.
  noisy = _view('dp:2', messages, clip=0.5)
  noise = np.concatenate([(noisy[k] - clipped[k]).ravel() for k in victim])
  assert noise.size == 205
  assert 0.8 < np.std(noise) / (2 * 0.5) < 1.2
  assert abs(np.mean(noise)) < 0.2


def test_topk_view_keeps_the_largest_tenth_of_each_layer():
  messages = _cohort()
  view = _view('topk:0.1', messages)
  kept = np.flatnonzero(view['w'].ravel())
  assert len(kept) == 20
  largest = np.argsort(-np.abs(messages['w'][0].ravel()))[:20]
  assert set(kept) == set(largest)


def test_markdown_and_csv_hold_every_cell(tmp_path):
  cells = [report.Cell('membership', 'lira', 'none', 0.9,
                       {'auc': 0.81, 'tpr_at_1%_fpr': 0.1}),
           report.Cell('membership', 'lira', 'dp:1', 0.7,
                       {'auc': 0.52, 'tpr_at_1%_fpr': 0.01}),
           report.Cell('membership', 'loss', 'none', 0.9, {'auc': 0.6})]
  md_path, csv_path = report.write_tables(cells, 'auc', str(tmp_path), 'mia')
  assert open(md_path).read().splitlines() == [
      '| membership (auc; clean accuracy) | none | dp:1 |',
      '| --- | --- | --- |',
      '| lira | 0.81 (acc 0.900) | 0.52 (acc 0.700) |',
      '| loss | 0.6 (acc 0.900) |  |']
  rows = list(csv.reader(open(csv_path)))
  assert rows[0] == ['attack', 'variant', 'defence', 'clean_accuracy', 'auc',
                     'tpr_at_1%_fpr']
  assert rows[3] == ['membership', 'loss', 'none', '0.9', '0.6', '']


def test_image_grid_is_a_png(tmp_path):
  x = np.random.default_rng(0).uniform(size=(2, 8, 8, 1))
  path = tmp_path / 'grid.png'
  report.write_image_grid({'ig / none': (x, x[::-1]), 'ig / dp:1': (x, x)},
                          str(path))
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


# A small FedAvg setup: 3 rounds of 4 clients of 10.
_SMALL = training.Setup(num_clients=10, clients_per_round=4, num_rounds=3)


def test_inversion_cell_recovers_the_image_without_defence_not_under_dp():
  attack = inversion.InversionSetup(iterations=150, restarts=2)
  clear, x, reconstructed = inversion.attack_cell(
      _SMALL, attack, 'ig', defences.parse_defence('none'))
  noisy, _, _ = inversion.attack_cell(_SMALL, attack, 'ig',
                                      defences.parse_defence('dp:1'))
  assert x.shape == reconstructed.shape == (1, 8, 8, 1)
  assert clear.metrics['psnr'] > 30 and clear.metrics['label_accuracy'] == 1
  assert noisy.metrics['psnr'] < 15
  # The reported PSNR is the PSNR of the image returned.
  mse = np.mean((x - reconstructed)**2)
  np.testing.assert_allclose(clear.metrics['psnr'], 10 * np.log10(1 / mse),
                             rtol=1e-3)
  assert 0 < clear.clean_accuracy <= 1


def test_inversion_under_secagg_faces_the_whole_cohort():
  attack = inversion.InversionSetup(iterations=5, restarts=1)
  cell, x, reconstructed = inversion.attack_cell(
      _SMALL, attack, 'ig', defences.parse_defence('secagg'))
  assert x.shape == reconstructed.shape == (4, 8, 8, 1)
  assert set(cell.metrics) == {'psnr', 'ssim', 'label_accuracy'}


def test_membership_cells_score_every_variant_per_defence():
  attack = membership.MembershipSetup(num_runs=4, pool_size=40,
                                      local_steps=5, batch_size=4)
  cells = list(membership.cells(
      _SMALL, [defences.parse_defence('none'), defences.parse_defence('dp:1')],
      ['loss', 'lira', 'lira_offline', 'client_update'], attack))
  assert [(c.variant, c.defence) for c in cells] == [
      (v, d) for d in ('none', 'dp:1')
      for v in ('loss', 'lira', 'lira_offline', 'client_update')]
  for cell in cells:
    assert set(cell.metrics) == {'auc', 'tpr_at_0.1%_fpr', 'tpr_at_1%_fpr'}
    assert 0 <= cell.metrics['auc'] <= 1 and 0 <= cell.clean_accuracy <= 1


def test_backdoor_cells_report_each_targets_success():
  cells = list(backdoor.cells(_SMALL, [defences.parse_defence('none')],
                              ['two_targets'], boost=5.0))
  (cell,) = cells
  asr = cell.metrics
  assert set(asr) == {'asr', 'backdoor_asr_7', 'backdoor_asr_1'}
  np.testing.assert_allclose(
      asr['asr'], (asr['backdoor_asr_7'] + asr['backdoor_asr_1']) / 2)


def test_backdoor_variants_plant_what_they_say():
  of = lambda v: backdoor.backdoor_of(v, boost=3.0, seed=0)
  assert of('blend').trigger == 'blend'
  assert of('dba').dba_parts == 4
  assert (of('boosted').boost, of('boosted').num_attackers) == (3.0, 2)
  assert of('two_targets').targets == (7, 1)
  assert of('pattern').boost == 1.0
