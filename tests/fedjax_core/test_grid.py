"""fedjax_core.experiments.grid: expansion, validation, keys, sharding and launch plans."""

import json
import os

import pytest

from fedjax_core.experiments import grid

SPEC = {'base': {'dataset': 'synthetic', 'num_rounds': 20},
        'grid': {'algorithm': ['fedavg', 'fedprox'],
                 'client_lr': [0.01, 0.1], 'seed': [0, 1, 2]}}


def _flags(units):
  return [u.flags for u in units]


def test_product_expands_in_key_order_last_key_fastest():
  configs = grid.expand_configs(SPEC)
  assert len(configs) == 12
  assert configs[:4] == [
      {'dataset': 'synthetic', 'num_rounds': 20, 'algorithm': 'fedavg',
       'client_lr': 0.01, 'seed': s} for s in (0, 1, 2)] + [
      {'dataset': 'synthetic', 'num_rounds': 20, 'algorithm': 'fedavg',
       'client_lr': 0.1, 'seed': 0}]
  assert grid.expand_configs(SPEC) == configs


def test_units_group_the_seeds_of_each_configuration():
  units = grid.expand_grid(SPEC)
  base = {'dataset': 'synthetic', 'num_rounds': 20}
  assert _flags(units) == [
      {**base, 'algorithm': a, 'client_lr': lr}
      for a in ('fedavg', 'fedprox') for lr in (0.01, 0.1)]
  assert [u.seeds for u in units] == [(0, 1, 2)] * 4
  assert [u.label for u in units] == [
      'algorithm=fedavg,client_lr=0.01', 'algorithm=fedavg,client_lr=0.1',
      'algorithm=fedprox,client_lr=0.01', 'algorithm=fedprox,client_lr=0.1']
  assert [u.key for u in units] == [grid.config_hash(u.flags) for u in units]


def test_list_of_subgrids_is_the_union_of_their_products():
  spec = {'base': {'model': 'logreg'},
          'grid': [{'algorithm': ['fedavg'], 'seed': [0, 1]},
                   {'algorithm': ['fedprox'], 'hparams': ['mu=0.01',
                                                          'mu=0.1']}]}
  units = grid.expand_grid(spec)
  assert _flags(units) == [
      {'model': 'logreg', 'algorithm': 'fedavg'},
      {'model': 'logreg', 'algorithm': 'fedprox', 'hparams': 'mu=0.01'},
      {'model': 'logreg', 'algorithm': 'fedprox', 'hparams': 'mu=0.1'}]
  assert [u.seeds for u in units] == [(0, 1), (0,), (0,)]
  assert [u.label for u in units] == [
      'algorithm=fedavg', 'algorithm=fedprox,hparams=mu=0.01',
      'algorithm=fedprox,hparams=mu=0.1']


def test_subgrids_giving_one_configuration_merge_their_seeds():
  spec = {'grid': [{'algorithm': ['fedavg'], 'seed': [3, 0]},
                   {'algorithm': ['fedavg', 'fedyogi'], 'seed': [1, 3]}]}
  units = grid.expand_grid(spec)
  assert _flags(units) == [{'algorithm': 'fedavg'}, {'algorithm': 'fedyogi'}]
  assert [u.seeds for u in units] == [(0, 1, 3), (1, 3)]


def test_base_seed_is_the_one_seed_and_zero_without_it():
  (unit,) = grid.expand_grid({'base': {'model': 'mlp', 'seed': 7}})
  assert unit.flags == {'model': 'mlp'} and unit.seeds == (7,)
  assert unit.label == 'base'
  (unit,) = grid.expand_grid({'base': {'model': 'mlp'}})
  assert unit.seeds == (0,)


def test_base_and_grid_merge_in_key_order():
  units = grid.expand_grid({'base': {'b': 1, 'a': 2},
                            'grid': {'c': [True, False]}})
  assert _flags(units) == [{'b': 1, 'a': 2, 'c': True},
                           {'b': 1, 'a': 2, 'c': False}]
  assert [u.label for u in units] == ['c=true', 'c=false']


