"""scripts/attack_eval.py from the command line (subprocesses: slow)."""

import csv
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

_SMALL = ('--num_clients=10', '--clients_per_round=4', '--num_rounds=2')


def _attack_eval(tmp_path, *args):
  return subprocess.run(
      [sys.executable, '-m', 'scripts.attack_eval', *_SMALL,
       f'--out_dir={tmp_path}', *args], capture_output=True, text=True,
      timeout=600)


def test_backdoor_table_is_written_as_markdown_and_csv(tmp_path):
  done = _attack_eval(tmp_path, '--attack=backdoor', '--variants=boosted',
                      '--defences=none,clip:0.1')
  assert done.returncode == 0, done.stderr[-2000:]
  table = (tmp_path / 'backdoor.md').read_text().splitlines()
  assert table[0] == '| backdoor (asr; clean accuracy) | none | clip:0.1 |'
  assert table[2].startswith('| boosted | ')
  rows = list(csv.DictReader(open(tmp_path / 'backdoor.csv')))
  assert [r['defence'] for r in rows] == ['none', 'clip:0.1']
  for row in rows:
    assert 0 <= float(row['asr']) <= 1
    assert 0 <= float(row['clean_accuracy']) <= 1
  assert 'boosted / clip:0.1: ' in done.stdout


def test_inversion_writes_the_image_grid(tmp_path):
  done = _attack_eval(tmp_path, '--attack=inversion', '--defences=none',
                      '--inversion_iterations=3', '--inversion_restarts=1')
  assert done.returncode == 0, done.stderr[-2000:]
  assert (tmp_path / 'inversion.png').read_bytes()[:4] == b'\x89PNG'
  rows = list(csv.DictReader(open(tmp_path / 'inversion.csv')))
  assert rows[0]['variant'] == 'ig' and float(rows[0]['psnr']) > 0


@pytest.mark.parametrize('flag, message', [
    ('--defences=none,shuffle', "--defences: Unknown defence 'shuffle'"),
    ('--variants=lira', 'lira: not a variant of the inversion attack'),
])
def test_bad_flags_name_the_flag_and_the_valid_values(tmp_path, flag,
                                                      message):
  done = _attack_eval(tmp_path, '--attack=inversion', flag)
  assert done.returncode != 0
  assert message in done.stderr
