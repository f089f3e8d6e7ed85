"""Every flag of the training command line, each defined once.

`scripts.train` reads them all; `scripts.benchmark` the placement flags
(`--loop`, `--clients_in_parallel`, `--state_store`, `--mesh_shape`,
`--cpu_devices`) and `scripts.sweep` `--workdir`. A flag that only acts
with a feature on records the switch that turns the feature on where it is
defined (`needs=`), and `check_switches` refuses it when the feature is off.
A flag that sets an engine setting of another name records that setting
(`sets=`), so that `describe` can name the flag behind an engine
`SettingError`. `scripts.config_from_flags` turns the flags into the
engine's configuration.

Examples:
  >>> flags.check_switches()  # After parsing: ValueError if a flag is idle.
  >>> flags.flag_for('robust.num_byzantine')
  'robust_f'
"""

from typing import Callable, Iterable, NamedTuple

from absl import app
from absl import flags

import algorithms
from fedjax_core import errors
from fedjax_core.channel import aggregation
from fedjax_core.channel import attacks
from fedjax_core.channel import compression
from fedjax_core.channel import gossip
from fedjax_core.channel import peer_robust
from fedjax_core.channel import privacy_accounting
from fedjax_core.channel import mixing_weights
from fedjax_core.data import datasets
from fedjax_core.data import partition
from fedjax_core.engine import simulation
from fedjax_core.toolkit import lora
from fedjax_core.toolkit import optimizers
import models
from scripts import run_config


class Switch(NamedTuple):
  """A feature that other flags act on only while it is on.

  Attributes:
    how: how to turn it on, as an error message says it.
    is_on: whether the parsed flags turn it on.
  """

  how: str
  is_on: Callable[[], bool]


# Each flag that acts only with a feature on -> that feature's switch.
_NEEDS: dict[str, Switch] = {}
# Engine settings whose flag has another name -> the flag's name.
SETTING_FLAGS: dict[str, str] = {}


def _define(define, name: str, *args, needs: Switch | None = None,
            sets: Iterable[str] = (), **kwargs) -> flags.FlagHolder:
  """`define(name, *args, **kwargs)`, recording the feature the flag needs
  and the engine settings it sets."""
  if needs is not None:
    _NEEDS[name] = needs
  for setting in sets:
    SETTING_FLAGS[setting] = name
  return define(name, *args, **kwargs)


def _both_links(field: str) -> tuple[str, str]:
  """`field` of the uplink and of the downlink, which --compress_down makes
  the uplink's settings."""
  return f'uplink.{field}', f'downlink.{field}'


_SECURE = Switch('--aggregator=secure',
                 lambda: AGGREGATOR.value == 'secure')
_CLIENT_DP = Switch('--dp_clip_norm', lambda: DP_CLIP_NORM.value is not None)
_DP_SGD = Switch('--dp_sgd_clip_norm',
                 lambda: DP_SGD_CLIP_NORM.value is not None)
_ROBUST = Switch(
    'a robust --aggregator (or --nnm)',
    lambda: AGGREGATOR.value in aggregation.ROBUST_RULES or NNM.value)
_ATTACKING = Switch('--attack', lambda: ATTACK.value != 'none')
_COMPRESSING = Switch('--compressor', lambda: COMPRESSOR.value != 'none')
_RQM = Switch('--rqm_clip', lambda: RQM_CLIP.value is not None)
_DECENTRALIZED = Switch(
    'a decentralized --algorithm '
    f'({"|".join(algorithms.DECENTRALIZED_ALGORITHMS)})',
    lambda: bool(set(ALGORITHM.value)
                 & set(algorithms.DECENTRALIZED_ALGORITHMS)))
_PEER_ATTACKING = Switch('--peer_attack',
                         lambda: PEER_ATTACK.value != 'none')
_LORA = Switch('--algorithm=fedlora or ffa_lora',
               lambda: bool(set(ALGORITHM.value)
                            & set(algorithms.LORA_ALGORITHMS)))
_PERSONAL = Switch(
    'a personalized --algorithm '
    f'({"|".join(algorithms.PERSONAL_ALGORITHMS)})',
    lambda: bool(set(ALGORITHM.value) & set(algorithms.PERSONAL_ALGORITHMS)))
_HUGGINGFACE = Switch('--dataset=huggingface',
                      lambda: DATASET.value == datasets.huggingface.NAME)
_SPLIT_MODEL = Switch(
    f'--algorithm={"|".join(algorithms.SPLIT_MODEL_ALGORITHMS)}',
    lambda: bool(set(ALGORITHM.value)
                 & set(algorithms.SPLIT_MODEL_ALGORITHMS)))

