r"""Runs federated training from the command line.

With no flags it runs the quickstart: FedAvg against FedAdam on scikit-learn's
digits split over 20 clients by Dirichlet(0.5) label skew, then prints an
accuracy table. `--algorithm` takes one name or a comma-separated list; with
a list each algorithm gets its own `WORKDIR/NAME/` and the table compares
them. `--num_seeds` (and `--vmapped_hparam`) run several seeds (and values)
of each algorithm as one compiled program, each in `WORKDIR/[NAME/]seed_K/`.
`--init_checkpoint` starts from a base that `scripts.pretrain` wrote, which
`--algorithm=fedlora|ffa_lora` fine-tunes through LoRA adapters.
Re-run with the same `--workdir` to resume from the last checkpoint.

Examples:
  python -m scripts.train
  python -m scripts.train --algorithm=fedyogi --dataset=synthetic \
      --model=logreg --local_steps=20 --num_rounds=200 --workdir=/tmp/run
  python -m scripts.train --flagfile=my_run.flags
  python -m scripts.train --algorithm=fedsam --num_seeds=4 \
      --vmapped_hparam=rho=0.01:0.05:0.1 --workdir=/tmp/rho
  python -m scripts.pretrain --workdir=/tmp/base
  python -m scripts.train --algorithm=fedlora,ffa_lora \
      --dataset=pydoc_topics --data_part=finetune --model=transformer \
      --init_checkpoint=/tmp/base/base --lora_rank=4 --workdir=/tmp/lora
"""

import glob
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import optax

import algorithms
import fedjax_core
from fedjax_core import aggregation
from fedjax_core import attacks
from fedjax_core import compression
from fedjax_core import datasets
from fedjax_core import distributed
from fedjax_core import dp_sgd
from fedjax_core import lora
from fedjax_core import optimizers
from fedjax_core import partition
from fedjax_core import partition_report
from fedjax_core import placement
from fedjax_core import pretrained
from fedjax_core import privacy
from fedjax_core import privacy_accounting
from fedjax_core import simulation
from fedjax_core import uplink
import models
from scripts import placement_flags
from scripts import run_config

_ALGORITHM = flags.DEFINE_list(
    'algorithm', ['fedavg', 'fedadam'],
    f'Algorithm, or a comma-separated list to compare: '
    f'{", ".join(algorithms.ALGORITHM_NAMES)}.')
_DATASET = flags.DEFINE_enum(
    'dataset', 'digits', datasets.DATASET_NAMES,
    'Dataset. digits and synthetic need no download; the others are read '
    'from a prepared TFDS data directory (--data_dir).')
_DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'TFDS data directory (default: $TFDS_DATA_DIR, else '
    '~/tensorflow_datasets).')
_DATA_PART = flags.DEFINE_enum(
    'data_part', 'all', datasets.DATA_PARTS, 'Part of the dataset to use: '
    'all, or one of two disjoint halves (by document or speaker for text, '
    'by label otherwise), to pre-train on one (scripts.pretrain) and '
    'fine-tune on the other.')
_MODEL = flags.DEFINE_enum('model', 'mlp', models.MODEL_NAMES, 'Model.')
_NUM_CLIENTS = flags.DEFINE_integer(
    'num_clients', None, 'Population size (default: 20 for digits, 30 '
    'devices for synthetic, 100 for the TFDS datasets).')
_PARTITION = flags.DEFINE_enum(
    'partition', None, partition.PARTITION_NAMES,
    'How the training set is split across clients: iid; dirichlet (per-class '
    'proportions ~ Dir(alpha), unequal sizes, Hsu et al. 2019); '
    'dirichlet_equal (per-client class priors ~ Dir(alpha), equal sizes, '
    'FedDyn / FL-Simulator); pathological (--classes_per_client shards, '
    'McMahan et al. 2017); quantity_skew (lognormal sizes, IID labels); '
    'natural (by device; synthetic only). Default: natural for synthetic, '
    'dirichlet otherwise.')
_DIRICHLET_ALPHA = flags.DEFINE_float(
    'dirichlet_alpha', 0.5, 'Concentration of the Dirichlet partitions '
    '(smaller is more skewed).')
_CLASSES_PER_CLIENT = flags.DEFINE_integer(
    'classes_per_client', 2, 'Shards (about classes) per client of the '
    'pathological partition.')
_SIZE_SIGMA = flags.DEFINE_float(
    'size_sigma', None, 'Lognormal sigma of client sizes for quantity_skew '
    '(default 1) and dirichlet_equal (default 0: equal sizes).')
_LOCAL_TEST_FRACTION = flags.DEFINE_float(
    'local_test_fraction', 0.0, 'Share of each client\'s examples held out '
    'as its own test split; evaluation then also reports the mean and 10th '
    'percentile of per-client accuracy.')
_AUGMENT = flags.DEFINE_bool(
    'augment', False, 'Random crop (padding H/8) and horizontal flip of '
    'every local batch, inside the compiled round (the CIFAR recipe).')
_SIZE_BUCKETS = flags.DEFINE_integer(
    'size_buckets', 4, 'Most local-step counts a run compiles for: a round '
    'pads its clients to the smallest bucket that fits its largest one.')
_SYNTHETIC_ALPHA = flags.DEFINE_float(
    'synthetic_alpha', 1.0, 'Model heterogeneity alpha of Synthetic(a, b).')
