"""Algorithm names -> builders, as the command line selects them.

Three families:
- the FedAvg family (fedavg, fedavgm, fedadagrad, fedadam, fedyogi): any
  optax client optimizer, a server optimizer fixed by the name;
- the local-SGD family (FedProx, SCAFFOLD, FedDyn, FedCM, FedSAM, FedSpeed,
  ...): clients run plain SGD as their papers state it, with per-round lr
  decay, coupled weight decay and clipping; any server optimizer (default
  SGD with learning rate 1, the papers' server);
- parameter-efficient fine-tuning (fedlora, ffa_lora): LoRA adapters of a
  frozen base, any client and server optimizer (default SGD with learning
  rate 1), configured by a `LoRAConfig`;
- decentralized learning (dpsgd, dfedavg, dfedavgm, dfedsam, gt_dsgd):
  node algorithms with local SGD and no server, run by
  `fedjax_core.DecentralizedSimulation` over a graph;
- personalization (fedavg_ft, fedper, fedrep, fedbabu, lg_fedavg, ditto,
  apfl, pfedme, per_fedavg_fo, per_fedavg_hf, ifca, hypcluster): local SGD,
  clients weighted by example count, each client's model evaluated on its
  own held-out rows; the body/head family splits the model by a path
  regex (`personal_layers`).
An algorithm's own hyperparameters are the keyword arguments of its factory;
`hyperparameters(name)` lists them with their defaults.
"""

import inspect
from typing import Any, Callable, NamedTuple

from algorithms.decentralized import dfedavg
from algorithms.decentralized import dfedavgm
from algorithms.decentralized import dfedsam
from algorithms.decentralized import dpsgd
from algorithms.apfl import apfl
from algorithms.clustered import hypcluster
from algorithms.clustered import ifca
from algorithms.ditto import ditto
from algorithms.fedavg_ft import fedavg_ft
from algorithms.fedper import fedbabu
from algorithms.fedper import fedper
from algorithms.fedper import fedrep
from algorithms.fedper import lg_fedavg
from algorithms.per_fedavg import per_fedavg_fo
from algorithms.per_fedavg import per_fedavg_hf
from algorithms.pfedme import pfedme
from algorithms.fedamd import fedamd
from algorithms.fedavg import fedavg
from algorithms.fedcm import fedcm
from algorithms.fedcm import mofedsam
from algorithms.feddyn import feddyn
from algorithms.fedlora import fedlora
from algorithms.fedlora import ffa_lora
from algorithms.fedprox import fedprox
from algorithms.fedsam import fedasam
from algorithms.fedsam import fedsam
from algorithms.fedsmoo import fedsmoo
from algorithms.gradient_tracking import gradient_tracking
from algorithms.fedspeed import fedspeed
from algorithms.scaffold import fedgamma
from algorithms.scaffold import scaffold
from algorithms.scaffold import scaffold_m
from fedjax_core.toolkit import optimizers
from fedjax_core.algorithm import Algorithm, is_traced
from fedjax_core.toolkit.dp_sgd import DPSGDConfig
from fedjax_core.errors import SettingError
from fedjax_core.toolkit.local_sgd import LocalSGD
from fedjax_core.toolkit.lora import LoRAConfig
from fedjax_core.toolkit.personal_layers import PersonalLayers

PyTree = Any


class _FedOptVariant(NamedTuple):
  server_optimizer: str
  server_lr: float