@pytest.mark.parametrize('spec, message', [
    ([1, 2], 'A grid spec is a dict'),
    ({'base': {}, 'grids': {}}, "Unknown top-level key(s) ['grids']"),
    ({'base': [1]}, '"base" maps flag names to values'),
    ({'grid': 'x'}, '"grid" is a dict of value lists or a list'),
    ({'grid': []}, '"grid" is an empty list'),
    ({'grid': [{'a': [1]}, 3]}, 'grid[1] is a dict from flag name'),
    ({'grid': {'client_lr': 0.1}}, 'grid["client_lr"] is 0.1, not a list; '
     'write [0.1]'),
    ({'grid': [{'a': [1]}, {'b': []}]}, 'grid[1]["b"] is an empty list'),
    ({'base': {'a': 1}, 'grid': {'a': [2]}},
     '"a" is set in both base and grid; keep it in one'),
    ({'grid': {'client-lr': [1]}}, "grid key 'client-lr' is not a flag name"),
    ({'base': {'--seed': 1}}, "base key '--seed' is not a flag name"),
    ({'base': {'workdir': '/tmp'}}, 'base sets "workdir", which the sweep '
     'owns'),
    ({'grid': {'num_seeds': [2]}}, 'grid sets "num_seeds", which the sweep '
     'owns'),
    ({'base': {'vmapped_hparam': 'client_lr=0.1:0.2'}}, 'base sets '
     '"vmapped_hparam", which the sweep owns'),
    ({'grid': {'seed': [0, -1]}}, 'grid seed -1 is not a non-negative'),
    ({'base': {'seed': 1.5}}, 'base seed 1.5 is not a non-negative'),
    ({'base': {'server_lr': None}}, 'leave the flag out'),
    ({'grid': {'x': [{'a': 1}]}}, 'is not a bool, number, string or list'),
    ({'grid': {'algorithm': ['fedavg,fedprox']}}, 'names several algorithms'),
])
def test_rejects_malformed_specs(spec, message):
  with pytest.raises(ValueError) as error:
    grid.expand_grid(spec)
  assert message in str(error.value)


def test_load_grid_reads_json_and_python(tmp_path):
  json_path = tmp_path / 'g.json'
  json_path.write_text(json.dumps(SPEC))
  py_path = tmp_path / 'g.py'
  py_path.write_text(f'GRID = {SPEC!r}\n')
  assert grid.load_grid(str(json_path)) == SPEC
  assert grid.load_grid(str(py_path)) == SPEC


@pytest.mark.parametrize('name, text, message', [
    ('g.yaml', 'base: {}', 'a grid file is .json, or .py defining GRID'),
    ('g.json', '{"base": ', 'is not valid JSON'),
    ('g.py', 'SPEC = {}', 'defines no GRID'),
])
def test_load_grid_errors(tmp_path, name, text, message):
  path = tmp_path / name
  path.write_text(text)
  with pytest.raises(ValueError, match=message):
    grid.load_grid(str(path))


def test_hash_ignores_key_order_and_seed():
  a = {'algorithm': 'fedavg', 'client_lr': 0.1, 'num_rounds': 20}
  b = {'num_rounds': 20, 'client_lr': 0.1, 'algorithm': 'fedavg'}
  key = grid.config_hash(a)
  assert len(key) == 12 and int(key, 16) >= 0
  assert grid.config_hash(b) == key
  assert grid.config_hash({**a, 'seed': 3}) == key


@pytest.mark.parametrize('change', [
    {'client_lr': 0.01}, {'algorithm': 'fedprox'}, {'num_rounds': '20'},
    {'extra': True}, {'client_lr': [0.1]}])
def test_hash_changes_with_any_other_flag(change):
  a = {'algorithm': 'fedavg', 'client_lr': 0.1, 'num_rounds': 20}
  assert grid.config_hash({**a, **change}) != grid.config_hash(a)