ALGORITHM = flags.DEFINE_list(
    'algorithm', ['fedavg', 'fedadam'],
    f'Algorithm, or a comma-separated list to compare: '
    f'{", ".join(algorithms.ALGORITHM_NAMES)}.')
DATASET = flags.DEFINE_enum(
    'dataset', 'digits', datasets.DATASET_NAMES,
    'Dataset. digits, synthetic and pydoc_topics need no download; the '
    'others are read from files in --data_dir (a prepared TFDS data '
    "directory, TFF's SQLite files or LEAF's JSON directories; README.md "
    'lists them) or, for huggingface, from --hf_path.')
DATA_DIR = flags.DEFINE_string(
    'data_dir', None, 'Where the data lie: the TFDS data directory for the '
    'TFDS datasets (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets), '
    "the directory of TFF's SQLite files for tff_* (default: "
    "~/.keras/datasets, where TFF caches them), LEAF's data/ directory for "
    'leaf_*.')
HF_PATH = _define(
    flags.DEFINE_string, 'hf_path', None, 'dataset=huggingface: a '
    'directory written by save_to_disk, a .parquet file or a directory of '
    '.parquet files.', needs=_HUGGINGFACE)
HF_PARTITION_BY = _define(
    flags.DEFINE_string, 'hf_partition_by', None, 'dataset=huggingface: '
    "the column whose values are the clients (e.g. FEMNIST's writer_id).",
    needs=_HUGGINGFACE)
HF_FEATURES = _define(
    flags.DEFINE_string, 'hf_features', None, 'dataset=huggingface: the '
    'input column (default: the one image column, else the one column '
    'left).', needs=_HUGGINGFACE)
HF_LABEL = _define(
    flags.DEFINE_string, 'hf_label', None, 'dataset=huggingface: the label '
    "column (default: the one ClassLabel column, else 'label').",
    needs=_HUGGINGFACE)
DATA_PART = flags.DEFINE_enum(
    'data_part', 'all', datasets.DATA_PARTS, 'Part of the dataset to use: '
    'all, or one of two disjoint halves (by document or speaker for text, '
    'by label otherwise), to pre-train on one (scripts.pretrain) and '
    'fine-tune on the other.')
MODEL = flags.DEFINE_enum('model', 'mlp', models.MODEL_NAMES, 'Model.')
NUM_CLIENTS = _define(
    flags.DEFINE_integer,
    'num_clients', None, 'Population size (default: 20 for digits, 30 '
    'devices for synthetic, 100 for the TFDS image datasets, one per '
    'natural group for the text datasets and the benchmarks); the nodes '
    'of a decentralized run.',
    sets=('num_nodes',))
PARTITION = flags.DEFINE_enum(
    'partition', None, partition.PARTITION_NAMES,
    'How the training set is split across clients: iid; dirichlet (per-class '
    'proportions ~ Dir(alpha), unequal sizes, Hsu et al. 2019); '
    'dirichlet_equal (per-client class priors ~ Dir(alpha), equal sizes, '
    'FedDyn / FL-Simulator); pathological (--classes_per_client shards, '
    'McMahan et al. 2017); quantity_skew (lognormal sizes, IID labels); '
    'natural (one client per device, document, writer, speaker or user of '
    'the datasets that have such a key). Default: natural for those, '
    'dirichlet otherwise.')
DIRICHLET_ALPHA = flags.DEFINE_float(
    'dirichlet_alpha', 0.5, 'Concentration of the Dirichlet partitions '
    '(smaller is more skewed).')
CLASSES_PER_CLIENT = flags.DEFINE_integer(
    'classes_per_client', 2, 'Shards (about classes) per client of the '
    'pathological partition.')
SIZE_SIGMA = flags.DEFINE_float(
    'size_sigma', None, 'Lognormal sigma of client sizes for quantity_skew '
    '(default 1) and dirichlet_equal (default 0: equal sizes).')
LOCAL_TEST_FRACTION = flags.DEFINE_float(
    'local_test_fraction', 0.0, 'Share of each client\'s examples held out '
    'as its own test split; evaluation then also reports the mean and 10th '
    'percentile of per-client accuracy.')
TEST_EXAMPLES = flags.DEFINE_integer(
    'test_examples', None, 'Evaluate the global model on this many seeded '
    'rows of the test split (default: all of it), e.g. 10000 of '
    "StackOverflow's 16 million test sentences.", lower_bound=1)
LOCAL_TEST = flags.DEFINE_enum(
    'local_test', 'holdout', datasets.LOCAL_TESTS, "Each client's own test "
    'split: holdout (--local_test_fraction of its rows) or source (its rows '
    "of the source's test split: LEAF's and TFF's per-client test data; "
    'one client per natural group).')