# Server optimizer and learning rate each FedAvg-family name stands for.
_FEDAVG_FAMILY = {
    'fedavg': _FedOptVariant('sgd', 1.0),
    'fedavgm': _FedOptVariant('momentum', 1.0),
    'fedadagrad': _FedOptVariant('adagrad', 0.1),
    'fedadam': _FedOptVariant('adam', 0.01),
    'fedyogi': _FedOptVariant('yogi', 0.01),
}
# Factories `(apply_fn, local_sgd, server_optimizer, *, [num_clients],
# **hyperparameters) -> Algorithm`.
_LOCAL_SGD_FAMILY: dict[str, Callable[..., Algorithm]] = {
    'fedprox': fedprox,
    'scaffold': scaffold,
    'scaffold_m': scaffold_m,
    'fedgamma': fedgamma,
    'fedcm': fedcm,
    'mofedsam': mofedsam,
    'fedsam': fedsam,
    'fedasam': fedasam,
    'feddyn': feddyn,
    'fedspeed': fedspeed,
    'fedsmoo': fedsmoo,
    'fedamd': fedamd,
}
_LOCAL_SGD_SERVER = _FedOptVariant('sgd', 1.0)
# Factories `(apply_fn, client_optimizer, server_optimizer, lora_config, *,
# weighted, client_lr_decay, dp_sgd) -> Algorithm`.
_LORA_FAMILY: dict[str, Callable[..., Algorithm]] = {
    'fedlora': fedlora,
    'ffa_lora': ffa_lora,
}
# Node factories `(apply_fn, local_sgd, **hyperparameters) -> Algorithm`.
_DECENTRALIZED_FAMILY: dict[str, Callable[..., Algorithm]] = {
    'dpsgd': dpsgd,
    'dfedavg': dfedavg,
    'dfedavgm': dfedavgm,
    'dfedsam': dfedsam,
    'gt_dsgd': gradient_tracking,
}
# Factories `(apply_fn, local_sgd, server_optimizer, *, weighted,
# [personal_layers], [model_init], **hyperparameters) -> Algorithm`.
_PERSONAL_FAMILY: dict[str, Callable[..., Algorithm]] = {
    'fedavg_ft': fedavg_ft,
    'fedper': fedper,
    'fedrep': fedrep,
    'fedbabu': fedbabu,
    'lg_fedavg': lg_fedavg,
    'ditto': ditto,
    'apfl': apfl,
    'pfedme': pfedme,
    'per_fedavg_fo': per_fedavg_fo,
    'per_fedavg_hf': per_fedavg_hf,
    'ifca': ifca,
    'hypcluster': hypcluster,
}
LORA_ALGORITHMS = tuple(sorted(_LORA_FAMILY))
DECENTRALIZED_ALGORITHMS = tuple(sorted(_DECENTRALIZED_FAMILY))
PERSONAL_ALGORITHMS = tuple(sorted(_PERSONAL_FAMILY))
# The personalized algorithms that split the model by `personal_layers`.
SPLIT_MODEL_ALGORITHMS = tuple(
    name for name in PERSONAL_ALGORITHMS
    if 'personal_layers' in inspect.signature(
        _PERSONAL_FAMILY[name]).parameters)
# The algorithms whose `personal_layers` name the body (all but the head),
# not the head.
_PERSONAL_BODY = ('lg_fedavg',)
ALGORITHM_NAMES = tuple(sorted({**_FEDAVG_FAMILY, **_LOCAL_SGD_FAMILY,
                                **_LORA_FAMILY, **_DECENTRALIZED_FAMILY,
                                **_PERSONAL_FAMILY}))
# Every factory by its name, re-exported by `algorithms/__init__.py`, so a
# new algorithm is its module, its entry above and its test.
FACTORIES: dict[str, Callable[..., Algorithm]] = {
    'fedavg': fedavg, **_LOCAL_SGD_FAMILY, **_LORA_FAMILY,
    **_DECENTRALIZED_FAMILY, **_PERSONAL_FAMILY}
_ENGINE_ARGUMENTS = ('num_clients', 'weighted', 'personal_layers',
                     'model_init')


def _check_name(name: str) -> None:
  if name not in ALGORITHM_NAMES:
    raise ValueError(f'Unknown algorithm {name!r}; valid algorithms: '
                     f'{", ".join(ALGORITHM_NAMES)}.')


def _variant(name: str) -> _FedOptVariant:
  _check_name(name)
  return _FEDAVG_FAMILY.get(name, _LOCAL_SGD_SERVER)