_SYNTHETIC_BETA = flags.DEFINE_float(
    'synthetic_beta', 1.0, 'Data heterogeneity beta of Synthetic(a, b).')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 5,
                                          'Cohort size.')
_NUM_ROUNDS = flags.DEFINE_integer('num_rounds', 50, 'Rounds to run.')
_LOCAL_EPOCHS = flags.DEFINE_integer(
    'local_epochs', None, 'Local passes over the client data (default 1 '
    'unless --local_steps is set).')
_LOCAL_STEPS = flags.DEFINE_integer(
    'local_steps', None, 'Fixed local steps per round instead of epochs.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 10, 'Local batch size.')
_CLIENT_OPTIMIZER = flags.DEFINE_enum(
    'client_optimizer', 'sgd', optimizers.CLIENT_OPTIMIZERS,
    'Local optimizer.')
_CLIENT_LR = flags.DEFINE_float('client_lr', 0.05, 'Local learning rate.')
_CLIENT_LR_DECAY = flags.DEFINE_float(
    'client_lr_decay', 1.0, 'Multiply the local learning rate by this every '
    'round (FL-Simulator: 0.998).')
_WEIGHT_DECAY = flags.DEFINE_float(
    'weight_decay', 0.0, 'Coupled L2 weight decay of the local steps '
    '(FL-Simulator: 1e-3).')
_MAX_GRAD_NORM = flags.DEFINE_float(
    'max_grad_norm', None, 'Clip each local gradient to this global norm '
    '(FL-Simulator: 10); default: no clipping.')
_HPARAMS = flags.DEFINE_string(
    'hparams', '', 'The algorithm\'s own hyperparameters as NAME=VALUE,... '
    '(e.g. mu=0.01 for fedprox, rho=0.05 for fedsam, form=reference for '
    'fedspeed); ALGORITHM.NAME=VALUE targets one algorithm of a list. An '
    'unknown name is an error that lists the valid ones.')
_SERVER_OPTIMIZER = flags.DEFINE_enum(
    'server_optimizer', None, optimizers.SERVER_OPTIMIZERS,
    'Server optimizer (default: the one the algorithm stands for).')
_SERVER_LR = flags.DEFINE_float(
    'server_lr', None, 'Server learning rate (default: per algorithm, 1.0 '
    'for fedavg/fedavgm, 0.01 for fedadam/fedyogi, 0.1 for fedadagrad).')
_SERVER_MOMENTUM = flags.DEFINE_float(
    'server_momentum', 0.9, 'Momentum of the server optimizer "momentum".')
_WEIGHTED = flags.DEFINE_bool(
    'weighted', None, 'Weight client updates by example count (default: yes '
    'for the FedAvg family; the local-SGD family averages uniformly).')
_PARTICIPATION = flags.DEFINE_enum(
    'participation', 'fixed', simulation.PARTICIPATIONS,
    'fixed: --clients_per_round clients a round; bernoulli: each client '
    'takes part with probability clients_per_round / num_clients.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of everything random.')
_NUM_SEEDS = flags.DEFINE_integer(
    'num_seeds', 1, 'Runs seeds --seed, ..., --seed + S - 1 as one compiled '
    'program (a leading run axis over every state); each seed K writes '
    'WORKDIR/seed_K/. Each equals the single run of its seed.')
_VMAPPED_HPARAM = flags.DEFINE_string(
    'vmapped_hparam', None, 'NAME=V1:V2:... runs these values of one scalar '
    'hyperparameter (client_lr, server_lr, or a number of --hparams, e.g. '
    'rho or mu) in the same compiled program, times --num_seeds; each value '
    'writes WORKDIR/NAME=V/seed_K/.')
_EVAL_EVERY = flags.DEFINE_integer(
    'eval_every', 5, 'Evaluate every this many rounds (0: only at the end).')
_CHECKPOINT_EVERY = flags.DEFINE_integer(
    'checkpoint_every', 10, 'Checkpoint every this many rounds.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Output directory (default: a new runs/TIMESTAMP).')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Resume a workdir although one of '
    f'--{", --".join(sorted(run_config.SAFE_TO_CHANGE))} differs from its '
    'flags.json (the change is recorded there). Other flags never change '
    'within a workdir.')
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 of a multi-process '
    'run (jax.distributed); give --num_processes and --process_id too. '
    'Under a TPU pod, SLURM or Open MPI launch, leave all three unset: they '
    'are read from the environment. Only process 0 prints and writes logs.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Processes of a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process\'s index in a multi-process run, from '
    '0.')
_CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices', None, 'On CPU, JAX devices to split the host into; the '
    'cohort is sharded over them (default: one per core; 1 disables).')
_AGGREGATOR = flags.DEFINE_enum(
    'aggregator', 'mean', aggregation.AGGREGATORS,
    'mean: the weighted mean in the clear; secure: secure aggregation '
    '(Bonawitz et al. 2017): fixed-point words in Z_(2^bits), pairwise and '
    'self masks, dropped clients\' masks recovered from Shamir shares. '
    'Byzantine-robust: median and trimmed_mean (coordinate-wise), krum and '
    'multi_krum (Blanchard et al. 2017), geometric_median (RFA, Pillutla et '
    'al.), centered_clip (Karimireddy et al. 2021), monna (client momentum '
    'and nearest-neighbour averaging, Farhadkhani et al. 2023).')
_ROBUST_F = flags.DEFINE_integer(
    'robust_f', None, 'Robust aggregation: Byzantine clients per round the '
    'rule tolerates (trimmed each side, Krum\'s f, mixing neighbours n - f); '
    'default: the attack\'s Byzantine count per round, at least 1.')
