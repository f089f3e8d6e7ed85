"""The engine's configuration as the command-line flags ask for it.

Reads the parsed flags of `scripts.flags` and builds what the engine takes:
the `SimulationConfig` with its privacy, robustness and compression
settings, the algorithm, the dataset and the device mesh. It raises
ValueError (naming the flag) where the flags contradict each other.

Examples:
  >>> config = config_from_flags.simulation_config(seed=0, workdir=None,
  ...                                              progress=False)
  >>> algorithm = config_from_flags.build_algorithm('fedavg', model,
  ...                                               dataset)
"""

import functools

from absl import flags
import jax

import algorithms
import fedjax_core
from fedjax_core import errors
from fedjax_core import targets
from fedjax_core.channel import aggregation
from fedjax_core.channel import attacks
from fedjax_core.channel import privacy
from fedjax_core.channel import rqm
from fedjax_core.channel import uplink
from fedjax_core.data import datasets
from fedjax_core.data import partition
from fedjax_core.engine import decentralized as decentralized_lib
from fedjax_core.engine import placement
from fedjax_core.engine import simulation
from fedjax_core.toolkit import dp_sgd
from fedjax_core.toolkit import lora
import models
from scripts import flags as script_flags
from scripts import flags_backdoor


def placement_settings() -> dict:
  """The `SimulationConfig` fields of the placement flags."""
  return dict(loop=script_flags.LOOP.value,
              clients_in_parallel=script_flags.CLIENTS_IN_PARALLEL.value,
              state_store=script_flags.STATE_STORE.value)


@functools.cache
def mesh() -> jax.sharding.Mesh:
  """The device mesh of --mesh_shape; raises ValueError on a bad one."""
  return placement.build_mesh(script_flags.MESH_SHAPE.value)


def participation() -> str:
  """--participation, as --dp_sampling may set it."""
  sampling = script_flags.DP_SAMPLING.value
  chosen = script_flags.PARTICIPATION.value
  if sampling is None:
    return chosen
  implied = 'bernoulli' if sampling == 'poisson' else 'fixed'
  if flags.FLAGS['participation'].present and chosen != implied:
    raise ValueError(f'--dp_sampling={sampling} needs '
                     f'--participation={implied}, got '
                     f'--participation={chosen}.')
  return implied


def privacy_settings() -> dict:
  """The SimulationConfig fields of secure aggregation, DP and RQM."""
  settings = {}
  if script_flags.AGGREGATOR.value == 'secure':
    settings['secure_aggregation'] = aggregation.SecureAggregation(
        bits=script_flags.SECAGG_BITS.value,
        clip=script_flags.SECAGG_CLIP.value,
        scale=script_flags.SECAGG_SCALE.value,
        dropout_fraction=script_flags.SECAGG_DROPOUT_FRACTION.value,
        threshold=script_flags.SECAGG_THRESHOLD.value)
  if script_flags.DP_CLIP_NORM.value is not None:
    settings['client_dp'] = privacy.ClientDPSettings(
        clip_norm=script_flags.DP_CLIP_NORM.value,
        noise_multiplier=script_flags.DP_NOISE_MULTIPLIER.value,
        delta=script_flags.DP_DELTA.value,
        target_epsilon=script_flags.DP_TARGET_EPSILON.value,
        accountant=script_flags.DP_ACCOUNTANT.value,
        per_layer=script_flags.DP_PER_LAYER_CLIP.value,
        target_quantile=script_flags.DP_TARGET_QUANTILE.value,
        clip_learning_rate=script_flags.DP_CLIP_LEARNING_RATE.value,
        count_stddev=script_flags.DP_COUNT_STDDEV.value)
  if script_flags.RQM_CLIP.value is not None:
    extension = script_flags.RQM_EXTENSION.value
    settings['rqm'] = rqm.RQMSettings(
        clip=script_flags.RQM_CLIP.value,
        num_levels=script_flags.RQM_LEVELS.value,
        keep_probability=script_flags.RQM_KEEP_PROBABILITY.value,
        extension=script_flags.RQM_CLIP.value if extension is None
        else extension, delta=script_flags.DP_DELTA.value)
  if script_flags.DP_SGD_CLIP_NORM.value is not None:
    settings['sample_dp'] = privacy.SampleDPSettings(
        script_flags.DP_SGD_NOISE_MULTIPLIER.value,
        delta=script_flags.DP_DELTA.value,
        accountant=script_flags.DP_ACCOUNTANT.value)
  return settings