def hyperparameters(name: str) -> dict[str, Any]:
  """`name`'s own hyperparameters and their defaults (see its module)."""
  _check_name(name)
  if name in _FEDAVG_FAMILY or name in _LORA_FAMILY:
    return {}
  signature = inspect.signature(FACTORIES[name])
  return {p.name: p.default for p in signature.parameters.values()
          if p.kind is p.KEYWORD_ONLY and p.name not in _ENGINE_ARGUMENTS}


def parse_hyperparameters(text: str) -> dict[str, Any]:
  """Parses `'rho=0.05,form=reference'` into `{'rho': 0.05, ...}`.

  Values that read as numbers become floats; the rest stay strings.
  """
  parsed = {}
  for item in filter(None, (part.strip() for part in text.split(','))):
    key, sep, value = item.partition('=')
    if not sep or not key.strip():
      raise SettingError('hparams', f'hparams entry {item!r} is not '
                         "NAME=VALUE (e.g. 'rho=0.05,prox_coef=0.1').")
    try:
      parsed[key.strip()] = float(value)
    except ValueError:
      parsed[key.strip()] = value.strip()
  return parsed


def hyperparameters_for(name: str, parsed: dict[str, Any]) -> dict[str, Any]:
  """The entries of `parsed` meant for `name`.

  A key `NAME.key` goes to algorithm NAME only (the others' entries are
  dropped); a plain `key` goes to every algorithm of a comparison, and must
  be one of each algorithm's hyperparameters.
  """
  chosen = {}
  for key, value in parsed.items():
    target, dot, bare = key.rpartition('.')
    if not dot:
      chosen[key] = value
    elif target == name:
      chosen[bare] = value
  return chosen


def _checked_hyperparameters(name: str, given: dict[str, Any]
                             ) -> dict[str, Any]:
  valid = hyperparameters(name)
  unknown = sorted(set(given) - set(valid))
  if unknown:
    listing = (', '.join(f'{k} (default {v!r})' for k, v in valid.items())
               or 'none')
    raise ValueError(f'{name} has no hyperparameter '
                     f'{", ".join(unknown)}; its hyperparameters: {listing}.')
  checked = {}
  for key, value in given.items():
    default = valid[key]
    if isinstance(default, str) and not isinstance(value, str):
      raise ValueError(f'{name} hyperparameter {key} is a name (default '
                       f'{default!r}), got {value!r}.')
    if isinstance(default, float) and is_traced(value):
      checked[key] = value  # Varies along a run axis; checked per run.
      continue
    if isinstance(default, float) and not isinstance(value, (int, float)):
      raise ValueError(f'{name} hyperparameter {key} is a number (default '
                       f'{default!r}), got {value!r}.')
    if isinstance(default, int) and not isinstance(default, bool):
      if is_traced(value) or not (isinstance(value, (int, float))
                                  and float(value).is_integer()):
        raise ValueError(f'{name} hyperparameter {key} is a whole number '
                         f'(default {default!r}), got {value!r}; it fixes '
                         'array shapes, so runs cannot be vmapped over it.')
      value = int(value)
    checked[key] = float(value) if isinstance(default, float) else value
  return checked


def _check_plain_sgd(name: str, client_optimizer: str) -> None:
  if client_optimizer != 'sgd':
    raise SettingError(
        'client_optimizer',
        f'{name} runs plain local SGD, as its paper states it; '
        f'client_optimizer {client_optimizer!r} applies to the FedAvg family '
        "only. Use client_optimizer 'sgd'.")


def _check_no_server(name: str, server_optimizer: str | None,
                     server_lr: float | None, weighted: bool | None,
                     dp_sgd: DPSGDConfig | None,
                     lora: LoRAConfig | None) -> None:
  """Refuses the server's and the FedAvg family's settings for a
  decentralized algorithm, which has neither."""
  given = {'server_optimizer': server_optimizer, 'server_lr': server_lr,
           'weighted': weighted, 'dp_sgd': dp_sgd, 'lora': lora}
  for setting, value in given.items():
    if value is not None:
      raise SettingError(
          setting, f'{name} is decentralized: its nodes have no server and '
          f'average their neighbours by the gossip weights, so {setting} '
          'does not apply. Drop it.')