HOLDOUT_CLIENTS = flags.DEFINE_float(
    'holdout_clients', 0.0, 'Share of the clients that never train (a '
    'seeded choice): at evaluation each is personalized the algorithm\'s '
    'way from its own training split and scored on its own held-out rows '
    '(newclient_accuracy_mean). Needs --local_test_fraction or '
    '--local_test=source.')
PERSONAL_LAYERS = _define(
    flags.DEFINE_string,
    'personal_layers', None, 'Path regex (searched in each parameter\'s '
    '/-joined path, e.g. ^params/Dense_2/) of the layers kept per client by '
    'the body/head algorithms; default: the model\'s head (its last Dense), '
    'and all but the head for lg_fedavg.', needs=_SPLIT_MODEL)
PERSONAL_EVAL_CLIENTS = _define(
    flags.DEFINE_integer,
    'personal_eval_clients', 0, 'Clients whose personal models each '
    'evaluation scores on their own held-out rows: a fixed seeded sample, '
    'for large populations; 0 scores every client.', needs=_PERSONAL)
AUGMENT = flags.DEFINE_bool(
    'augment', False, 'Random crop (padding H/8) and horizontal flip of '
    'every local batch, inside the compiled round (the CIFAR recipe).')
SIZE_BUCKETS = flags.DEFINE_integer(
    'size_buckets', 4, 'Most local-step counts a run compiles for: a round '
    'pads its clients to the smallest bucket that fits its largest one.')
SYNTHETIC_ALPHA = flags.DEFINE_float(
    'synthetic_alpha', 1.0, 'Model heterogeneity alpha of Synthetic(a, b).')
SYNTHETIC_BETA = flags.DEFINE_float(
    'synthetic_beta', 1.0, 'Data heterogeneity beta of Synthetic(a, b).')
CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 5,
                                         'Cohort size.')
NUM_ROUNDS = flags.DEFINE_integer('num_rounds', 50, 'Rounds to run.')
LOCAL_EPOCHS = flags.DEFINE_integer(
    'local_epochs', None, 'Local passes over the client data (default 1 '
    'unless --local_steps is set).')
LOCAL_STEPS = flags.DEFINE_integer(
    'local_steps', None, 'Fixed local steps per round instead of epochs.')
BATCH_SIZE = flags.DEFINE_integer('batch_size', 10, 'Local batch size.')
CLIENT_OPTIMIZER = flags.DEFINE_enum(
    'client_optimizer', 'sgd', optimizers.CLIENT_OPTIMIZERS,
    'Local optimizer.')
CLIENT_LR = flags.DEFINE_float('client_lr', 0.05, 'Local learning rate.')
CLIENT_LR_DECAY = flags.DEFINE_float(
    'client_lr_decay', 1.0, 'Multiply the local learning rate by this every '
    'round (FL-Simulator: 0.998).')
WEIGHT_DECAY = flags.DEFINE_float(
    'weight_decay', 0.0, 'Coupled L2 weight decay of the local steps '
    '(FL-Simulator: 1e-3).')
MAX_GRAD_NORM = flags.DEFINE_float(
    'max_grad_norm', None, 'Clip each local gradient to this global norm '
    '(FL-Simulator: 10); default: no clipping.')
HPARAMS = flags.DEFINE_string(
    'hparams', '', 'The algorithm\'s own hyperparameters as NAME=VALUE,... '
    '(e.g. mu=0.01 for fedprox, rho=0.05 for fedsam, form=reference for '
    'fedspeed); ALGORITHM.NAME=VALUE targets one algorithm of a list. An '
    'unknown name is an error that lists the valid ones.')
SERVER_OPTIMIZER = flags.DEFINE_enum(
    'server_optimizer', None, optimizers.SERVER_OPTIMIZERS,
    'Server optimizer (default: the one the algorithm stands for).')
SERVER_LR = flags.DEFINE_float(
    'server_lr', None, 'Server learning rate (default: per algorithm, 1.0 '
    'for fedavg/fedavgm, 0.01 for fedadam/fedyogi, 0.1 for fedadagrad).')
SERVER_MOMENTUM = flags.DEFINE_float(
    'server_momentum', 0.9, 'Momentum of the server optimizer "momentum".')
WEIGHTED = flags.DEFINE_bool(
    'weighted', None, 'Weight client updates by example count (default: yes '
    'for the FedAvg family; the local-SGD family averages uniformly).')
PARTICIPATION = flags.DEFINE_enum(
    'participation', 'fixed', simulation.PARTICIPATIONS,
    'fixed: --clients_per_round clients a round; bernoulli: each client '
    'takes part with probability clients_per_round / num_clients.')