def robust_rule() -> str | None:
  """The robust rule --aggregator and --nnm ask for, or None."""
  aggregator = script_flags.AGGREGATOR.value
  if aggregator in aggregation.ROBUST_RULES:
    return aggregator
  if script_flags.NNM.value:
    if aggregator != 'mean':
      raise ValueError('--nnm mixes individual updates, which '
                       '--aggregator=secure hides; drop one of them.')
    return 'mean'
  return None


def byzantine_settings() -> dict:
  """The SimulationConfig fields of robust aggregation, attacks and
  compression."""
  settings = {}
  attack = None
  if script_flags.ATTACK.value != 'none':
    attack = settings['attack'] = attacks.Attack(
        script_flags.ATTACK.value,
        fraction=script_flags.BYZANTINE_FRACTION.value,
        scale=script_flags.ATTACK_SCALE.value,
        stddev=script_flags.ATTACK_STDDEV.value,
        alie_z=script_flags.ALIE_Z.value,
        ipm_epsilon=script_flags.IPM_EPSILON.value)
  rule = robust_rule()
  if rule is not None:
    f = script_flags.ROBUST_F.value
    if f is None:
      f = 1 if attack is None else max(
          1, attack.num_byzantine(script_flags.CLIENTS_PER_ROUND.value))
    settings['robust'] = aggregation.RobustAggregation(
        rule, num_byzantine=f, nnm=script_flags.NNM.value,
        num_selected=script_flags.KRUM_SELECTED.value,
        rfa_iters=script_flags.RFA_ITERS.value,
        rfa_smoothing=script_flags.RFA_SMOOTHING.value,
        clip_radius=script_flags.CC_RADIUS.value,
        clip_iters=script_flags.CC_ITERS.value,
        momentum=script_flags.MONNA_MOMENTUM.value)
  if script_flags.COMPRESSOR.value != 'none':
    settings['uplink'] = uplink.Uplink(
        script_flags.COMPRESSOR.value,
        fraction=script_flags.COMPRESS_FRACTION.value,
        levels=script_flags.QSGD_LEVELS.value,
        num_clusters=script_flags.FEDZIP_CLUSTERS.value)
    if script_flags.COMPRESS_DOWN.value:
      settings['downlink'] = settings['uplink']
  return settings


def simulation_config(seed: int, workdir: str | None,
                      progress: bool) -> simulation.SimulationConfig:
  """The run's `SimulationConfig`, for seed `seed`."""
  return simulation.SimulationConfig(
      num_rounds=script_flags.NUM_ROUNDS.value,
      clients_per_round=script_flags.CLIENTS_PER_ROUND.value,
      batch_size=script_flags.BATCH_SIZE.value,
      local_epochs=script_flags.LOCAL_EPOCHS.value,
      local_steps=script_flags.LOCAL_STEPS.value, seed=seed,
      eval_every=script_flags.EVAL_EVERY.value,
      checkpoint_every=script_flags.CHECKPOINT_EVERY.value,
      workdir=workdir, progress=progress, **placement_settings(),
      participation=participation(),
      size_buckets=script_flags.SIZE_BUCKETS.value,
      augment=script_flags.AUGMENT.value, **privacy_settings(),
      **byzantine_settings(), **flags_backdoor.settings(),
      personal_eval_clients=script_flags.PERSONAL_EVAL_CLIENTS.value)


def gossip_config() -> fedjax_core.GossipConfig:
  """The graph and gossip of a decentralized algorithm's run."""
  attacking = script_flags.PEER_ATTACK.value != 'none'
  return fedjax_core.GossipConfig(
      topology=script_flags.TOPOLOGY.value,
      mixing=script_flags.MIXING.value,
      gossip_steps=script_flags.GOSSIP_STEPS.value,
      active_nodes=script_flags.ACTIVE_NODES.value,
      node_failure_rate=script_flags.NODE_FAILURE_RATE.value,
      link_failure_rate=script_flags.LINK_FAILURE_RATE.value,
      method=script_flags.GOSSIP_METHOD.value,
      rule=script_flags.PEER_RULE.value,
      num_byzantine=script_flags.PEER_B.value,
      clip_radius=script_flags.PEER_CLIP_RADIUS.value,
      byzantine_fraction=(script_flags.PEER_BYZANTINE_FRACTION.value
                          if attacking else 0.0),
      attack=script_flags.PEER_ATTACK.value,
      attack_scale=script_flags.PEER_ATTACK_SCALE.value,
      eval_nodes=script_flags.EVAL_NODES.value,
      variance_correction=script_flags.VARIANCE_CORRECTION.value,
      independent_init=script_flags.INDEPENDENT_INIT.value)


def _dp_sgd_config() -> dp_sgd.DPSGDConfig | None:
  if script_flags.DP_SGD_CLIP_NORM.value is None:
    return None
  return dp_sgd.DPSGDConfig(script_flags.DP_SGD_CLIP_NORM.value,
                            script_flags.DP_SGD_NOISE_MULTIPLIER.value)


