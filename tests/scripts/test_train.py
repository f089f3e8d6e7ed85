"""scripts/train.py as a user runs it: outputs, comparison table, resume and
errors on bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import algorithms

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
SMALL = ['--num_rounds=3', '--eval_every=1', '--checkpoint_every=1',
         '--clients_per_round=3', '--num_clients=6', '--model=logreg',
         '--progress=false']


def _train(*flags, cwd=REPO):
  env = {**os.environ, 'PYTHONPATH': REPO}
  return subprocess.run([sys.executable, '-m', 'scripts.train', *flags],
                        cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=300)


def _table(stdout: str) -> str:
  """The results table train prints last, from its header on."""
  return stdout[stdout.rindex('\nalgorithm ') + 1:]


@pytest.mark.slow
def test_default_workdir_is_a_new_relative_runs_dir(tmp_path):
  result = _train(*SMALL, '--algorithm=fedavg', cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  (run,) = os.listdir(tmp_path / 'runs')
  assert os.path.exists(tmp_path / 'runs' / run / 'summary.json')
  assert os.listdir(tmp_path / 'runs' / run / 'checkpoints')


@pytest.mark.slow
def test_compares_algorithms_and_resumes(tmp_path):
  workdir = str(tmp_path)
  first = _train(*SMALL, '--algorithm=fedavg,fedyogi', f'--workdir={workdir}')
  assert first.returncode == 0, first.stderr
  assert 'Unable to initialize backend' not in first.stderr
  table = _table(first.stdout)
  assert 'fedavg' in table and 'fedyogi' in table
  for name in ('fedavg', 'fedyogi'):
    with open(os.path.join(workdir, name, 'metrics.jsonl')) as f:
      rounds = [json.loads(line)['round'] for line in f]
    assert rounds == [1, 2, 3]
    with open(os.path.join(workdir, name, 'summary.json')) as f:
      summary = json.load(f)
    assert f'{summary["final_test_accuracy"]:.4f}' in table

  again = _train(*SMALL, '--algorithm=fedavg,fedyogi', f'--workdir={workdir}')
  assert again.returncode == 0, again.stderr
  assert _table(again.stdout).split('\n')[:4] == table.split('\n')[:4]
  assert 'fedyogi: resumed from round 3' in again.stdout


BAD_INPUT = [
    ('--algorithm=fedfoo', "Unknown algorithm 'fedfoo'; valid algorithms:"),
    ('--dataset=imagenet', 'value should be one of <digits|synthetic|mnist'),
    ('--dataset=cifar10', 'tfds build cifar10 --data_dir=DIR'),
    ('--partition=shards', 'value should be one of <iid|dirichlet|'),
    ('--partition=natural', 'no natural grouping'),
    ('--dirichlet_alpha=0', 'alpha must be > 0'),
    ('--partition=pathological --classes_per_client=11',
     'classes_per_client must be in [1, 10]'),
    ('--local_test_fraction=1', ('--local_test_fraction', 'must be in [0, 1)')),
    ('--dirichlet_alpha=-1', '--dirichlet_alpha: alpha must be > 0, got -1'),
    ('--local_epochs=1 --local_steps=2', ('--local_epochs',
                                          'local_steps, not both.')),
    ('--num_rounds=0', ('--num_rounds', 'must be positive, got 0')),
    ('--batch_size=0', ('--batch_size', 'must be positive, got 0')),
    ('--num_clients=0', '--num_clients must be positive, got 0'),
    ('--aggregator=secure --secagg_threshold=4', ('--secagg_threshold',
                                                   'must be in [1, 3]')),
    ('--size_buckets=0', ('--size_buckets', 'must be positive')),
    ('--dataset=synthetic --augment', ('--augment',
                                       'needs images of shape')),
    ('--client_optimizer=lion', 'value should be one of'),
    ('--clients_per_round=50', 'exceeds the population of 6'),
    ('--client_lr=0', 'client_lr must be a positive number'),
    ('--batch_size=5000', 'larger than every client'),
    ('--hparams=mu=0.1', 'fedavg has no hyperparameter mu'),
    ('--hparams=fedprx.mu=0.1', "targets 'fedprx', which is not in"),
    ('--participation=poisson', 'value should be one of'),
    ('--secagg_bits=16', '--secagg_bits has no effect without '
     '--aggregator=secure'),
    ('--dp_clip_norm=1', ('--dp_noise_multiplier', 'DP needs')),
    ('--dp_clip_norm=1 --dp_noise_multiplier=1 --dp_sampling=poisson '
     '--participation=fixed', '--dp_sampling=poisson needs '
     '--participation=bernoulli'),
    ('--dp_clip_norm=1 --dp_noise_multiplier=1 --dp_delta=0.5',
     ('--dp_delta', 'must be in')),
    ('--dp_clip_norm=1 --dp_noise_multiplier=0.3 --dp_target_epsilon=0.1',
     'One round already spends epsilon'),
    ('--aggregator=secure --secagg_dropout_fraction=0.7',
     ('--secagg_dropout_fraction', 'Lower')),
    ('--algorithm=scaffold --dp_sgd_clip_norm=1', 'FedAvg family'),
    ('--aggregator=krum', 'needs at least 5 clients a round, got 3'),
    ('--aggregator=median --aggregator=secure --nnm', '--nnm mixes'),
    ('--aggregator=median --dp_clip_norm=1 --dp_noise_multiplier=1',
     ('--aggregator', 'bounded sensitivity')),
    ('--aggregator=centered_clip --cc_radius=2 --dp_clip_norm=1 '
     '--dp_noise_multiplier=1', ('--cc_radius', 'radius is the DP clip')),
    ('--cc_radius=2', '--cc_radius has no effect without a robust'),
    ('--attack=sign_flip --byzantine_fraction=1', ('--byzantine_fraction',
                                                    'must be in [0, 1)')),
    ('--compressor=topk --compress_fraction=0', ('--compress_fraction',
                                                 'must be in (0, 1]')),
    ('--compress_down', '--compress_down has no effect without '
     '--compressor'),
    ('--num_seeds=0', '--num_seeds must be positive, got 0'),
    ('--vmapped_hparam=client_lr', 'is not NAME=V1:V2:...'),
    ('--vmapped_hparam=mu=0.1:1', "fedavg has no scalar hyperparameter "
     "'mu'; valid: client_lr, server_lr"),
    ('--lora_rank=4', '--lora_rank has no effect without '
     '--algorithm=fedlora or ffa_lora'),
    ('--algorithm=fedlora', "matches no kernel. The kernels are: "
     "params/Dense_0/kernel"),
    ('--algorithm=ffa_lora --lora_targets=Dense_0 --lora_rank=0',
     ('--lora_rank', 'must be a positive int')),
    ('--init_checkpoint=/nonexistent', 'holds no pre-trained base'),
    ('--data_part=middle', 'value should be one of'),
    ('--topology=ring', '--topology has no effect without a decentralized '
     '--algorithm'),
    ('--algorithm=dfedavg', '--clients_per_round has no effect on '
     'decentralized algorithms'),
    ('--algorithm=fedavg,dfedavg --topology=hypercube',
     ('--topology', "unknown topology 'hypercube'")),
    ('--algorithm=fedavg,dfedavg --topology=torus',
     ('--num_clients', 'no such factorization')),
    ('--algorithm=fedavg,dfedavg --gossip_steps=0',
     ('--gossip_steps', 'must be positive')),
    ('--algorithm=fedavg,dfedavg --peer_rule=median --peer_b=2',
     ('--peer_b', "needs every node's degree >= 4")),
    ('--algorithm=fedavg,dfedavg --peer_byzantine_fraction=0.2',
     '--peer_byzantine_fraction has no effect without --peer_attack'),
    ('--algorithm=fedavg,dfedavg --aggregator=median',
     ('--aggregator', 'A decentralized run has no server')),
    ('--algorithm=fedavg,dfedavg --server_lr=0.5',
     ('--server_lr', 'dfedavg is decentralized')),
    ('--algorithm=fedavg,fedper', ('--local_test_fraction',
                                   'personalized algorithms (fedper)')),
    ('--personal_layers=Dense', '--personal_layers has no effect without '
     '--algorithm=fedbabu|fedper|fedrep|lg_fedavg'),
    ('--algorithm=fedper --local_test_fraction=0.3 --personal_layers=Conv',
     ('--personal_layers', "'Conv' matches no parameter")),
    ('--holdout_clients=0.5', ('--holdout_clients',
                               'set local_test_fraction')),
    ('--local_test_fraction=0.3 --holdout_clients=0.01',
     ('--holdout_clients', 'holds out 0 of 6 clients')),
    ('--algorithm=ditto --local_test_fraction=0.3 --personal_eval_clients=-1',
     ('--personal_eval_clients', 'must be >= 0')),
    ('--algorithm=fedavg_ft --local_test_fraction=0.3 '
     '--hparams=finetune_steps=2.5', 'finetune_steps is a whole number'),
]


@pytest.fixture(scope='module')
def bad_input_outcomes(tmp_path_factory):
  """What train's main did on each BAD_INPUT flag set, all in one process
  (tests/scripts/train_main_driver.py): a subprocess each took about 5 s,
  most of it importing jax."""
  root = tmp_path_factory.mktemp('bad_input')
  cases = [[*SMALL, *flag.split(), f'--workdir={root / str(k)}',
            f'--data_dir={root / "tfds"}']
           for k, (flag, _) in enumerate(BAD_INPUT)]
  outcomes, _ = _drive(cases)
  return {flag: outcome for (flag, _), outcome in zip(BAD_INPUT, outcomes)}


@pytest.mark.slow
def test_an_error_is_one_line_and_exit_status_1(tmp_path):
  """No absl usage dump above the error, nothing written."""
  result = _train('--local_epochs=1', '--local_steps=2',
                  f'--workdir={tmp_path / "run"}')
  assert result.returncode == 1
  (line,) = result.stderr.strip().splitlines()
  assert line.startswith('error: ') and '--local_epochs' in line
  assert line.endswith('local_steps, not both.')
  assert not os.path.exists(tmp_path / 'run')


def _drive(cases: list[list[str]]) -> tuple[list[dict], str]:
  """Runs train's main on each argument list in one process
  (train_main_driver.py); returns each case's outcome and all stdout."""
  result = subprocess.run(
      [sys.executable, os.path.join(os.path.dirname(__file__),
                                    'train_main_driver.py'),
       json.dumps(cases)], cwd=REPO, env={**os.environ, 'PYTHONPATH': REPO},
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr
  return json.loads(result.stdout.strip().splitlines()[-1]), result.stdout


@pytest.mark.slow
@pytest.mark.parametrize('flag, message', BAD_INPUT)
def test_bad_input_is_a_clear_error(bad_input_outcomes, flag, message):
  """The error says `message`, or each of a tuple of fragments (a flag
  and what is wrong with it)."""
  outcome = bad_input_outcomes[flag]
  assert 'traceback' not in outcome, outcome.get('traceback')
  fragments = (message,) if isinstance(message, str) else message
  assert outcome['exit'] is not None
  assert all(f in outcome['exit'] for f in fragments), outcome['exit']
  assert not outcome['wrote'], 'a refused run must leave no workdir behind'


@pytest.mark.slow
def test_a_workdir_resumes_only_its_own_configuration(tmp_path):
  """flags.json records the flags; a re-run that changes one is refused
  before any work, a safe change passes with --allow_config_change; a
  workdir without the record is checked by its checkpoints."""
  run = [*SMALL, '--algorithm=fedavg', f'--workdir={tmp_path}']
  outcomes, stdout = _drive([
      run,
      [*run, '--client_lr=0.1'],
      [*run, '--model=mlp'],
      [*run, '--num_rounds=4'],
      [*run, '--num_rounds=4', '--allow_config_change'],
      [*run, '--num_rounds=5', '--allow_config_change', '--client_lr=0.1'],
  ])
  first, lr, model, longer, allowed, mixed = outcomes
  assert first == {'exit': None, 'wrote': True}
  assert '--client_lr: 0.05 -> 0.1' in lr['exit']
  assert 'use a new --workdir' in lr['exit']
  assert '--allow_config_change' not in lr['exit']
  assert '--model: "logreg" -> "mlp"' in model['exit']
  assert '--num_rounds: 3 -> 4' in longer['exit']
  assert 'add --allow_config_change' in longer['exit']
  assert allowed == {'exit': None, 'wrote': True}
  assert 'only --client_lr cannot change' in mixed['exit']
  assert stdout.count('fedavg: resumed from round 3') == 1
  record = json.loads((tmp_path / 'flags.json').read_text())
  assert record['flags']['num_rounds'] == 4
  assert record['flags']['client_lr'] == 0.05
  assert [c['flags'] for c in record['changes']] == [
      {'num_rounds': {'old': 3, 'new': 4}}]
  rounds = [json.loads(line)['round']
            for line in (tmp_path / 'metrics.jsonl').read_text().split('\n')
            if line]
  assert rounds == [1, 2, 3, 4]

  # Without flags.json (an older version's workdir), another model is
  # refused by the checkpoint's shapes, writing no record; the same model
  # resumes and its flags are recorded at the end.
  (tmp_path / 'flags.json').unlink()
  (mismatch, resumed), stdout = _drive([
      [*run, '--num_rounds=4', '--model=mlp'], [*run, '--num_rounds=5']])
  assert 'written by a run with a different model or algorithm state' in \
      mismatch['exit']
  assert resumed == {'exit': None, 'wrote': True}  # Not refused by a record.
  assert stdout.count('has checkpoints but no flags.json') == 2
  record = json.loads((tmp_path / 'flags.json').read_text())
  assert record['flags']['model'] == 'logreg'
  assert record['flags']['num_rounds'] == 5


@pytest.mark.slow
def test_every_algorithm_runs_from_the_command_line(tmp_path):
  """One process trains each algorithm for a round, with its own
  hyperparameters passed through --hparams (qualified by name)."""
  names = sorted(algorithms.ALGORITHM_NAMES)
  result = _train(
      '--num_rounds=1', '--clients_per_round=2', '--num_clients=4',
      '--dataset=synthetic', '--model=logreg', '--local_steps=2',
      '--progress=false', '--client_lr=0.01', '--client_lr_decay=0.99',
      '--weight_decay=1e-3', '--max_grad_norm=10', f'--workdir={tmp_path}',
      f'--algorithm={",".join(names)}', '--lora_targets=Dense_0',
      '--local_test_fraction=0.3', '--personal_layers=bias$',
      '--hparams=fedprox.mu=0.1,fedspeed.form=reference,fedsam.rho=0.05')
  assert result.returncode == 0, result.stderr
  table = _table(result.stdout)
  for name in names:
    assert f'\n{name} ' in table
    with open(tmp_path / name / 'summary.json') as f:
      assert json.load(f)['rounds'] == 1


@pytest.mark.slow
def test_a_decentralized_run_from_the_command_line(tmp_path):
  """Two seeds of DFedAvgM on a ring: a directory per seed with the graph's
  picture and per-round consensus distance; a re-run resumes."""
  run = ['--num_rounds=3', '--eval_every=1', '--num_clients=6',
         '--model=logreg', '--progress=false', '--algorithm=dfedavgm',
         '--topology=ring', '--gossip_steps=2', '--num_seeds=2',
         f'--workdir={tmp_path}']
  result = _train(*run)
  assert result.returncode == 0, result.stderr
  assert 'ring: N=6, 6 edges, max degree 2, spectral gap' in result.stdout
  table = _table(result.stdout)
  for seed in (0, 1):
    assert f'\ndfedavgm/seed_{seed} ' in table
    run_dir = tmp_path / f'seed_{seed}'
    assert (run_dir / 'topology.png').stat().st_size > 0
    assert (run_dir / 'partition.json').exists()
    records = [json.loads(line) for line in
               (run_dir / 'metrics.jsonl').read_text().splitlines()]
    assert [r['round'] for r in records] == [1, 2, 3]
    assert all(r['consensus_distance'] >= 0 for r in records)
    assert 'test_accuracy_p10' in records[-1]
  again = _train(*[f for f in run if f != '--num_rounds=3'],
                 '--num_rounds=4', '--allow_config_change')
  assert again.returncode == 0, again.stderr
  assert again.stdout.count('resumed from round 3') == 2


@pytest.mark.slow
def test_a_diverging_algorithm_does_not_stop_the_comparison(tmp_path):
  """FedProx with mu * lr = 50 diverges; FedAvg still runs and the table
  says which diverged and when; the exit status reports the failure."""
  result = _train(*SMALL, '--algorithm=fedprox,fedavg',
                  '--hparams=fedprox.mu=1000', f'--workdir={tmp_path}')
  assert result.returncode != 0
  table = _table(result.stdout)
  assert 'fedprox      diverged (round 1)' in table
  with open(tmp_path / 'fedavg' / 'summary.json') as f:
    assert f'{json.load(f)["final_test_accuracy"]:.4f}' in table
  assert 'fedprox: Training diverged' in result.stderr
  assert 'Traceback' not in result.stderr


@pytest.mark.slow
def test_cifar10_under_tfds_mock_data_end_to_end(tmp_path):
  """The TFDS path as a user runs it, on mock CIFAR-10: pathological split,
  augmentation, per-client test rows; the partition files are written."""
  workdir = tmp_path / 'run'
  flags = ['--dataset=cifar10', '--model=cnn', '--num_clients=4',
           '--clients_per_round=2', '--num_rounds=2', '--batch_size=8',
           '--partition=pathological', '--augment', '--eval_every=1',
           '--local_test_fraction=0.2', '--progress=false',
           '--algorithm=fedavg', f'--workdir={workdir}']
  code = (
      'import sys\n'
      f'sys.path.insert(0, {os.path.dirname(os.path.dirname(__file__))!r})\n'
      'from absl import app\n'
      'from scripts import train\n'
      'import tfds_fakes\n'
      f'with tfds_fakes.mock_tfds({str(tmp_path / "tfds")!r}, "cifar10", 48):\n'
      f'  app.run(train.main, argv=["train", *{flags!r}])\n')
  env = {**os.environ, 'PYTHONPATH': REPO}
  result = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert 'pathological partition: 4 clients' in result.stdout
  with open(workdir / 'partition.json') as f:
    recorded = json.load(f)
  assert recorded['scheme'] == 'pathological'
  assert recorded['args']['classes_per_client'] == 2
  # Each row once, for training or in its client's local test split.
  assert sorted(recorded['rows'] + recorded['local_test_rows']) == list(
      range(48))
  assert len(recorded['local_test_rows']) >= 4
  with open(workdir / 'partition.png', 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  with open(workdir / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert [r['round'] for r in records] == [1, 2]
  for r in records:
    assert 0 <= r['test_accuracy'] <= 1
    assert 0 <= r['local_test_accuracy_p10'] <= r['local_test_accuracy_mean']


@pytest.mark.slow
def test_dp_fedavg_over_secure_aggregation_reports_epsilon(tmp_path):
  result = _train(*SMALL, '--algorithm=fedavg', '--dp_clip_norm=0.5',
                  '--dp_noise_multiplier=1.0', '--dp_sampling=poisson',
                  '--aggregator=secure', f'--workdir={tmp_path}')
  assert result.returncode == 0, result.stderr
  assert ('fedavg: client-level DP: Poisson sampling (each of 6 clients '
          'with probability q = 3/6 = 0.5) under add-or-remove-one '
          'neighbours; dp-accounting RDP; noise multiplier 1: 3 rounds spend '
          'epsilon ') in result.stdout
  with open(tmp_path / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  epsilons = [r['epsilon'] for r in records]
  assert f'spend epsilon {epsilons[-1]:.4g} at delta 1e-05; clip 0.5' in \
      result.stdout
  assert len(epsilons) == 3 and epsilons == sorted(epsilons)
  assert all('secagg_clipped_fraction' in r for r in records)
  table = _table(result.stdout)
  assert 'epsilon' in table and f'{epsilons[-1]:.3g}' in table


@pytest.mark.slow
def test_robust_aggregation_under_attack_with_compression(tmp_path):
  result = _train(*SMALL, '--algorithm=fedavg', '--clients_per_round=5',
                  '--aggregator=multi_krum', '--nnm', '--attack=alie',
                  '--compressor=qsgd', '--qsgd_levels=4', '--compress_down',
                  f'--workdir={tmp_path}')
  assert result.returncode == 0, result.stderr
  with open(tmp_path / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert [r['byzantine_clients'] for r in records] == [1, 1, 1]
  # logreg on digits: 64 x 10 + 10 parameters; QSGD with 4 levels sends a
  # float32 norm per layer and 1 + 3 bits per coordinate, both ways.
  qsgd_bytes = 4 + 640 * 4 / 8 + 4 + 10 * 4 / 8
  assert all(r['bytes_up'] == r['bytes_down'] == qsgd_bytes
             for r in records)
  assert all(r['compression_ratio'] == 4 * 650 / qsgd_bytes for r in records)
  assert all(0 <= r['test_accuracy'] <= 1 for r in records)


def _records(path):
  """A metrics file's records without the host timings."""
  with open(path) as f:
    return [{k: v for k, v in json.loads(line).items()
             if k not in ('wall_s', 'examples_per_s', 'compiled')}
            for line in f]


@pytest.mark.slow
def test_num_seeds_runs_each_seed_as_its_single_run(tmp_path):
  both = _train(*SMALL, '--algorithm=fedprox', '--seed=3', '--num_seeds=2',
                f'--workdir={tmp_path / "both"}')
  assert both.returncode == 0, both.stderr
  one = _train(*SMALL, '--algorithm=fedprox', '--seed=4',
               f'--workdir={tmp_path / "one"}')
  assert one.returncode == 0, one.stderr
  assert _records(tmp_path / 'both' / 'seed_4' / 'metrics.jsonl') \
      == _records(tmp_path / 'one' / 'metrics.jsonl')
  accuracies = []
  for seed in (3, 4):
    run = tmp_path / 'both' / f'seed_{seed}'
    assert os.path.exists(run / 'partition.json')
    with open(run / 'summary.json') as f:
      accuracies.append(json.load(f)['final_test_accuracy'])
    assert f'fedprox/seed_{seed} ' in both.stdout
  mean, std = np.mean(accuracies), np.std(accuracies, ddof=1)
  assert (f'fedprox: final test accuracy {mean:.4f} +- {std:.4f} over 2 '
          'seeds') in both.stdout


PERSONAL = [*SMALL, '--num_clients=8', '--local_test_fraction=0.3',
            '--holdout_clients=0.25', '--dataset=synthetic']


@pytest.mark.slow
def test_personalized_runs_vmap_seeds_and_resume_bit_identically(tmp_path):
  """Ditto's personal models through --num_seeds equal its single run; an
  interrupted FedPer run resumes its clients' heads from the checkpoint and
  ends with the uninterrupted run's records; the table shows the global
  model's, the personal models' and the new clients' accuracy. (One
  process: train's main run by train_main_driver.py.)"""
  short = [f for f in PERSONAL if f != '--num_rounds=3'] + ['--model=mlp']
  outcomes, stdout = _drive([
      [*PERSONAL, '--algorithm=ditto', '--seed=3', '--num_seeds=2',
       f'--workdir={tmp_path / "both"}'],
      [*PERSONAL, '--algorithm=ditto', '--seed=4',
       f'--workdir={tmp_path / "one"}'],
      [*PERSONAL, '--algorithm=fedper', '--model=mlp',
       f'--workdir={tmp_path / "whole"}'],
      [*short, '--num_rounds=2', '--algorithm=fedper',
       f'--workdir={tmp_path / "cut"}'],
      [*short, '--num_rounds=3', '--allow_config_change',
       '--algorithm=fedper', f'--workdir={tmp_path / "cut"}']])
  assert all(o == {'exit': None, 'wrote': True} for o in outcomes), outcomes
  vmapped = _records(tmp_path / 'both' / 'seed_4' / 'metrics.jsonl')
  assert vmapped == _records(tmp_path / 'one' / 'metrics.jsonl')
  assert {'personal_accuracy_mean', 'newclient_accuracy_mean'} <= set(
      vmapped[-1])
  assert 'local acc  pers acc   new acc' in stdout
  assert stdout.count('resumed from round 2') == 1
  assert _records(tmp_path / 'cut' / 'metrics.jsonl') == (
      _records(tmp_path / 'whole' / 'metrics.jsonl'))


@pytest.mark.slow
def test_vmapped_learning_rates_write_a_directory_per_value(tmp_path):
  result = _train(*SMALL, '--algorithm=fedavg',
                  '--vmapped_hparam=client_lr=0.01:0.2',
                  f'--workdir={tmp_path}')
  assert result.returncode == 0, result.stderr
  losses = []
  for value in ('0.01', '0.2'):
    with open(tmp_path / f'client_lr={value}' / 'seed_0' / 'summary.json') \
        as f:
      summary = json.load(f)
    assert summary['client_lr'] == float(value)
    losses.append(summary['final_train_loss'])
  assert losses[0] != losses[1]


def _pretrain(*flags):
  env = {**os.environ, 'PYTHONPATH': REPO}
  return subprocess.run([sys.executable, '-m', 'scripts.pretrain', *flags],
                        cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)


@pytest.mark.slow
def test_pretrain_then_fine_tune_with_lora(tmp_path):
  """scripts.pretrain trains (and resumes) a transformer on one half of
  pydoc_topics; fedlora and ffa_lora fine-tune it on the other half's
  topics. (A base for another model, input shape or class count is refused:
  tests/fedjax_core/test_pretrained.py.)"""
  base_flags = ['--steps=2', '--eval_every=10', '--batch_size=4',
                f'--workdir={tmp_path / "pre"}', '--progress=false']
  result = _pretrain(*base_flags)
  assert result.returncode == 0, result.stderr
  result = _pretrain(*base_flags[1:], '--steps=3')
  assert result.returncode == 0, result.stderr
  assert 'Resumed from step 2.' in result.stdout
  with open(tmp_path / 'pre' / 'base' / 'base.json') as f:
    info = json.load(f)
  assert info['step'] == 3 and info['data_part'] == 'pretrain'
  assert 0 <= info['finetune_test_accuracy'] <= 1

  base = f'--init_checkpoint={tmp_path / "pre" / "base"}'
  result = _train('--algorithm=fedlora,ffa_lora', '--dataset=pydoc_topics',
                  '--data_part=finetune', '--model=transformer', base,
                  '--lora_rank=2', '--num_rounds=2', '--clients_per_round=2',
                  '--local_steps=2', '--batch_size=4', '--eval_every=0',
                  '--progress=false', f'--workdir={tmp_path / "ft"}')
  assert result.returncode == 0, result.stderr
  assert 'pre-trained on pydoc_topics (part pretrain) for 3 steps' in (
      result.stdout)
  # Rank 2 on the query and value kernels (64 x 64) of 2 blocks.
  trainable = {'fedlora': 4 * 2 * (64 + 64), 'ffa_lora': 4 * 2 * 64}
  for name, count in trainable.items():
    assert f'{name}: LoRA rank 2 (alpha 16)' in result.stdout
    with open(tmp_path / 'ft' / name / 'metrics.jsonl') as f:
      records = [json.loads(line) for line in f]
    assert [r['trainable_params'] for r in records] == [count, count]
    assert [r['bytes_up'] for r in records] == [4 * count, 4 * count]
    assert ('lora_aggregation_error' in records[-1]) == (name == 'fedlora')
    assert 'test_accuracy' in records[-1]