SEED = flags.DEFINE_integer('seed', 0, 'Seed of everything random.')
NUM_SEEDS = flags.DEFINE_integer(
    'num_seeds', 1, 'Runs seeds --seed, ..., --seed + S - 1 as one compiled '
    'program (a leading run axis over every state); each seed K writes '
    'WORKDIR/seed_K/. Each equals the single run of its seed.')
VMAPPED_HPARAM = flags.DEFINE_string(
    'vmapped_hparam', None, 'NAME=V1:V2:... runs these values of one scalar '
    'hyperparameter (client_lr, server_lr, or a number of --hparams, e.g. '
    'rho or mu) in the same compiled program, times --num_seeds; each value '
    'writes WORKDIR/NAME=V/seed_K/.')
EVAL_EVERY = flags.DEFINE_integer(
    'eval_every', 5, 'Evaluate every this many rounds (0: only at the end).')
CHECKPOINT_EVERY = flags.DEFINE_integer(
    'checkpoint_every', 10, 'Checkpoint every this many rounds.')
WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Output directory (default: a new runs/TIMESTAMP); for '
    'scripts.sweep, the sweep directory (runs/HASH/ per configuration and '
    'sweep.json).')
PROGRESS = flags.DEFINE_bool('progress', True, 'Show a progress bar.')
ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    'allow_config_change', False, 'Resume a workdir although one of '
    f'--{", --".join(sorted(run_config.SAFE_TO_CHANGE))} differs from its '
    'flags.json (the change is recorded there). Other flags never change '
    'within a workdir.')
COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0 of a multi-process '
    'run (jax.distributed); give --num_processes and --process_id too. '
    'Under a TPU pod, SLURM or Open MPI launch, leave all three unset: they '
    'are read from the environment. Only process 0 prints and writes logs.')
NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Processes of a multi-process run.')
PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process\'s index in a multi-process run, from '
    '0.')
CPU_DEVICES = flags.DEFINE_integer(
    'cpu_devices', None, 'On CPU, JAX devices to split the host into; the '
    'cohort is sharded over them (default: one per core; 1 disables).')
LOOP = flags.DEFINE_enum(
    'loop', 'auto', simulation.LOOPS,
    'Loop over local steps and client chunks: scan (rolled), unroll '
    '(straight-line code), or auto (unroll convolutional models on CPU, '
    'scan otherwise).')
CLIENTS_IN_PARALLEL = flags.DEFINE_integer(
    'clients_in_parallel', None, 'Clients each device trains in lockstep '
    '(vmap width); its other clients follow chunk by chunk. Default: 1 for '
    'convolutional models on CPU, else the whole cohort.')
STATE_STORE = flags.DEFINE_enum(
    'state_store', 'auto', simulation.STATE_STORES,
    'Where the clients\' persistent state lives: host (numpy), device '
    '(whole on every device), sharded (split over the devices), or auto '
    '(on the devices while it takes at most a quarter of their memory).')
MESH_SHAPE = flags.DEFINE_string(
    'mesh_shape', None, 'Devices on the mesh\'s axes: "CLIENTS" or '
    '"CLIENTS,MODEL" (the model axis replicates, for now); default: every '
    'device on the clients axis.')
AGGREGATOR = _define(
    flags.DEFINE_enum,
    'aggregator', 'mean', aggregation.AGGREGATORS,
    'mean: the weighted mean in the clear; secure: secure aggregation '
    '(Bonawitz et al. 2017): fixed-point words in Z_(2^bits), pairwise and '
    'self masks, dropped clients\' masks recovered from Shamir shares. '
    'Byzantine-robust: median and trimmed_mean (coordinate-wise), krum and '
    'multi_krum (Blanchard et al. 2017), geometric_median (RFA, Pillutla et '
    'al.), centered_clip (Karimireddy et al. 2021), monna (client momentum '
    'and nearest-neighbour averaging, Farhadkhani et al. 2023).',
    sets=('secure_aggregation', 'robust', 'robust.rule'))
ROBUST_F = _define(
    flags.DEFINE_integer,
    'robust_f', None, 'Robust aggregation: Byzantine clients per round the '
    'rule tolerates (trimmed each side, Krum\'s f, mixing neighbours n - f); '
    'default: the attack\'s Byzantine count per round, at least 1.',
    needs=_ROBUST, sets=('robust.num_byzantine',))
NNM = flags.DEFINE_bool(
    'nnm', False, 'Nearest-neighbour mixing (Allouah et al. 2023) before the '
    'aggregation rule: each update becomes the mean of its n - f nearest.')