def _lora_config() -> lora.LoRAConfig:
  return lora.LoRAConfig(rank=script_flags.LORA_RANK.value,
                         alpha=script_flags.LORA_ALPHA.value,
                         targets=script_flags.LORA_TARGETS.value)


def model_keywords(dataset: fedjax_core.FederatedDataset) -> dict:
  """`models.get_model`'s keywords for `dataset`: how many token ids its
  inputs take, and logits per position for per-position targets."""
  return dict(input_vocab=dataset.input_vocab,
              per_position=dataset.target_kind == targets.TOKENS)


def personal_layers(name: str, dataset) -> str | None:
  """--personal_layers of algorithm `name`, by default `name`'s split of
  --model's head for `dataset`; None for the algorithms that do not split
  the model."""
  if name not in algorithms.SPLIT_MODEL_ALGORITHMS:
    return None
  if script_flags.PERSONAL_LAYERS.value:
    return script_flags.PERSONAL_LAYERS.value
  head = models.head_layers(script_flags.MODEL.value, dataset.example_shape,
                            dataset.num_classes, **model_keywords(dataset))
  return algorithms.default_personal_layers(name, head)


def build_algorithm(name: str, model: models.Model, dataset,
                    overrides: dict | None = None):
  """Builds algorithm `name` for `model` and `dataset` from the flags;
  `overrides` replaces the client_lr, server_lr or algorithm
  hyperparameters they name (numbers, or tracers of a run axis)."""
  overrides = dict(overrides or {})
  client_lr = overrides.pop('client_lr', script_flags.CLIENT_LR.value)
  server_lr = overrides.pop('server_lr', script_flags.SERVER_LR.value)
  hparams = algorithms.hyperparameters_for(
      name, algorithms.parse_hyperparameters(script_flags.HPARAMS.value))
  personal = name in algorithms.PERSONAL_ALGORITHMS
  return algorithms.build_algorithm(
      name, model.apply, num_clients=dataset.num_clients,
      client_optimizer=script_flags.CLIENT_OPTIMIZER.value,
      client_lr=client_lr,
      client_lr_decay=script_flags.CLIENT_LR_DECAY.value,
      weight_decay=script_flags.WEIGHT_DECAY.value,
      max_grad_norm=script_flags.MAX_GRAD_NORM.value,
      server_optimizer=script_flags.SERVER_OPTIMIZER.value,
      server_lr=server_lr,
      server_momentum=script_flags.SERVER_MOMENTUM.value,
      weighted=script_flags.WEIGHTED.value,
      hparams={**hparams, **overrides}, dp_sgd=_dp_sgd_config(),
      lora=_lora_config() if name in algorithms.LORA_ALGORITHMS else None,
      personal_layers=personal_layers(name, dataset),
      model_init=model.init if personal else None)


def vmapped_values(names: list[str]) -> tuple[str | None, list[float]]:
  """--vmapped_hparam as (name, values); (None, [None]) without it."""
  text = script_flags.VMAPPED_HPARAM.value
  if not text:
    return None, [None]
  name, sep, listed = text.partition('=')
  try:
    values = [float(v) for v in listed.split(':')] if sep else []
  except ValueError:
    values = []
  if not name or len(values) < 1:
    raise ValueError(f'--vmapped_hparam={text} is not NAME=V1:V2:... '
                     '(e.g. --vmapped_hparam=client_lr=0.01:0.03:0.1).')
  for algorithm in names:
    numbers = [k for k, v in algorithms.hyperparameters(algorithm).items()
               if isinstance(v, float)]
    if name not in ('client_lr', 'server_lr', *numbers):
      raise ValueError(
          f'--vmapped_hparam: {algorithm} has no scalar hyperparameter '
          f'{name!r}; valid: {", ".join(["client_lr", "server_lr", *numbers])}'
          '.')
  return name, values


def _check_hparam_targets(names: list[str]) -> None:
  """Rejects `ALGORITHM.NAME=VALUE` entries for algorithms not being run."""
  for key in algorithms.parse_hyperparameters(script_flags.HPARAMS.value):
    target, dot, _ = key.rpartition('.')
    if dot and target not in names:
      raise ValueError(f'--hparams entry {key!r} targets {target!r}, which '
                       f'is not in --algorithm={",".join(names)}.')


