"""The name -> algorithm registry: hyperparameters, their parsing and the
errors a user sees for bad ones."""

import re

import numpy as np
import pytest

import algorithms
from algorithms import registry
from fedjax_core.toolkit.lora import LoRAConfig
import tiny_problem as tiny

ISSUE_NAMES = ('fedavg', 'fedavgm', 'fedadam', 'fedyogi', 'fedadagrad',
               'fedprox', 'scaffold', 'feddyn', 'fedcm', 'scaffold_m',
               'fedsam', 'fedasam', 'mofedsam', 'fedgamma', 'fedspeed',
               'fedsmoo', 'fedamd', 'fedlora', 'ffa_lora')
DECENTRALIZED_NAMES = ('dpsgd', 'dfedavg', 'dfedavgm', 'dfedsam', 'gt_dsgd')
PERSONAL_NAMES = ('fedavg_ft', 'fedper', 'fedrep', 'fedbabu', 'lg_fedavg',
                  'ditto', 'apfl', 'pfedme', 'per_fedavg_fo', 'per_fedavg_hf',
                  'ifca', 'hypcluster')


def _build(name, **kwargs):
  return algorithms.build_algorithm(name, tiny.model().apply,
                                    num_clients=tiny.NUM_CLIENTS, **kwargs)


def test_every_name_of_the_command_line_builds():
  assert set(ISSUE_NAMES + DECENTRALIZED_NAMES + PERSONAL_NAMES) == set(
      algorithms.ALGORITHM_NAMES)
  assert set(DECENTRALIZED_NAMES) == set(algorithms.DECENTRALIZED_ALGORITHMS)
  assert set(PERSONAL_NAMES) == set(algorithms.PERSONAL_ALGORITHMS)
  for name in ISSUE_NAMES + DECENTRALIZED_NAMES:
    lora = None
    if name in algorithms.LORA_ALGORITHMS:
      lora = LoRAConfig(targets='Dense_0')
    assert _build(name, lora=lora).server_update is not None
  for name in PERSONAL_NAMES:
    layers = None
    if name in algorithms.SPLIT_MODEL_ALGORITHMS:
      layers = algorithms.default_personal_layers(name, '^params/Dense_0/b')
    algorithm = _build(name, personal_layers=layers,
                       model_init=tiny.model().init)
    assert algorithm.personalization is not None


def test_split_model_algorithms_and_their_default_layers():
  assert algorithms.SPLIT_MODEL_ALGORITHMS == (
      'fedbabu', 'fedper', 'fedrep', 'lg_fedavg')
  head = '^params/Dense_2/'
  assert algorithms.default_personal_layers('fedper', head) == head
  body = algorithms.default_personal_layers('lg_fedavg', head)
  assert re.search(body, 'params/Dense_0/kernel')
  assert not re.search(body, 'params/Dense_2/kernel')


@pytest.mark.parametrize('name, kwargs, match', [
    ('fedper', {}, 'fedper keeps some layers per client; give '
     'personal_layers'),
    ('ditto', {'personal_layers': 'x'}, 'ditto does not split the model'),
    ('fedavg', {'personal_layers': 'x'}, 'fedavg has one global model'),
    ('ditto', {'client_optimizer': 'adam'}, 'plain local SGD'),
    ('ifca', {}, 'pass model_init')])
def test_personal_settings_errors(name, kwargs, match):
  with pytest.raises(ValueError, match=match):
    _build(name, **kwargs)


def test_whole_number_hyperparameters():
  assert algorithms.hyperparameters('fedrep') == {'finetune_steps': 5,
                                                  'head_steps': 5}
  algorithm = _build('fedavg_ft', hparams={'finetune_steps': 3.0})
  assert algorithm.personalization.train_steps == 3
  with pytest.raises(ValueError, match='finetune_steps is a whole number'):
    _build('fedavg_ft', hparams={'finetune_steps': 2.5})


@pytest.mark.parametrize('setting, value', [
    ('server_optimizer', 'adam'), ('server_lr', 0.5), ('weighted', True)])
def test_decentralized_algorithms_refuse_server_settings(setting, value):
  with pytest.raises(ValueError, match=f'dfedavg is decentralized.*'
                     f'{setting} does not apply'):
    _build('dfedavg', **{setting: value})


def test_decentralized_hyperparameters():
  assert algorithms.hyperparameters('dfedavgm') == {'momentum': 0.9}
  assert algorithms.hyperparameters('dfedsam') == {'rho': 0.05}
  assert algorithms.hyperparameters('dpsgd') == {}