_NNM = flags.DEFINE_bool(
    'nnm', False, 'Nearest-neighbour mixing (Allouah et al. 2023) before the '
    'aggregation rule: each update becomes the mean of its n - f nearest.')
_KRUM_SELECTED = flags.DEFINE_integer(
    'krum_selected', None, 'multi_krum: clients averaged (default n - f).')
_RFA_ITERS = flags.DEFINE_integer(
    'rfa_iters', 3, 'geometric_median: smoothed Weiszfeld iterations.')
_RFA_SMOOTHING = flags.DEFINE_float(
    'rfa_smoothing', 1e-6, 'geometric_median: smoothing nu.')
_CC_RADIUS = flags.DEFINE_float(
    'cc_radius', 1.0, 'centered_clip: clipping radius tau around the '
    'previous round\'s aggregate.')
_CC_ITERS = flags.DEFINE_integer('cc_iters', 1,
                                 'centered_clip: clipping iterations.')
_MONNA_MOMENTUM = flags.DEFINE_float(
    'monna_momentum', 0.9, 'monna: the clients\' momentum beta.')
_ATTACK = flags.DEFINE_enum(
    'attack', 'none', attacks.ATTACKS,
    'Byzantine attack of --byzantine_fraction of each cohort: sign_flip, '
    'gaussian noise, label_flip (data poisoning), alie (A Little Is Enough, '
    'Baruch et al. 2019), ipm (Inner Product Manipulation, Xie et al. 2020).')
_BYZANTINE_FRACTION = flags.DEFINE_float(
    'byzantine_fraction', 0.2, 'Share of each cohort\'s clients that are '
    'Byzantine (seeded, redrawn every round).')
_ATTACK_SCALE = flags.DEFINE_float(
    'attack_scale', 1.0, 'sign_flip: Byzantine clients send -scale x their '
    'update.')
_ATTACK_STDDEV = flags.DEFINE_float(
    'attack_stddev', 1.0, 'gaussian: std of the noise Byzantine clients '
    'send.')
_ALIE_Z = flags.DEFINE_float(
    'alie_z', None, 'alie: the z of mean - z std (default: the paper\'s '
    'z_max for the cohort).')
_IPM_EPSILON = flags.DEFINE_float(
    'ipm_epsilon', 0.1, 'ipm: Byzantine clients send -epsilon x the honest '
    'mean.')
_COMPRESSOR = flags.DEFINE_enum(
    'compressor', 'none', compression.COMPRESSORS,
    'Client -> server compression, per layer: topk (with error feedback), '
    'qsgd (unbiased stochastic quantization, Alistarh et al. 2017), sign '
    '(scaled sign with error feedback, Karimireddy et al. 2019), fedzip '
    '(top-z, k-means clustering and entropy coding, Malekijoo et al. 2021).')
_COMPRESS_FRACTION = flags.DEFINE_float(
    'compress_fraction', 0.01, 'topk / fedzip: share of each layer\'s '
    'coordinates sent.')
_QSGD_LEVELS = flags.DEFINE_integer('qsgd_levels', 16,
                                    'qsgd: quantization levels s.')
_FEDZIP_CLUSTERS = flags.DEFINE_integer(
    'fedzip_clusters', 3, 'fedzip: k-means clusters per layer.')
_COMPRESS_DOWN = flags.DEFINE_bool(
    'compress_down', False, 'Also compress the model broadcast with '
    '--compressor: the server keeps the clients\' model b and sends '
    'C(x - b) every round.')
_SECAGG_BITS = flags.DEFINE_integer(
    'secagg_bits', 32, 'Secure aggregation: bits b of the modulus 2^b.')
_SECAGG_CLIP = flags.DEFINE_float(
    'secagg_clip', 1.0, 'Secure aggregation: each coordinate is clipped to '
    '[-clip, clip] before encoding (metric secagg_clipped_fraction).')
_SECAGG_SCALE = flags.DEFINE_float(
    'secagg_scale', None, 'Secure aggregation: fixed-point scale (default: '
    'the largest power of two for which the cohort\'s sum cannot wrap).')
_SECAGG_DROPOUT = flags.DEFINE_float(
    'secagg_dropout_fraction', 0.0, 'Secure aggregation: share of each '
    'cohort that drops after masking; the survivors\' sum is still exact.')
_SECAGG_THRESHOLD = flags.DEFINE_integer(
    'secagg_threshold', None, 'Secure aggregation: t of the t-of-n Shamir '
    'sharing (default: a majority of the cohort); fewer survivors is an '
    'error.')
_DP_CLIP_NORM = flags.DEFINE_float(
    'dp_clip_norm', None, 'Client-level DP-FedAvg (McMahan et al. 2018): '
    'clip every client update to this L2 norm; setting it turns DP on.')
_DP_NOISE = flags.DEFINE_float(
    'dp_noise_multiplier', None, 'DP: noise std on the update sum over the '
    'clip norm (default: calibrated to --dp_target_epsilon).')
_DP_DELTA = flags.DEFINE_float('dp_delta', 1e-5,
                               'DP: the delta epsilon is reported at.')
_DP_TARGET_EPSILON = flags.DEFINE_float(
    'dp_target_epsilon', None, 'DP: stop before a round that would spend '
    'more; without --dp_noise_multiplier, calibrate the noise so that '
    '--num_rounds spend exactly this.')