def check(names: list[str]) -> None:
  """Every check of the flags that needs no data, for algorithms `names`;
  raises ValueError naming the flag (or the engine's `SettingError`).
  Runs before anything is loaded or written."""
  for name in names:
    algorithms.hyperparameters(name)  # An unknown name is an error.
  _check_hparam_targets(names)
  script_flags.check_switches()
  mesh()  # A bad --mesh_shape fails before any data.
  if script_flags.NUM_SEEDS.value < 1:
    raise ValueError(f'--num_seeds must be positive, got '
                     f'{script_flags.NUM_SEEDS.value}.')
  vmapped_values(names)
  dataset = script_flags.DATASET.value
  num_clients = script_flags.NUM_CLIENTS.value
  if num_clients is not None and num_clients < 1:
    raise ValueError(f'--num_clients must be positive, got {num_clients}.')
  scheme = script_flags.PARTITION.value or datasets.default_partition(dataset)
  if scheme in ('dirichlet', 'dirichlet_equal'):
    try:
      partition.check_alpha(script_flags.DIRICHLET_ALPHA.value)
    except ValueError as e:
      raise ValueError(f'--dirichlet_alpha: {e}') from None
  local_tests = datasets.has_local_tests(
      script_flags.LOCAL_TEST_FRACTION.value, script_flags.LOCAL_TEST.value)
  datasets.check_local_test_fraction(script_flags.LOCAL_TEST_FRACTION.value,
                                     script_flags.LOCAL_TEST.value)
  datasets.check_holdout_clients(script_flags.HOLDOUT_CLIENTS.value,
                                 local_tests)
  personal = sorted(set(names) & set(algorithms.PERSONAL_ALGORITHMS))
  if personal and not local_tests:
    raise ValueError(
        f'--local_test_fraction: the personalized algorithms '
        f'({", ".join(personal)}) are scored on each client\'s own held-out '
        'rows; set --local_test_fraction (e.g. 0.2) or --local_test=source.')
  if num_clients is None:
    num_clients = datasets.default_num_clients(dataset)
  simulation_config(script_flags.SEED.value, None, False).validate(
      num_clients)
  decentralized = set(names) & set(algorithms.DECENTRALIZED_ALGORITHMS)
  if decentralized:
    _check_decentralized(sorted(decentralized), names, num_clients)


def _check_decentralized(decentralized: list[str], names: list[str],
                         num_nodes: int) -> None:
  """Rejects flags that decentralized algorithms do not read."""
  if len(decentralized) == len(names):
    for name in ('clients_per_round', 'participation'):
      if flags.FLAGS[name].present:
        raise ValueError(
            f'--{name} has no effect on decentralized algorithms '
            f'({", ".join(decentralized)}): every node (client) is a node of '
            'the graph; --active_nodes samples those that train a round.')
  if script_flags.VMAPPED_HPARAM.value:
    raise ValueError('--vmapped_hparam runs federated algorithms only; '
                     f'{", ".join(decentralized)} are decentralized. Run '
                     'each value on its own (scripts.sweep).')
  decentralized_lib.refuse_server_settings(
      simulation_config(script_flags.SEED.value, None, False))
  decentralized_lib.checked_topology(gossip_config(), num_nodes,
                                     script_flags.SEED.value)


def load_dataset(seed: int) -> fedjax_core.FederatedDataset:
  """The dataset the flags describe, partitioned with seed `seed`."""
  return datasets.load_dataset(
      script_flags.DATASET.value, num_clients=script_flags.NUM_CLIENTS.value,
      seed=seed, partition=script_flags.PARTITION.value,
      dirichlet_alpha=script_flags.DIRICHLET_ALPHA.value,
      classes_per_client=script_flags.CLASSES_PER_CLIENT.value,
      size_sigma=script_flags.SIZE_SIGMA.value,
      local_test_fraction=script_flags.LOCAL_TEST_FRACTION.value,
      holdout_clients=script_flags.HOLDOUT_CLIENTS.value,
      data_dir=script_flags.DATA_DIR.value,
      synthetic_alpha=script_flags.SYNTHETIC_ALPHA.value,
      synthetic_beta=script_flags.SYNTHETIC_BETA.value,
      part=script_flags.DATA_PART.value, hf=_hf_source(),
      local_test=script_flags.LOCAL_TEST.value,
      test_examples=script_flags.TEST_EXAMPLES.value)


def _hf_source() -> datasets.HFSource | None:
  """--hf_* as the source of dataset 'huggingface', or None when unset."""
  if script_flags.HF_PATH.value is None:
    return None
  if script_flags.HF_PARTITION_BY.value is None:
    raise errors.SettingError(
        'hf_partition_by', 'name the column whose values are the clients, '
        "e.g. FEMNIST's writer_id.")
  return datasets.HFSource(
      script_flags.HF_PATH.value, script_flags.HF_PARTITION_BY.value,
      features=script_flags.HF_FEATURES.value,
      label=script_flags.HF_LABEL.value)