KRUM_SELECTED = _define(
    flags.DEFINE_integer,
    'krum_selected', None, 'multi_krum: clients averaged (default n - f).',
    needs=_ROBUST, sets=('robust.num_selected',))
RFA_ITERS = _define(
    flags.DEFINE_integer,
    'rfa_iters', 3, 'geometric_median: smoothed Weiszfeld iterations.',
    needs=_ROBUST)
RFA_SMOOTHING = _define(
    flags.DEFINE_float,
    'rfa_smoothing', 1e-6, 'geometric_median: smoothing nu.',
    needs=_ROBUST)
CC_RADIUS = _define(
    flags.DEFINE_float,
    'cc_radius', 1.0, 'centered_clip: clipping radius tau around the '
    'previous round\'s aggregate.',
    needs=_ROBUST, sets=('robust.clip_radius',))
CC_ITERS = _define(
    flags.DEFINE_integer,
    'cc_iters', 1, 'centered_clip: clipping iterations.',
    needs=_ROBUST, sets=('robust.clip_iters',))
MONNA_MOMENTUM = _define(
    flags.DEFINE_float,
    'monna_momentum', 0.9, 'monna, and DP-BREM (centered_clip with '
    '--dp_clip_norm): the clients\' momentum beta.',
    needs=_ROBUST, sets=('robust.momentum', 'uplink.momentum'))
ATTACK = _define(
    flags.DEFINE_enum,
    'attack', 'none', attacks.ATTACKS,
    'Byzantine attack of --byzantine_fraction of each cohort: sign_flip, '
    'gaussian noise, label_flip (data poisoning), alie (A Little Is Enough, '
    'Baruch et al. 2019), ipm (Inner Product Manipulation, Xie et al. 2020).',
    sets=('attack.name',))
BYZANTINE_FRACTION = _define(
    flags.DEFINE_float,
    'byzantine_fraction', 0.2, 'Share of each cohort\'s clients that are '
    'Byzantine (seeded, redrawn every round).',
    needs=_ATTACKING, sets=('attack.fraction',))
ATTACK_SCALE = _define(
    flags.DEFINE_float,
    'attack_scale', 1.0, 'sign_flip: Byzantine clients send -scale x their '
    'update.',
    needs=_ATTACKING, sets=('attack.scale',))
ATTACK_STDDEV = _define(
    flags.DEFINE_float,
    'attack_stddev', 1.0, 'gaussian: std of the noise Byzantine clients '
    'send.',
    needs=_ATTACKING, sets=('attack.stddev',))
ALIE_Z = _define(
    flags.DEFINE_float,
    'alie_z', None, 'alie: the z of mean - z std (default: the paper\'s '
    'z_max for the cohort).',
    needs=_ATTACKING)
IPM_EPSILON = _define(
    flags.DEFINE_float,
    'ipm_epsilon', 0.1, 'ipm: Byzantine clients send -epsilon x the honest '
    'mean.',
    needs=_ATTACKING)
COMPRESSOR = _define(
    flags.DEFINE_enum,
    'compressor', 'none', compression.COMPRESSORS,
    'Client -> server compression, per layer: topk (with error feedback), '
    'qsgd (unbiased stochastic quantization, Alistarh et al. 2017), sign '
    '(scaled sign with error feedback, Karimireddy et al. 2019), fedzip '
    '(top-z, k-means clustering and entropy coding, Malekijoo et al. 2021).',
    sets=('uplink', 'uplink.compressor', 'downlink.compressor'))
COMPRESS_FRACTION = _define(
    flags.DEFINE_float,
    'compress_fraction', 0.01, 'topk / fedzip: share of each layer\'s '
    'coordinates sent.',
    needs=_COMPRESSING, sets=_both_links('fraction'))
QSGD_LEVELS = _define(
    flags.DEFINE_integer,
    'qsgd_levels', 16, 'qsgd: quantization levels s.',
    needs=_COMPRESSING, sets=_both_links('levels'))
FEDZIP_CLUSTERS = _define(
    flags.DEFINE_integer,
    'fedzip_clusters', 3, 'fedzip: k-means clusters per layer.',
    needs=_COMPRESSING, sets=_both_links('num_clusters'))
COMPRESS_DOWN = _define(
    flags.DEFINE_bool,
    'compress_down', False, 'Also compress the model broadcast with '
    '--compressor: the server keeps the clients\' model b and sends '
    'C(x - b) every round.',
    needs=_COMPRESSING, sets=('downlink',))
RQM_CLIP = _define(
    flags.DEFINE_float,
    'rqm_clip', None, 'Randomized quantization (RQM, Youn et al. 2023) of '
    'every client\'s message: clip each coordinate to [-c, c], then round '
    'it to one of randomly kept levels; turns it on, and its epsilon (at '
    '--dp_delta) is reported.',
    sets=('rqm', 'rqm.clip'))
