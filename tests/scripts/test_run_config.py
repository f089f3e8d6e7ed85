"""scripts/run_config.py: what a workdir records and which re-runs resume
it."""

import json

import pytest

from scripts import run_config

FLAGS = {'algorithm': ['fedavg'], 'client_lr': 0.05, 'num_rounds': 3,
         'model': 'logreg'}


def test_a_new_workdir_has_no_record_and_write_creates_it(tmp_path):
  workdir = str(tmp_path / 'run')
  assert run_config.check(workdir, FLAGS, allow_change=False) is None
  run_config.write(workdir, FLAGS, None)
  record = run_config.read(workdir)
  assert record['flags'] == FLAGS
  assert record['changes'] == []
  assert record['package_version'] == '0.1.0'
  assert set(record) == {'flags', 'package_version', 'git_commit',
                         'changes'}


def test_same_flags_resume(tmp_path):
  run_config.write(str(tmp_path), FLAGS, None)
  recorded = run_config.check(str(tmp_path), dict(FLAGS), allow_change=False)
  assert recorded['flags'] == FLAGS


def test_a_changed_result_flag_is_refused_even_with_allow(tmp_path):
  run_config.write(str(tmp_path), FLAGS, None)
  for allow in (False, True):
    with pytest.raises(run_config.ConfigChangedError) as e:
      run_config.check(str(tmp_path), {**FLAGS, 'client_lr': 0.1},
                       allow_change=allow)
    message = str(e.value)
    assert '--client_lr: 0.05 -> 0.1' in message
    assert 'use a new --workdir' in message
    assert '--allow_config_change to resume' not in message


def test_a_safe_flag_needs_allow_config_change(tmp_path):
  run_config.write(str(tmp_path), FLAGS, None)
  longer = {**FLAGS, 'num_rounds': 5}
  with pytest.raises(run_config.ConfigChangedError,
                     match='--num_rounds: 3 -> 5.*add --allow_config_change'):
    run_config.check(str(tmp_path), longer, allow_change=False)
  recorded = run_config.check(str(tmp_path), longer, allow_change=True)
  run_config.write(str(tmp_path), longer, recorded)
  record = run_config.read(str(tmp_path))
  assert record['flags']['num_rounds'] == 5
  (change,) = record['changes']
  assert change['flags'] == {'num_rounds': {'old': 3, 'new': 5}}


def test_a_safe_flag_can_be_declared_unsafe(tmp_path):
  run_config.write(str(tmp_path), FLAGS, None)
  with pytest.raises(run_config.ConfigChangedError,
                     match='only --num_rounds cannot change'):
    run_config.check(str(tmp_path), {**FLAGS, 'num_rounds': 5,
                                     'eval_every': 2},
                     allow_change=True,
                     safe=frozenset({'eval_every'}))


def test_a_flag_added_since_counts_as_its_default(tmp_path):
  run_config.write(str(tmp_path), FLAGS, None)
  newer = {**FLAGS, 'new_flag': None}
  assert run_config.check(str(tmp_path), newer, allow_change=False,
                          defaults={'new_flag': None})
  with pytest.raises(run_config.ConfigChangedError,
                     match='--new_flag: unset -> 2'):
    run_config.check(str(tmp_path), {**FLAGS, 'new_flag': 2},
                     allow_change=False, defaults={'new_flag': None})


def test_lists_and_tuples_compare_alike(tmp_path):
  run_config.write(str(tmp_path), FLAGS, None)
  with open(tmp_path / 'flags.json') as f:
    assert json.load(f)['flags']['algorithm'] == ['fedavg']
  assert run_config.check(str(tmp_path), {**FLAGS, 'algorithm': ('fedavg',)},
                          allow_change=False)


def test_a_damaged_record_is_a_clear_error(tmp_path):
  (tmp_path / 'flags.json').write_text('{"flags": {')
  with pytest.raises(ValueError, match='flags.json is not valid JSON'):
    run_config.check(str(tmp_path), FLAGS, allow_change=False)