def default_personal_layers(name: str, head: str) -> str:
  """The `personal_layers` of algorithm `name` for a model whose head is
  the path regex `head` (`models.head_layers`): the head, or for LG-FedAvg
  (personal body, shared head) everything but it."""
  if name in _PERSONAL_BODY:
    return PersonalLayers(head).complement().pattern
  return head


def _personal_arguments(name: str, personal_layers: str | None,
                        model_init: Callable[[Any], PyTree] | None
                        ) -> dict[str, Any]:
  """The engine arguments of a personalized algorithm's factory; refuses
  `personal_layers` where the algorithm does not split the model."""
  arguments = {}
  if name in SPLIT_MODEL_ALGORITHMS:
    if personal_layers is None:
      raise SettingError(
          'personal_layers', f'{name} keeps some layers per client; give '
          'personal_layers, a path regex such as models.head_layers(...).')
    arguments['personal_layers'] = personal_layers
  elif personal_layers is not None:
    raise SettingError(
        'personal_layers', f'{name} does not split the model into shared '
        'and personal layers; drop personal_layers (it applies to '
        f'{", ".join(SPLIT_MODEL_ALGORITHMS)}).')
  if 'model_init' in inspect.signature(_PERSONAL_FAMILY[name]).parameters:
    if model_init is None:
      raise ValueError(f'{name} draws models of its own; pass model_init '
                       '(the model\'s init function).')
    arguments['model_init'] = model_init
  return arguments