_DP_SAMPLING = flags.DEFINE_enum(
    'dp_sampling', None, privacy_accounting.SAMPLINGS,
    'DP: cohort sampling to account for. poisson: each client takes part '
    'with probability clients_per_round / num_clients (sets '
    '--participation=bernoulli); fixed: clients_per_round without '
    'replacement. Default: as --participation.')
_DP_ACCOUNTANT = flags.DEFINE_enum(
    'dp_accountant', 'rdp', privacy_accounting.ACCOUNTANTS,
    'DP: dp-accounting\'s RDP or PLD accountant (PLD is tighter and '
    'slower, Poisson sampling only).')
_DP_PER_LAYER = flags.DEFINE_bool(
    'dp_per_layer_clip', False, 'DP: clip each layer to clip / sqrt(layers) '
    'instead of the whole update to clip.')
_DP_TARGET_QUANTILE = flags.DEFINE_float(
    'dp_target_quantile', None, 'DP: adapt the clip norm to this quantile of '
    'the update norms (Andrew et al. 2021; e.g. 0.5); default: fixed clip.')
_DP_CLIP_LR = flags.DEFINE_float(
    'dp_clip_learning_rate', 0.2, 'DP: learning rate of the geometric '
    'adaptive clip update.')
_DP_COUNT_STDDEV = flags.DEFINE_float(
    'dp_count_stddev', None, 'DP: noise std of adaptive clipping\'s '
    'unclipped count (default: clients_per_round / 20).')
_DP_SGD_CLIP = flags.DEFINE_float(
    'dp_sgd_clip_norm', None, 'Sample-level DP-SGD on each client (FedAvg '
    'family): clip every example\'s gradient to this norm; turns it on.')
_DP_SGD_NOISE = flags.DEFINE_float(
    'dp_sgd_noise_multiplier', 1.0, 'DP-SGD: noise std over the per-example '
    'clip norm.')
_LORA_RANK = flags.DEFINE_integer(
    'lora_rank', 8, 'fedlora / ffa_lora: rank r of the adapters.')
_LORA_ALPHA = flags.DEFINE_float(
    'lora_alpha', 16.0, 'fedlora / ffa_lora: the update is scaled by '
    'alpha / r.')
_LORA_TARGETS = flags.DEFINE_string(
    'lora_targets', lora.DEFAULT_TARGETS, 'fedlora / ffa_lora: regular '
    'expression over kernel paths (e.g. params/block_0/attention/query/'
    'kernel) choosing the adapted kernels.')
_INIT_CHECKPOINT = flags.DEFINE_string(
    'init_checkpoint', None, 'Start from this pre-trained base (the base/ '
    'directory scripts.pretrain writes) instead of a random init.')


_DP_FLAGS = ('dp_noise_multiplier', 'dp_target_epsilon', 'dp_sampling',
             'dp_per_layer_clip', 'dp_target_quantile',
             'dp_clip_learning_rate', 'dp_count_stddev')
_SECAGG_FLAGS = ('secagg_bits', 'secagg_clip', 'secagg_scale',
                 'secagg_dropout_fraction', 'secagg_threshold')
_ROBUST_FLAGS = ('robust_f', 'krum_selected', 'rfa_iters', 'rfa_smoothing',
                 'cc_radius', 'cc_iters', 'monna_momentum')
_ATTACK_FLAGS = ('byzantine_fraction', 'attack_scale', 'attack_stddev',
                 'alie_z', 'ipm_epsilon')
_COMPRESSION_FLAGS = ('compress_fraction', 'qsgd_levels', 'fedzip_clusters',
                      'compress_down')
_LORA_FLAGS = ('lora_rank', 'lora_alpha', 'lora_targets')


def _check_flag_groups() -> None:
  """Rejects settings of a feature that is off."""
  groups = ((_SECAGG_FLAGS, _AGGREGATOR.value == 'secure',
             '--aggregator=secure'),
            (_DP_FLAGS, _DP_CLIP_NORM.value is not None, '--dp_clip_norm'),
            (('dp_sgd_noise_multiplier',), _DP_SGD_CLIP.value is not None,
             '--dp_sgd_clip_norm'),
            (_ROBUST_FLAGS, _robust_rule() is not None,
             'a robust --aggregator (or --nnm)'),
            (_ATTACK_FLAGS, _ATTACK.value != 'none', '--attack'),
            (_COMPRESSION_FLAGS, _COMPRESSOR.value != 'none',
             '--compressor'),
            (_LORA_FLAGS, bool(set(_ALGORITHM.value)
                               & set(algorithms.LORA_ALGORITHMS)),
             '--algorithm=fedlora or ffa_lora'))
  for names, enabled, switch in groups:
    for name in names:
      if flags.FLAGS[name].present and not enabled:
        raise ValueError(f'--{name} has no effect without {switch}; add '
                         f'{switch} or drop --{name}.')


def _participation() -> str:
  """--participation, as --dp_sampling may set it."""
  sampling = _DP_SAMPLING.value
  if sampling is None:
    return _PARTICIPATION.value
  implied = 'bernoulli' if sampling == 'poisson' else 'fixed'
  if flags.FLAGS['participation'].present and _PARTICIPATION.value != implied:
    raise ValueError(f'--dp_sampling={sampling} needs '
                     f'--participation={implied}, got '
                     f'--participation={_PARTICIPATION.value}.')
  return implied