def test_lora_settings_are_refused_by_other_algorithms():
  with pytest.raises(ValueError, match='apply to fedlora, ffa_lora, not '
                     'fedavg'):
    _build('fedavg', lora=LoRAConfig(targets='Dense_0'))


def test_hyperparameters_are_the_factory_keywords_with_defaults():
  assert algorithms.hyperparameters('fedprox') == {'mu': 0.01}
  assert algorithms.hyperparameters('fedavg') == {}
  assert 'num_clients' not in algorithms.hyperparameters('scaffold')


def test_parse_hyperparameters_reads_numbers_and_names():
  assert algorithms.parse_hyperparameters(
      'rho=0.05, form=reference,prox_coef=1e-2') == {
          'rho': 0.05, 'form': 'reference', 'prox_coef': 0.01}
  assert algorithms.parse_hyperparameters('') == {}
  with pytest.raises(ValueError, match='is not NAME=VALUE'):
    algorithms.parse_hyperparameters('rho')


def test_qualified_keys_go_to_their_algorithm_only():
  parsed = {'fedprox.mu': 0.5, 'fedsam.rho': 0.2, 'seedless': 1.0}
  assert algorithms.hyperparameters_for('fedprox', parsed) == {
      'mu': 0.5, 'seedless': 1.0}


def test_unknown_hyperparameter_lists_the_valid_ones():
  with pytest.raises(ValueError, match=r"fedsam has no hyperparameter mu; "
                     r"its hyperparameters: rho \(default 0.1\)"):
    _build('fedsam', hparams={'mu': 0.1})
  with pytest.raises(ValueError, match='its hyperparameters: none'):
    _build('fedavg', hparams={'rho': 0.1})


def test_hyperparameter_of_the_wrong_kind_is_an_error():
  with pytest.raises(ValueError, match='form is a name'):
    _build('fedspeed', hparams={'form': 1.0})
  with pytest.raises(ValueError, match='rho is a number'):
    _build('fedsam', hparams={'rho': 'big'})


def test_hyperparameters_reach_the_factory(monkeypatch):
  seen = {}

  def spy(apply_fn, local_sgd, server_optimizer, *, num_clients, beta=0.1):
    seen.update(local_sgd=local_sgd, num_clients=num_clients, beta=beta)
    return 'built'

  monkeypatch.setitem(registry._LOCAL_SGD_FAMILY, 'scaffold_m', spy)
  assert _build('scaffold_m', client_lr=0.3, client_lr_decay=0.9,
                weight_decay=1e-3, max_grad_norm=10.0,
                hparams={'beta': 0.5}) == 'built'
  assert seen['beta'] == 0.5 and seen['num_clients'] == tiny.NUM_CLIENTS
  sgd = seen['local_sgd']
  assert (sgd.learning_rate, sgd.lr_decay, sgd.weight_decay,
          sgd.max_grad_norm) == (0.3, 0.9, 1e-3, 10.0)


@pytest.mark.parametrize('kwargs, message', [
    ({'client_optimizer': 'adam'}, 'runs plain local SGD'),
    ({'weighted': True}, 'averages clients uniformly'),
    ({'client_lr_decay': 1.5}, 'client_lr_decay must be in'),
    ({'weight_decay': -1.0}, 'weight_decay must be >= 0'),
    ({'max_grad_norm': 0.0}, 'max_grad_norm must be positive'),
])
def test_bad_client_settings_are_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    _build('scaffold', **kwargs)


def test_fedavg_family_takes_any_server_optimizer_only_as_fedavg():
  assert _build('fedavg', server_optimizer='adam') is not None
  with pytest.raises(ValueError, match="use algorithm fedavg with "
                     "server_optimizer 'sgd'") as error:
    _build('fedadam', server_optimizer='sgd')
  assert error.value.setting == 'server_optimizer'
  assert _build('fedprox', server_optimizer='adam', server_lr=0.01)


def test_local_sgd_family_composes_with_a_server_optimizer():
  """FedProx with a FedAdam server moves the model differently from its
  plain-averaging server."""
  plain = _build('fedprox', client_lr=0.3)
  adam = _build('fedprox', client_lr=0.3, server_optimizer='adam',
                server_lr=0.05)
  _, (w_plain, _), _ = tiny.run(plain, 1)
  _, (w_adam, _), _ = tiny.run(adam, 1)
  assert not np.allclose(w_plain, w_adam, rtol=1e-2)