def build_algorithm(name: str, apply_fn: Callable[[PyTree, Any], Any], *,
                    num_clients: int, client_optimizer: str = 'sgd',
                    client_lr: float = 0.1, client_lr_decay: float = 1.0,
                    weight_decay: float = 0.0,
                    max_grad_norm: float | None = None,
                    server_optimizer: str | None = None,
                    server_lr: float | None = None,
                    server_momentum: float = 0.9,
                    weighted: bool | None = None,
                    hparams: dict[str, Any] | None = None,
                    dp_sgd: DPSGDConfig | None = None,
                    lora: LoRAConfig | None = None,
                    personal_layers: str | None = None,
                    model_init: Callable[[Any], PyTree] | None = None
                    ) -> Algorithm:
  """Builds algorithm `name` for a model and a population.

  Args:
    name: one of `ALGORITHM_NAMES`.
    apply_fn: `(params, x) -> logits`.
    num_clients: population size N (SCAFFOLD's and FedDyn's 1/N).
    client_optimizer: local optimizer name; the local-SGD family only runs
      'sgd'.
    client_lr: local learning rate.
    client_lr_decay: the local learning rate is multiplied by this each
      round.
    weight_decay: coupled L2 coefficient of the local steps.
    max_grad_norm: clip each local step's gradient to this norm.
    server_optimizer: server optimizer name; None uses the one `name` stands
      for. The FedAvg family's names other than 'fedavg' fix it.
    server_lr: server learning rate; None uses `name`'s default.
    server_momentum: momentum of the 'momentum' server optimizer.
    weighted: weight clients by example count; None is the algorithm's
      default (FedAvg family: weighted; local-SGD family: uniform, and only
      uniform).
    hparams: the algorithm's own hyperparameters (see `hyperparameters`).
    dp_sgd: run the clients' local steps as DP-SGD (FedAvg and LoRA
      families).
    lora: the LoRA algorithms' adapted kernels, rank and alpha (default
      `LoRAConfig()`); other algorithms refuse it.
    personal_layers: the body/head algorithms' path regex of the layers
      kept per client (`default_personal_layers`); others refuse it.
    model_init: `(rng) -> params` of the model, for the clustered
      algorithms, which draw one model per cluster.

  Returns:
    The algorithm.

  Examples:
    >>> algorithm = build_algorithm('scaffold', model.apply, num_clients=100,
    ...                             client_lr=0.1, client_lr_decay=0.998)
  """
  variant = _variant(name)
  checked = _checked_hyperparameters(name, hparams or {})
  local_sgd = LocalSGD(client_lr, lr_decay=client_lr_decay,
                       weight_decay=weight_decay, max_grad_norm=max_grad_norm)
  if name in _DECENTRALIZED_FAMILY:
    _check_no_server(name, server_optimizer, server_lr, weighted, dp_sgd,
                     lora)
    _check_plain_sgd(name, client_optimizer)
  if server_optimizer is None:
    server_optimizer = variant.server_optimizer
  elif (name in _FEDAVG_FAMILY and name != 'fedavg'
        and server_optimizer != variant.server_optimizer):
    raise SettingError(
        'server_optimizer',
        f'Algorithm {name} implies server_optimizer '
        f'{variant.server_optimizer!r}, got {server_optimizer!r}; use '
        f'algorithm fedavg with server_optimizer {server_optimizer!r} '
        'instead.')
  server_tx = optimizers.server_optimizer(
      server_optimizer, variant.server_lr if server_lr is None else server_lr,
      momentum=server_momentum)
  if name in _DECENTRALIZED_FAMILY:
    return _DECENTRALIZED_FAMILY[name](apply_fn, local_sgd, **checked)
  if name in _PERSONAL_FAMILY:
    _check_plain_sgd(name, client_optimizer)
    for setting, value in (('dp_sgd', dp_sgd), ('lora', lora)):
      if value is not None:
        raise SettingError(setting, f'{name} is personalized; {setting} '
                           'does not apply to it. Drop it (client-level DP, '
                           'client_dp, does).')
    return _PERSONAL_FAMILY[name](
        apply_fn, local_sgd, server_tx,
        weighted=True if weighted is None else weighted,
        **_personal_arguments(name, personal_layers, model_init), **checked)
  if personal_layers is not None:
    raise SettingError('personal_layers', f'{name} has one global model; '
                       'personal_layers applies to '
                       f'{", ".join(PERSONAL_ALGORITHMS)}. Drop it.')
  if lora is not None and name not in _LORA_FAMILY:
    raise SettingError('lora', f'LoRA settings (lora) apply to '
                       f'{", ".join(LORA_ALGORITHMS)}, not {name}; drop them '
                       'or change the algorithm.')
  if name in _FEDAVG_FAMILY or name in _LORA_FAMILY:
    client_tx = optimizers.client_optimizer(
        client_optimizer, client_lr, weight_decay=weight_decay,
        max_grad_norm=max_grad_norm)
  if name in _LORA_FAMILY:
    return _LORA_FAMILY[name](
        apply_fn, client_tx, server_tx, lora or LoRAConfig(),
        weighted=True if weighted is None else weighted,
        client_lr_decay=client_lr_decay, dp_sgd=dp_sgd)
  if name in _FEDAVG_FAMILY:
    return fedavg(apply_fn, client_tx, server_tx,
                  weighted=True if weighted is None else weighted,
                  client_lr_decay=client_lr_decay, dp_sgd=dp_sgd)
  if dp_sgd is not None:
    raise SettingError(
        'dp_sgd',
        'Client-side DP-SGD (dp_sgd) runs in the FedAvg family '
        f'({", ".join(_FEDAVG_FAMILY)}) and in {", ".join(LORA_ALGORITHMS)}, '
        f'not {name}; use one of those or client-level DP (client_dp).')
  _check_plain_sgd(name, client_optimizer)
  if weighted:
    raise SettingError('weighted', f'{name} averages clients uniformly, as '
                       'its paper does; set weighted to None or False.')
  factory = _LOCAL_SGD_FAMILY[name]
  if 'num_clients' in inspect.signature(factory).parameters:
    checked['num_clients'] = num_clients
  return factory(apply_fn, local_sgd, server_tx, **checked)