def _privacy_settings() -> dict:
  """The SimulationConfig fields of secure aggregation and DP."""
  settings = {}
  if _AGGREGATOR.value == 'secure':
    settings['secure_aggregation'] = aggregation.SecureAggregation(
        bits=_SECAGG_BITS.value, clip=_SECAGG_CLIP.value,
        scale=_SECAGG_SCALE.value,
        dropout_fraction=_SECAGG_DROPOUT.value,
        threshold=_SECAGG_THRESHOLD.value)
  if _DP_CLIP_NORM.value is not None:
    settings['client_dp'] = privacy.ClientDPSettings(
        clip_norm=_DP_CLIP_NORM.value, noise_multiplier=_DP_NOISE.value,
        delta=_DP_DELTA.value, target_epsilon=_DP_TARGET_EPSILON.value,
        accountant=_DP_ACCOUNTANT.value, per_layer=_DP_PER_LAYER.value,
        target_quantile=_DP_TARGET_QUANTILE.value,
        clip_learning_rate=_DP_CLIP_LR.value,
        count_stddev=_DP_COUNT_STDDEV.value)
  if _DP_SGD_CLIP.value is not None:
    settings['sample_dp'] = privacy.SampleDPSettings(
        _DP_SGD_NOISE.value, delta=_DP_DELTA.value,
        accountant=_DP_ACCOUNTANT.value)
  return settings


def _robust_rule() -> str | None:
  """The robust rule --aggregator and --nnm ask for, or None."""
  if _AGGREGATOR.value in aggregation.ROBUST_RULES:
    return _AGGREGATOR.value
  if _NNM.value:
    if _AGGREGATOR.value != 'mean':
      raise ValueError('--nnm mixes individual updates, which '
                       '--aggregator=secure hides; drop one of them.')
    return 'mean'
  return None


def _byzantine_settings() -> dict:
  """The SimulationConfig fields of robust aggregation, attacks and
  compression."""
  settings = {}
  attack = None
  if _ATTACK.value != 'none':
    attack = settings['attack'] = attacks.Attack(
        _ATTACK.value, fraction=_BYZANTINE_FRACTION.value,
        scale=_ATTACK_SCALE.value, stddev=_ATTACK_STDDEV.value,
        alie_z=_ALIE_Z.value, ipm_epsilon=_IPM_EPSILON.value)
  rule = _robust_rule()
  if rule is not None:
    f = _ROBUST_F.value
    if f is None:
      f = 1 if attack is None else max(
          1, attack.num_byzantine(_CLIENTS_PER_ROUND.value))
    settings['robust'] = aggregation.RobustAggregation(
        rule, num_byzantine=f, nnm=_NNM.value,
        num_selected=_KRUM_SELECTED.value, rfa_iters=_RFA_ITERS.value,
        rfa_smoothing=_RFA_SMOOTHING.value, clip_radius=_CC_RADIUS.value,
        clip_iters=_CC_ITERS.value, momentum=_MONNA_MOMENTUM.value)
  if _COMPRESSOR.value != 'none':
    settings['uplink'] = uplink.Uplink(
        _COMPRESSOR.value, fraction=_COMPRESS_FRACTION.value,
        levels=_QSGD_LEVELS.value, num_clusters=_FEDZIP_CLUSTERS.value)
    if _COMPRESS_DOWN.value:
      settings['downlink'] = settings['uplink']
  return settings


def _byzantine_line(config: simulation.SimulationConfig) -> str:
  """One line saying who attacks and which rule defends."""
  parts = []
  if config.attack is not None:
    count = config.attack.num_byzantine(config.clients_per_round)
    parts.append(f'{count} of {config.clients_per_round} clients a round '
                 f'attack by {config.attack.name}')
  robust = config.robust
  if robust is not None:
    mixing = ' after nearest-neighbour mixing' if robust.nnm else ''
    parts.append(f'aggregation by {robust.rule}{mixing} tolerating f='
                 f'{robust.num_byzantine}')
  elif config.secure_aggregation is not None:
    parts.append('aggregation by secure aggregation')
  else:
    parts.append('aggregation by the plain mean')
  return '; '.join(parts)


def _dp_sgd() -> dp_sgd.DPSGDConfig | None:
  if _DP_SGD_CLIP.value is None:
    return None
  return dp_sgd.DPSGDConfig(_DP_SGD_CLIP.value, _DP_SGD_NOISE.value)


def _build(name: str, apply_fn, num_clients: int,
           overrides: dict | None = None):
  """Builds algorithm `name` from the flags; `overrides` replaces the
  client_lr, server_lr or algorithm hyperparameters they name (numbers, or
  tracers of a run axis)."""
  overrides = dict(overrides or {})
  client_lr = overrides.pop('client_lr', _CLIENT_LR.value)
  server_lr = overrides.pop('server_lr', _SERVER_LR.value)
  hparams = algorithms.hyperparameters_for(
      name, algorithms.parse_hyperparameters(_HPARAMS.value))
  return algorithms.build_algorithm(
      name, apply_fn, num_clients=num_clients,
      client_optimizer=_CLIENT_OPTIMIZER.value, client_lr=client_lr,
      client_lr_decay=_CLIENT_LR_DECAY.value,
      weight_decay=_WEIGHT_DECAY.value, max_grad_norm=_MAX_GRAD_NORM.value,
      server_optimizer=_SERVER_OPTIMIZER.value, server_lr=server_lr,
      server_momentum=_SERVER_MOMENTUM.value, weighted=_WEIGHTED.value,
      hparams={**hparams, **overrides}, dp_sgd=_dp_sgd(),
      lora=_lora_config() if name in algorithms.LORA_ALGORITHMS else None)