RQM_LEVELS = _define(
    flags.DEFINE_integer,
    'rqm_levels', 16, 'RQM: quantization levels m.',
    needs=_RQM, sets=('rqm.num_levels',))
RQM_KEEP_PROBABILITY = _define(
    flags.DEFINE_float,
    'rqm_keep_probability', 0.5, 'RQM: probability q that each interior '
    'level is kept.',
    needs=_RQM, sets=('rqm.keep_probability',))
RQM_EXTENSION = _define(
    flags.DEFINE_float,
    'rqm_extension', None, 'RQM: Delta, how far the levels extend past '
    '[-c, c] (default: c).',
    needs=_RQM, sets=('rqm.extension',))
SECAGG_BITS = _define(
    flags.DEFINE_integer,
    'secagg_bits', 32, 'Secure aggregation: bits b of the modulus 2^b.',
    needs=_SECURE, sets=('secure_aggregation.bits',))
SECAGG_CLIP = _define(
    flags.DEFINE_float,
    'secagg_clip', 1.0, 'Secure aggregation: each coordinate is clipped to '
    '[-clip, clip] before encoding (metric secagg_clipped_fraction).',
    needs=_SECURE, sets=('secure_aggregation.clip',))
SECAGG_SCALE = _define(
    flags.DEFINE_float,
    'secagg_scale', None, 'Secure aggregation: fixed-point scale (default: '
    'the largest power of two for which the cohort\'s sum cannot wrap).',
    needs=_SECURE, sets=('secure_aggregation.scale',))
SECAGG_DROPOUT_FRACTION = _define(
    flags.DEFINE_float,
    'secagg_dropout_fraction', 0.0, 'Secure aggregation: share of each '
    'cohort that drops after masking; the survivors\' sum is still exact.',
    needs=_SECURE, sets=('secure_aggregation.dropout_fraction',))
SECAGG_THRESHOLD = _define(
    flags.DEFINE_integer,
    'secagg_threshold', None, 'Secure aggregation: t of the t-of-n Shamir '
    'sharing (default: a majority of the cohort); fewer survivors is an '
    'error.',
    needs=_SECURE, sets=('secure_aggregation.threshold',))
DP_CLIP_NORM = _define(
    flags.DEFINE_float,
    'dp_clip_norm', None, 'Client-level DP-FedAvg (McMahan et al. 2018): '
    'clip every client update to this L2 norm; setting it turns DP on.',
    sets=('client_dp', 'client_dp.clip_norm'))
DP_NOISE_MULTIPLIER = _define(
    flags.DEFINE_float,
    'dp_noise_multiplier', None, 'DP: noise std on the update sum over the '
    'clip norm (default: calibrated to --dp_target_epsilon).',
    needs=_CLIENT_DP, sets=('client_dp.noise_multiplier',))
DP_DELTA = _define(
    flags.DEFINE_float,
    'dp_delta', 1e-5, 'DP: the delta epsilon is reported at.',
    sets=('client_dp.delta', 'sample_dp.delta', 'rqm.delta'))
DP_TARGET_EPSILON = _define(
    flags.DEFINE_float,
    'dp_target_epsilon', None, 'DP: stop before a round that would spend '
    'more; without --dp_noise_multiplier, calibrate the noise so that '
    '--num_rounds spend exactly this.',
    needs=_CLIENT_DP, sets=('client_dp.target_epsilon',))
DP_SAMPLING = _define(
    flags.DEFINE_enum,
    'dp_sampling', None, privacy_accounting.SAMPLINGS,
    'DP: cohort sampling to account for. poisson: each client takes part '
    'with probability clients_per_round / num_clients (sets '
    '--participation=bernoulli); fixed: clients_per_round without '
    'replacement. Default: as --participation.',
    needs=_CLIENT_DP)
DP_ACCOUNTANT = _define(
    flags.DEFINE_enum,
    'dp_accountant', 'rdp', privacy_accounting.ACCOUNTANTS,
    'DP: dp-accounting\'s RDP or PLD accountant (PLD is tighter and '
    'slower, Poisson sampling only).',
    sets=('client_dp.accountant', 'sample_dp.accountant'))
DP_PER_LAYER_CLIP = _define(
    flags.DEFINE_bool,
    'dp_per_layer_clip', False, 'DP: clip each layer to clip / sqrt(layers) '
    'instead of the whole update to clip.',
    needs=_CLIENT_DP, sets=('client_dp.per_layer',))