def test_hash_changes_without_a_flag():
  a = {'algorithm': 'fedavg', 'client_lr': 0.1}
  assert grid.config_hash({'algorithm': 'fedavg'}) != grid.config_hash(a)


def test_flag_args_format_values():
  assert grid.flag_args({'a': True, 'b': False, 'c': 0.1, 'd': 1e-05,
                         'e': 3, 'f': ['x', 'y'], 'g': '', 'h': 'mu=0.1'}) \
      == ['--a=true', '--b=false', '--c=0.1', '--d=1e-05', '--e=3',
          '--f=x,y', '--g=', '--h=mu=0.1']


@pytest.mark.parametrize('num_tasks', [1, 2, 3, 5, 13])
def test_tasks_partition_the_units(num_tasks):
  units = grid.expand_grid({'grid': {'a': list(range(4)),
                                     'b': list(range(3))}})
  shards = [grid.task_units(units, t, num_tasks) for t in range(num_tasks)]
  keys = [u.key for shard in shards for u in shard]
  assert len(keys) == len(set(keys)) == 12
  assert set(keys) == {u.key for u in units}
  assert shards[0][0] == units[0]
  if num_tasks > 1:
    assert shards[1][0] == units[1]


@pytest.mark.parametrize('task_index, num_tasks, message', [
    (0, 0, 'at least 1'), (2, 2, r'in \[0, 2\)'), (-1, 2, r'in \[0, 2\)')])
def test_task_units_rejects_bad_indices(task_index, num_tasks, message):
  with pytest.raises(ValueError, match=message):
    grid.task_units([], task_index, num_tasks)


@pytest.mark.parametrize('seeds, runs', [
    ([], []), ([4], [(4,)]), ([2, 0, 1], [(0, 1, 2)]),
    ([0, 1, 3, 4, 5, 7], [(0, 1), (3, 4, 5), (7,)]),
    ([5, 5, 6], [(5, 6)]), ([0, 2, 4], [(0,), (2,), (4,)])])
def test_consecutive_runs(seeds, runs):
  assert grid.consecutive_runs(seeds) == runs


def test_plan_launches_uses_the_seed_layout_either_way(tmp_path):
  (unit,) = grid.expand_grid({'base': {'model': 'mlp'},
                              'grid': {'seed': [0, 1, 2, 4, 6, 7]}})
  run = os.path.join(str(tmp_path), 'runs', unit.key)
  launches = grid.plan_launches(str(tmp_path), unit, done=[2])
  assert [(x.seeds, x.workdir) for x in launches] == [
      ((0, 1), run), ((4,), os.path.join(run, 'seed_4')), ((6, 7), run)]
  assert [grid.train_args(x) for x in launches] == [
      ['--model=mlp', f'--workdir={run}', '--seed=0', '--num_seeds=2'],
      ['--model=mlp', f'--workdir={run}/seed_4', '--seed=4'],
      ['--model=mlp', f'--workdir={run}', '--seed=6', '--num_seeds=2']]
  assert grid.plan_launches(str(tmp_path), unit, done=unit.seeds) == []


def test_completed_seeds_are_those_with_a_summary(tmp_path):
  (unit,) = grid.expand_grid({'grid': {'seed': [0, 1, 2]}})
  for seed, name in ((0, 'summary.json'), (2, 'metrics.jsonl')):
    path = os.path.join(grid.seed_dir(str(tmp_path), unit, seed), name)
    os.makedirs(os.path.dirname(path))
    open(path, 'w').close()
  assert grid.completed_seeds(str(tmp_path), unit) == [0]


def test_records():
  units = grid.expand_grid(SPEC)
  assert grid.unit_record(units[1]) == {
      'flags': units[1].flags, 'label': 'algorithm=fedavg,client_lr=0.1'}
  record = grid.sweep_record(units)
  assert [u['hash'] for u in record['units']] == [u.key for u in units]
  assert record['units'][0]['seeds'] == [0, 1, 2]
  assert json.loads(json.dumps(record)) == record