def _lora_config() -> lora.LoRAConfig:
  return lora.LoRAConfig(rank=_LORA_RANK.value, alpha=_LORA_ALPHA.value,
                         targets=_LORA_TARGETS.value)


def _vmapped_values(names: list[str]) -> tuple[str | None, list[float]]:
  """--vmapped_hparam as (name, values); (None, [None]) without it."""
  text = _VMAPPED_HPARAM.value
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
  for key in algorithms.parse_hyperparameters(_HPARAMS.value):
    target, dot, _ = key.rpartition('.')
    if dot and target not in names:
      raise ValueError(f'--hparams entry {key!r} targets {target!r}, which '
                       f'is not in --algorithm={",".join(names)}.')


def _config(seed: int, workdir: str | None,
            progress: bool) -> simulation.SimulationConfig:
  return simulation.SimulationConfig(
      num_rounds=_NUM_ROUNDS.value, clients_per_round=_CLIENTS_PER_ROUND.value,
      batch_size=_BATCH_SIZE.value, local_epochs=_LOCAL_EPOCHS.value,
      local_steps=_LOCAL_STEPS.value, seed=seed,
      eval_every=_EVAL_EVERY.value, checkpoint_every=_CHECKPOINT_EVERY.value,
      workdir=workdir, progress=progress, **placement_flags.settings(),
      participation=_participation(), size_buckets=_SIZE_BUCKETS.value,
      augment=_AUGMENT.value, **_privacy_settings(),
      **_byzantine_settings())


def _describe(name: str, sim: simulation.Simulation, workdir: str) -> None:
  """Prints how `sim` runs: its buckets and loop, DP, attack and defense."""
  config = sim.config
  buckets = ', '.join(str(b) for b in sim.step_buckets)
  print(f'{name}: local steps of batch {config.batch_size} padded to '
        f'{buckets}, loop={sim.loop}, clients in parallel per device='
        f'{sim.clients_in_parallel or "all"}, state store='
        f'{sim.store.placement}, devices={sim.mesh.size}, '
        f'workdir={workdir}')
  if sim.privacy is not None:
    print(f'{name}: {sim.privacy.describe(sim.final_round)}; clip '
          f'{_DP_CLIP_NORM.value:g}')
  if config.robust is not None or config.attack is not None:
    print(f'{name}: {_byzantine_line(config)}')
  if name in algorithms.LORA_ALGORITHMS:
    trainable = optax.tree.size(sim.server_state.model.params)
    frozen = optax.tree.size(sim.server_state.frozen.value)
    print(f'{name}: LoRA rank {_LORA_RANK.value} (alpha '
          f'{_LORA_ALPHA.value:g}) on {_LORA_TARGETS.value!r}: {trainable:,} '
          f'trainable, {frozen:,} frozen parameters '
          f'({100 * trainable / (trainable + frozen):.2f}% trained)')


def _run_one(name: str, dataset, model, workdir: str, start) -> dict:
  """Trains algorithm `name` and returns its summary; calls `start()` once
  the run is built and checked, before it writes anything."""
  algorithm = _build(name, model.apply, dataset.num_clients)
  sim = simulation.Simulation(algorithm, model, dataset,
                              _config(_SEED.value, workdir, _PROGRESS.value),
                              mesh=placement_flags.mesh())
  start()
  _describe(name, sim, workdir)
  summary = sim.run()
  _report(name, summary)
  return summary


def _report(name: str, summary: dict) -> None:
  """Prints what a run's summary says beyond the table: where it resumed
  and whether the privacy budget stopped it."""
  if 'resumed_from_round' in summary:
    print(f'{name}: resumed from round {summary["resumed_from_round"]}')
  if 'stopped_by_privacy_budget' in summary:
    print(f'{name}: {summary["stopped_by_privacy_budget"]}')


def _run_vmapped(name: str, datasets_by_seed: dict, model, workdir: str,
                 start) -> dict[str, dict]:
  """Trains algorithm `name` for every seed (and --vmapped_hparam value) in
  one compiled program; returns each run's summary by its directory. Calls
  `start()` as `_run_one` does."""
  hparam, values = _vmapped_values([name])
  runs, labels = [], []
  for value in values:
    overrides = {} if hparam is None else {hparam: value}
    for seed, dataset in datasets_by_seed.items():
      label = os.path.join(*([] if hparam is None else [f'{hparam}={value:g}']),
                           f'seed_{seed}')
      sim = simulation.Simulation(
          _build(name, model.apply, dataset.num_clients, overrides), model,
          dataset, _config(seed, None, False), mesh=placement_flags.mesh())
      runs.append(fedjax_core.Run(sim, os.path.join(workdir, label),
                                  overrides))
      labels.append(label)
  start()
  for run in runs:
    _write_partition(run.workdir, run.simulation.dataset)
  _describe(name, runs[0].simulation, workdir)
  print(f'{name}: {len(runs)} runs ({", ".join(labels)}) in one program')
  group = fedjax_core.VmappedRuns(
      runs, workdir=workdir, progress=_PROGRESS.value,
      algorithm_for=lambda h: _build(name, model.apply,
                                     runs[0].simulation.dataset.num_clients,
                                     h))
  summaries = dict(zip(labels, group.run()))
  for label, summary in summaries.items():
    _report(f'{name}/{label}', summary)
  return summaries