DP_TARGET_QUANTILE = _define(
    flags.DEFINE_float,
    'dp_target_quantile', None, 'DP: adapt the clip norm to this quantile of '
    'the update norms (Andrew et al. 2021; e.g. 0.5); default: fixed clip.',
    needs=_CLIENT_DP, sets=('client_dp.target_quantile',))
DP_CLIP_LEARNING_RATE = _define(
    flags.DEFINE_float,
    'dp_clip_learning_rate', 0.2, 'DP: learning rate of the geometric '
    'adaptive clip update.',
    needs=_CLIENT_DP, sets=('client_dp.clip_learning_rate',))
DP_COUNT_STDDEV = _define(
    flags.DEFINE_float,
    'dp_count_stddev', None, 'DP: noise std of adaptive clipping\'s '
    'unclipped count (default: clients_per_round / 20).',
    needs=_CLIENT_DP, sets=('client_dp.count_stddev',))
DP_SGD_CLIP_NORM = _define(
    flags.DEFINE_float,
    'dp_sgd_clip_norm', None, 'Sample-level DP-SGD on each client (FedAvg '
    'family): clip every example\'s gradient to this norm; turns it on.',
    sets=('sample_dp',))
DP_SGD_NOISE_MULTIPLIER = _define(
    flags.DEFINE_float,
    'dp_sgd_noise_multiplier', 1.0, 'DP-SGD: noise std over the per-example '
    'clip norm.',
    needs=_DP_SGD, sets=('sample_dp.noise_multiplier',))
LORA_RANK = _define(
    flags.DEFINE_integer,
    'lora_rank', 8, 'fedlora / ffa_lora: rank r of the adapters.',
    needs=_LORA)
LORA_ALPHA = _define(
    flags.DEFINE_float,
    'lora_alpha', 16.0, 'fedlora / ffa_lora: the update is scaled by '
    'alpha / r.',
    needs=_LORA)
LORA_TARGETS = _define(
    flags.DEFINE_string,
    'lora_targets', lora.DEFAULT_TARGETS, 'fedlora / ffa_lora: regular '
    'expression over kernel paths (e.g. params/block_0/attention/query/'
    'kernel) choosing the adapted kernels.',
    needs=_LORA)
TOPOLOGY = _define(
    flags.DEFINE_string,
    'topology', 'ring', 'Decentralized algorithms: the graph the nodes (one '
    'per client) gossip over: ring, torus (2-D grid), exponential (Ying et '
    'al. 2021), one_peer_exponential (time-varying), erdos_renyi(P), '
    'barabasi_albert(M), complete, random_matching (time-varying), or '
    'file:PATH (an edge list). A picture is written to WORKDIR/topology.png.',
    needs=_DECENTRALIZED, sets=('gossip.topology',))
MIXING = _define(
    flags.DEFINE_enum,
    'mixing', 'metropolis', mixing_weights.RULES,
    'Decentralized: gossip weights over the live links: metropolis '
    '(Metropolis-Hastings, doubly stochastic) or uniform (1/(degree+1)).',
    needs=_DECENTRALIZED, sets=('gossip.mixing',))
GOSSIP_STEPS = _define(
    flags.DEFINE_integer,
    'gossip_steps', 1, 'Decentralized: gossip (mixing) steps per round '
    '(DFedSAM-MGS\'s Q).',
    needs=_DECENTRALIZED, sets=('gossip.gossip_steps',))
ACTIVE_NODES = _define(
    flags.DEFINE_integer,
    'active_nodes', None, 'Decentralized: nodes that train and gossip each '
    'round, a seeded sample (MoDeST); default: all.',
    needs=_DECENTRALIZED, sets=('gossip.active_nodes',))
NODE_FAILURE_RATE = _define(
    flags.DEFINE_float,
    'node_failure_rate', 0.0, 'Decentralized: probability that a node is '
    'down for a round (seeded); gossip weights renormalize over the rest.',
    needs=_DECENTRALIZED, sets=('gossip.node_failure_rate',))
LINK_FAILURE_RATE = _define(
    flags.DEFINE_float,
    'link_failure_rate', 0.0, 'Decentralized: probability that a link is '
    'down for a round (seeded); gossip weights renormalize over the rest.',
    needs=_DECENTRALIZED, sets=('gossip.link_failure_rate',))
GOSSIP_METHOD = _define(
    flags.DEFINE_enum,
    'gossip_method', 'auto', ('auto',) + gossip.METHODS,
    'Decentralized: how mixing runs: dense (matrix product over the node '
    'axis), gather (neighbour gather), ring / torus (shifts; ppermute '
    'between devices), auto (by graph and device count).',
    needs=_DECENTRALIZED, sets=('gossip.method',))