def _write_partition(workdir: str, dataset) -> str:
  """Writes WORKDIR/partition.json and partition.png; returns a one-line
  summary of the split (process 0 only; others write nothing)."""
  if not placement.is_main_process():
    return ''
  os.makedirs(workdir, exist_ok=True)
  info = dataset.partition_info
  counts = partition_report.label_counts(
      dataset.train_y, dataset.client_indices, dataset.num_classes)
  summary = partition_report.write_partition_json(
      os.path.join(workdir, 'partition.json'), dataset.client_indices,
      counts, scheme=info['scheme'], args=info['args'],
      local_test_indices=dataset.local_test_indices)
  partition_report.plot_heatmap(
      os.path.join(workdir, 'partition.png'), counts,
      title=f'{dataset.name}, {info["scheme"]} partition')
  size, entropy = summary['client_size'], summary['label_entropy_bits']
  return (f'{info["scheme"]} partition: {summary["num_clients"]} clients '
          f'of {size["min"]}-{size["max"]} examples (median '
          f'{size["median"]:g}); label entropy {entropy["mean"]:.2f} of '
          f'{entropy["max_possible"]:.2f} bits on average; heatmap in '
          f'{workdir}/partition.png')


def _load_dataset(seed: int):
  return datasets.load_dataset(
      _DATASET.value, num_clients=_NUM_CLIENTS.value, seed=seed,
      partition=_PARTITION.value, dirichlet_alpha=_DIRICHLET_ALPHA.value,
      classes_per_client=_CLASSES_PER_CLIENT.value,
      size_sigma=_SIZE_SIGMA.value,
      local_test_fraction=_LOCAL_TEST_FRACTION.value,
      data_dir=_DATA_DIR.value, synthetic_alpha=_SYNTHETIC_ALPHA.value,
      synthetic_beta=_SYNTHETIC_BETA.value, part=_DATA_PART.value)


def _model(dataset) -> models.Model:
  """--model for `dataset`, initialized from --init_checkpoint's base if
  one is given."""
  model = models.get_model(_MODEL.value, dataset.example_shape,
                           dataset.num_classes)
  path = _INIT_CHECKPOINT.value
  if path is None:
    return model
  params, info = pretrained.load_base(
      path, jax.eval_shape(model.init, jax.random.key(0)),
      {'model': _MODEL.value, 'example_shape': dataset.example_shape,
       'num_classes': dataset.num_classes})
  print(f'Base {path}: pre-trained on {info.get("dataset")} (part '
        f'{info.get("data_part")}) for {info.get("step")} steps')
  return models.Model(init=lambda rng: params, apply=model.apply)


def _seed_means(summaries: dict[str, dict]) -> list[str]:
  """`NAME: final test accuracy MEAN +- STD over S seeds` for each group of
  runs that differ only in seed (std with ddof=1)."""
  groups = {}
  for name, summary in summaries.items():
    group, sep, _ = name.rpartition('/seed_')
    if sep and 'final_test_accuracy' in summary:
      groups.setdefault(group, []).append(summary['final_test_accuracy'])
  return [f'{group}: final test accuracy {np.mean(accs):.4f} +- '
          f'{np.std(accs, ddof=1):.4f} over {len(accs)} seeds'
          for group, accs in groups.items() if len(accs) > 1]


def format_table(summaries: dict[str, dict]) -> str:
  """A plain-text table of each algorithm's accuracy and time (and the
  epsilon spent, under DP); a run that diverged shows where instead.

  `wall s` is the time of all its rounds, compiles included, evaluation
  excluded; `s/round` the mean round once compiled.
  """
  private = any('epsilon' in s for s in summaries.values())
  width = max([12, *map(len, summaries)])
  header = (f'{"algorithm":<{width}} {"final acc":>9} {"best acc":>9} '
            f'{"best round":>10} {"train loss":>10} {"wall s":>8} '
            f'{"s/round":>8}' + (f' {"epsilon":>8}' if private else ''))
  lines = [header, '-' * len(header)]
  for name, s in summaries.items():
    if 'diverged' in s:
      lines.append(f'{name:<{width}} {s["diverged"]}')
      continue
    per_round = s.get('s_per_round')
    lines.append(
        f'{name:<{width}} {s["final_test_accuracy"]:>9.4f} '
        f'{s["best_test_accuracy"]:>9.4f} {s["best_round"]:>10d} '
        f'{s["final_train_loss"]:>10.4f} {s["wall_s"]:>8.1f} '
        + (f'{per_round:>8.3f}' if per_round is not None else f'{"-":>8}')
        + (f' {s["epsilon"]:>8.3g}' if private else ''))
  return '\n'.join(lines)


def _check_flags(names: list[str]) -> None:
  """Every check of the flags that needs no data; raises ValueError naming
  the flag. Runs before anything is loaded or written."""
  for name in names:
    algorithms.hyperparameters(name)  # An unknown name is an error.
  _check_hparam_targets(names)
  _check_flag_groups()
  placement_flags.mesh()  # A bad --mesh_shape fails before any data.
  if _NUM_SEEDS.value < 1:
    raise ValueError(f'--num_seeds must be positive, got '
                     f'{_NUM_SEEDS.value}.')
  _vmapped_values(names)
  num_clients = _NUM_CLIENTS.value
  if num_clients is not None and num_clients < 1:
    raise ValueError(f'--num_clients must be positive, got {num_clients}.')
  scheme = _PARTITION.value or datasets.default_partition(_DATASET.value)
  alpha = _DIRICHLET_ALPHA.value
  if scheme in ('dirichlet', 'dirichlet_equal'):
    try:
      partition.check_alpha(alpha)
    except ValueError as e:
      raise ValueError(f'--dirichlet_alpha: {e}') from None
  datasets.check_local_test_fraction(_LOCAL_TEST_FRACTION.value)
  if num_clients is None:
    num_clients = datasets.default_num_clients(_DATASET.value)
  _config(_SEED.value, None, False).validate(num_clients)


def _check_workdir(workdir: str) -> dict | None:
  """The workdir's recorded configuration if this run may resume it (or
  None for a new workdir); raises `run_config.ConfigChangedError` if a
  flag differs. Reads only."""
  safe = run_config.SAFE_TO_CHANGE
  if _DP_CLIP_NORM.value is not None and _DP_NOISE.value is None:
    safe -= {'num_rounds'}  # The noise is calibrated to the run's length.
  return run_config.check(
      workdir, _recorded_flags(), allow_change=_ALLOW_CONFIG_CHANGE.value,
      safe=safe, defaults=_recorded_flags(defaults=True))


def _record_flags(workdir: str, recorded: dict | None) -> None:
  """Writes this run's flags to the workdir's record (`run_config`)."""
  run_config.write(workdir, _recorded_flags(), recorded,
                   _recorded_flags(defaults=True))


def _recorded_flags(defaults: bool = False) -> dict:
  """This run's result-affecting flags (or their defaults), by name."""
  return run_config.flag_values([sys.modules[__name__], placement_flags],
                                defaults)


def _quiet_logs() -> None:
  """Hides INFO lines of other libraries (jax's 'Unable to initialize
  backend' on machines without a TPU, orbax's per-save lines) unless
  --verbosity asks for them."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def main(argv):
  _quiet_logs()  # Before jax initializes its backends.
  if len(argv) > 1:
    sys.exit(f'error: unexpected arguments: {" ".join(argv[1:])}')
  placement.use_cpu_device_per_core(_CPU_DEVICES.value)
  try:
    distributed.initialize(_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value,
                           _PROCESS_ID.value)
  except ValueError as e:
    sys.exit(f'error: {e}')
  main_process = placement.is_main_process()
  if not main_process:
    sys.stdout = open(os.devnull, 'w')  # Process 0 reports for all.
  workdir = _WORKDIR.value or os.path.join(
      'runs', time.strftime('%Y%m%d-%H%M%S'))
  names = _ALGORITHM.value
  try:
    _check_flags(names)
    recorded = _check_workdir(workdir)
    # A workdir an older version trained: its flags are known once its
    # checkpoints have been restored under these.
    unrecorded = recorded is None and bool(glob.glob(
        os.path.join(workdir, '**', 'checkpoints'), recursive=True))
    if unrecorded:
      print(f'{workdir} has checkpoints but no {run_config.FILENAME}: its '
            'flags cannot be checked; these are recorded once the run ends.')
    vmapped = _NUM_SEEDS.value > 1 or bool(_VMAPPED_HPARAM.value)
    datasets_by_seed = {
        seed: _load_dataset(seed)
        for seed in range(_SEED.value, _SEED.value + _NUM_SEEDS.value)}
    dataset = datasets_by_seed[_SEED.value]
    model = _model(dataset)
    for name in names:  # Rejects bad names and settings before any training.
      _build(name, model.apply, dataset.num_clients)
    print(f'{dataset.name}: {len(dataset.train_y)} train / '
          f'{len(dataset.test_y)} test examples; model {_MODEL.value}')
    started = False

    def start():
      """Writes flags.json (unless `unrecorded`) and the partition once the
      first run is built and checked, so that a refused run leaves the
      workdir untouched."""
      nonlocal started
      if started or not main_process:
        return
      started = True
      if not unrecorded:
        _record_flags(workdir, recorded)
      if not vmapped:
        print(_write_partition(workdir, dataset))

    summaries, failures = {}, []
    for name in names:
      run_dir = os.path.join(workdir, name) if len(names) > 1 else workdir
      if vmapped:
        runs = _run_vmapped(name, datasets_by_seed, model, run_dir, start)
        for label, summary in runs.items():
          summaries[f'{name}/{label}'] = summary
          if 'diverged' in summary:
            failures.append(f'{name}/{label}: {summary["diverged"]}')
        continue
      try:
        summaries[name] = _run_one(name, dataset, model, run_dir, start)
      except simulation.TrainingDivergedError as e:
        # One diverging algorithm does not cost the comparison the others.
        print(f'{name}: {e}', file=sys.stderr)
        failures.append(f'{name}: {e}')
        summaries[name] = {'diverged': f'diverged (round {e.round_num})'}
    if unrecorded and main_process:  # Its checkpoints matched these flags.
      _record_flags(workdir, None)
  except ValueError as e:
    sys.exit(f'error: {e}')
  except KeyboardInterrupt:
    sys.exit(130)  # The simulation has said where its progress is saved.
  print()
  print(format_table(summaries))
  for line in _seed_means(summaries):
    print(line)
  print(f'\nMetrics and checkpoints: {workdir}')
  if failures:
    sys.exit('error: ' + '\n'.join(failures))


if __name__ == '__main__':
  app.run(main)