PEER_RULE = _define(
    flags.DEFINE_enum,
    'peer_rule', 'mean', peer_robust.PEER_RULES,
    'Decentralized: what a node makes of what it receives: mean (plain '
    'gossip), trimmed_mean, median (per node, coordinate-wise), '
    'clipped_gossip (He et al. 2022), nna (MoNNA\'s nearest-neighbour '
    'averaging, Farhadkhani et al. 2023).',
    needs=_DECENTRALIZED, sets=('gossip.rule',))
PEER_B = _define(
    flags.DEFINE_integer,
    'peer_b', 1, 'Decentralized robust rules: Byzantine neighbours tolerated '
    'per node (b).',
    needs=_DECENTRALIZED, sets=('gossip.num_byzantine',))
PEER_CLIP_RADIUS = _define(
    flags.DEFINE_float,
    'peer_clip_radius', None, 'clipped_gossip: fixed clipping radius '
    '(default: chosen per node from its received differences).',
    needs=_DECENTRALIZED, sets=('gossip.clip_radius',))
PEER_ATTACK = _define(
    flags.DEFINE_enum,
    'peer_attack', 'none', peer_robust.PEER_ATTACKS,
    'Decentralized: the messages Byzantine nodes send, per edge: sign_flip, '
    'gaussian, alie, dissensus (He et al. 2022).',
    needs=_DECENTRALIZED, sets=('gossip.attack',))
PEER_BYZANTINE_FRACTION = _define(
    flags.DEFINE_float,
    'peer_byzantine_fraction', 0.1, 'Decentralized: share of the nodes '
    'that are Byzantine (a fixed seeded set).',
    needs=_PEER_ATTACKING, sets=('gossip.byzantine_fraction',))
PEER_ATTACK_SCALE = _define(
    flags.DEFINE_float,
    'peer_attack_scale', 1.0, 'Decentralized: strength of --peer_attack '
    '(its scale or epsilon).',
    needs=_PEER_ATTACKING, sets=('gossip.attack_scale',))
VARIANCE_CORRECTION = _define(
    flags.DEFINE_bool,
    'variance_correction', False, 'Decentralized: after plain gossip, give '
    'each node\'s kernels the weighted mean variance of those mixed in '
    '(Tian et al. 2024, the vanishing-variance problem).',
    needs=_DECENTRALIZED, sets=('gossip.variance_correction',))
INDEPENDENT_INIT = _define(
    flags.DEFINE_bool,
    'independent_init', False, 'Decentralized: initialize each node\'s model '
    'from its own seed instead of one common model.',
    needs=_DECENTRALIZED, sets=('gossip.independent_init',))
EVAL_NODES = _define(
    flags.DEFINE_integer,
    'eval_nodes', None, 'Decentralized: node models evaluated (a fixed '
    'seeded sample of the honest nodes); default: all.',
    needs=_DECENTRALIZED, sets=('gossip.eval_nodes',))
INIT_CHECKPOINT = flags.DEFINE_string(
    'init_checkpoint', None, 'Start from this pre-trained base (the base/ '
    'directory scripts.pretrain writes) instead of a random init.')


def check_switches() -> None:
  """Rejects settings of a feature that is off."""
  for name, switch in _NEEDS.items():
    if flags.FLAGS[name].present and not switch.is_on():
      raise ValueError(f'--{name} has no effect without {switch.how}; add '
                       f'{switch.how} or drop --{name}.')


def flag_for(setting: str) -> str | None:
  """The flag of this program that sets the engine's `setting`, or None.

  `SETTING_FLAGS` names it if its name differs; otherwise it is the flag
  named as the setting, or for a dotted setting ('robust.nnm') the one
  named as the whole with underscores ('robust_nnm'), else as its last part
  ('nnm').
  """
  if setting in SETTING_FLAGS:
    return SETTING_FLAGS[setting]
  for name in (setting, setting.replace('.', '_'), setting.rpartition('.')[2]):
    if name in flags.FLAGS:
      return name
  return None


def describe(error: errors.SettingError) -> str:
  """`--FLAG: MESSAGE` for the flag that sets the error's setting; the bare
  message if no flag of this program sets it."""
  name = flag_for(error.setting)
  return str(error) if name is None else f'--{name}: {error}'


def reject_unused(program: str, *used: flags.FlagHolder) -> None:
  """Raises `app.UsageError` if a flag of this module that `program` does
  not read was given, as absl refuses a flag that does not exist."""
  names = {holder.name for holder in used}
  given = sorted(flag.name for flag in flags.FLAGS.get_flags_for_module(
      __name__) if flag.present and flag.name not in names)
  if given:
    raise app.UsageError(f'{program} takes no --{given[0]} (a flag of '
                         'scripts.train).')
