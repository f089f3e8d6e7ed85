"""How a run proceeds: `SimulationConfig`, its data-free validation and the
channel its settings build, and the loop strategy 'auto' stands for on this
backend."""

import dataclasses

import jax
import jax.numpy as jnp

from fedjax_core import targets
from fedjax_core.channel import aggregation
from fedjax_core.channel import assembly
from fedjax_core.channel import attacks
from fedjax_core.channel import backdoor as backdoor_lib
from fedjax_core.channel import gossip
from fedjax_core.channel import mixing_weights
from fedjax_core.channel import norm_bound as norm_bound_lib
from fedjax_core.channel import peer_robust
from fedjax_core.channel import privacy
from fedjax_core.channel import rqm as rqm_lib
from fedjax_core.channel import uplink as uplink_lib
from fedjax_core.channel.stage import Chain
from fedjax_core.errors import SettingError

LOOPS = ('auto', 'scan', 'unroll')
STATE_STORES = ('auto', 'device', 'host', 'sharded')
PARTICIPATIONS = ('fixed', 'bernoulli')


@dataclasses.dataclass(frozen=True)
class SimulationConfig:
  """How a run proceeds.

  Attributes:
    num_rounds: rounds to run in total (a resumed run continues up to it).
    clients_per_round: cohort size; under Bernoulli participation, the
      expected cohort size.
    participation: 'fixed' samples `clients_per_round` clients without
      replacement; 'bernoulli' lets each client take part independently with
      probability `clients_per_round / num_clients` (FL-Simulator's
      `active_ratio`).
    batch_size: local batch size.
    local_epochs: passes over each client's data per round; exclusive with
      `local_steps`. With neither set, clients run one local epoch.
    local_steps: fixed local steps per round; exclusive with `local_epochs`.
    seed: seeds model init, sampling, shuffling and every PRNG key.
    eval_every: evaluate on the test split every this many rounds (and after
      the last round); 0 evaluates only after the last round.
    checkpoint_every: checkpoint every this many rounds (and after the last).
    workdir: where metrics, checkpoints and the summary go; None keeps
      nothing on disk.
    loop: 'scan' (a rolled loop over local steps, and `lax.map` over client
      chunks), 'unroll' (both as straight-line code), or 'auto' (unroll
      convolutional models on CPU, where XLA runs convolutions inside loops
      slowly; scan otherwise).
    clients_in_parallel: clients each device trains in lockstep (vmapped);
      a device's other clients follow chunk by chunk. None: 'auto', which
      is 1 for convolutional models on CPU (XLA:CPU runs per-client
      convolutions vmapped slowly) and the whole cohort otherwise.
    state_store: where the population's client state lives: 'host' (numpy,
      the cohort's rows copied in and out each round), 'device' (every
      device holds it whole), 'sharded' (split over the mesh's 'clients'
      axis) or 'auto' (`state_store.resolve_state_store`).
    eval_batch_size: batch size of evaluation.
    progress: show a progress bar.
    size_buckets: the most local-step counts a run compiles for: each round
      is padded to the smallest bucket that fits its cohort's largest client
      (`batching.step_buckets`); 1 pads every round to the largest client.
    augment: random crop (padding H // 8) and horizontal flip of every local
      batch inside the compiled round (the CIFAR recipe of FL-Simulator).
    secure_aggregation: aggregate through secure aggregation's masked
      modular sum (Bonawitz et al. 2017); None sums in the clear.
    client_dp: client-level DP-FedAvg (clipping, noise, fixed denominator,
      accounting); the sampling is Poisson under Bernoulli participation
      and fixed-size otherwise. None: no client-level DP.
    sample_dp: how to account the clients' DP-SGD, if the algorithm runs it
      (`algorithms.fedavg(..., dp_sgd=...)`); reported as `sample_epsilon`
      on evaluated rounds.
    robust: a Byzantine-robust aggregation rule instead of the mean; None:
      the mean (or secure aggregation).
    attack: Byzantine clients and their attack; None: all honest.
    uplink: compression of the clients' messages; None sends them as
      float32. MoNNA's client momentum is added by `robust`.
    downlink: compression of the model broadcast (`fedjax_core.channel.downlink`);
      None broadcasts the float32 model.
    rqm: randomized quantization of every client's message
      (`fedjax_core.channel.rqm`, Youn et al. 2023), with its privacy reported as
      `epsilon`; None: no RQM.
    personal_eval_clients: how many clients a personalized algorithm's
      evaluation scores, each its own model on its own held-out split (a
      seeded sample, the same every time); 0 scores every client.
    backdoor: a backdoor attack (`fedjax_core.channel.backdoor`), its
      attack success rate reported as `backdoor_asr` on evaluated rounds;
      None: no backdoor.
    norm_bound: M, the L2 bound the server clips every client's message to
      (Sun et al. 2019); None: no bound.
  """

  num_rounds: int
  clients_per_round: int
  batch_size: int
  local_epochs: int | None = None
  local_steps: int | None = None
  seed: int = 0
  eval_every: int = 1
  checkpoint_every: int = 10
  workdir: str | None = None
  loop: str = 'auto'
  clients_in_parallel: int | None = None
  state_store: str = 'auto'
  eval_batch_size: int = 1024
  progress: bool = True
  participation: str = 'fixed'
  size_buckets: int = 4
  augment: bool = False
  secure_aggregation: aggregation.SecureAggregation | None = None
  client_dp: privacy.ClientDPSettings | None = None
  sample_dp: privacy.SampleDPSettings | None = None
  robust: aggregation.RobustAggregation | None = None
  attack: attacks.Attack | None = None
  uplink: uplink_lib.Uplink | None = None
  downlink: uplink_lib.Uplink | None = None
  rqm: rqm_lib.RQMSettings | None = None
  personal_eval_clients: int = 0
  backdoor: backdoor_lib.Backdoor | None = None
  norm_bound: float | None = None

  def validate(self, num_clients: int | None = None) -> None:
    """Raises `SettingError` naming the first bad setting and its fix;
    checks the cohort against the population only if `num_clients` is
    given."""
    positive = {'num_rounds': self.num_rounds,
                'clients_per_round': self.clients_per_round,
                'batch_size': self.batch_size,
                'checkpoint_every': self.checkpoint_every,
                'eval_batch_size': self.eval_batch_size,
                'size_buckets': self.size_buckets}
    for name in ('local_epochs', 'local_steps'):
      if getattr(self, name) is not None:
        positive[name] = getattr(self, name)
    for name, value in positive.items():
      if value < 1:
        raise SettingError(name, f'{name} must be positive, got {value}.')
    if self.local_epochs is not None and self.local_steps is not None:
      raise SettingError('local_epochs', 'Set local_epochs or local_steps, '
                         'not both.')
    if self.personal_eval_clients < 0:
      raise SettingError(
          'personal_eval_clients', 'personal_eval_clients must be >= 0 (0 '
          f'scores every client), got {self.personal_eval_clients}.')
    if num_clients is not None and self.clients_per_round > num_clients:
      raise SettingError(
          'clients_per_round',
          f'clients_per_round={self.clients_per_round} exceeds the '
          f'population of {num_clients} clients; lower it or use a larger '
          'population.')
    if self.eval_every < 0:
      raise SettingError('eval_every', 'eval_every must be >= 0 (0 '
                         'evaluates only after the last round), got '
                         f'{self.eval_every}.')
    if self.loop not in LOOPS:
      raise SettingError('loop', f'Unknown loop {self.loop!r}; valid: '
                         f'{", ".join(LOOPS)}.')
    if self.state_store not in STATE_STORES:
      raise SettingError('state_store', 'Unknown state_store '
                         f'{self.state_store!r}; valid: '
                         f'{", ".join(STATE_STORES)}.')
    if self.participation not in PARTICIPATIONS:
      raise SettingError('participation', 'Unknown participation '
                         f'{self.participation!r}; valid: '
                         f'{", ".join(PARTICIPATIONS)}.')
    if self.clients_in_parallel is not None and self.clients_in_parallel < 1:
      raise SettingError('clients_in_parallel', 'clients_in_parallel must be '
                         'positive (or None for auto), got '
                         f'{self.clients_in_parallel}.')
    if self.robust is not None:
      self.robust.check_cohort(self.clients_per_round)
    if self.norm_bound is not None:
      norm_bound_lib.check_bound(self.norm_bound)
    if self.backdoor is not None and num_clients is not None:
      self.backdoor.attackers(num_clients)  # As many clients as attackers.
    if self.secure_aggregation is not None and self.participation == 'fixed':
      self.secure_aggregation.check_cohort(self.clients_per_round)
    if self.downlink is not None and self.downlink.momentum is not None:
      raise ValueError('The broadcast has no momentum; build the downlink '
                       'as Uplink(compressor, ...) without momentum.')
    if self.robust is not None and self.secure_aggregation is not None:
      raise SettingError(
          'robust', 'A robust rule needs every client\'s message in the '
          'clear, which secure aggregation hides; drop one of them.')
    assembly.check_robust_dp(
        self.robust,
        None if self.client_dp is None else self.client_dp.clip_norm)
    if self.rqm is not None and self.client_dp is not None:
      raise SettingError(
          'rqm', 'RQM and Gaussian client-level DP each account their own '
          'privacy; their composition is not accounted here. Drop one.')

  def channel(self, dataset, privacy_accountant, secure) -> Chain:
    """The checked channel of a run of these settings on `dataset`
    (`assembly.build_chain`).

    Args:
      dataset: the run's `FederatedDataset`.
      privacy_accountant: the run's client-level DP or RQM accountant, or
        None.
      secure: the run's `secure_aggregation.SecAggConfig`, or None.
    """
    classes = dataset.target_kind == targets.CLASSES
    return assembly.build_chain(
        downlink=self.downlink, uplink=self.uplink, attack=self.attack,
        num_classes=dataset.num_classes if classes else None,
        robust=self.robust, clients_per_round=self.clients_per_round,
        client_dp=None if self.client_dp is None else privacy_accountant,
        secure=secure, rqm=self.rqm,
        rqm_privacy=privacy_accountant if self.rqm is not None else None,
        backdoor=self.backdoor, norm_bound=self.norm_bound,
        num_clients=dataset.num_clients, example_shape=dataset.example_shape)


def resolve_loop(loop: str, clients_in_parallel: int | None, apply_fn,
                 params, example_shape: tuple[int, ...]
                 ) -> tuple[str, int | None]:
  """The loop strategy and clients in lockstep per device that 'auto' (and
  `clients_in_parallel=None`) stand for with this model and backend.

  On GPU and TPU: a rolled `lax.scan` with the whole cohort vmapped. On
  XLA:CPU the same for dense models, which run as fast rolled and compile
  several times faster (BUILD_NOTES.md); but for models with convolutions,
  which XLA:CPU runs about 25x slower inside loops (jax-ml/jax#12868) and
  several times slower vmapped with per-client weights (8.7 s against
  1.2 s for a CIFAR CNN's cohort of 10, BUILD_NOTES.md),
  each device trains its clients one at a time, every local step
  unrolled.
  """
  convolutional = False
  if jax.default_backend() == 'cpu':
    x = jax.ShapeDtypeStruct((1,) + tuple(example_shape), jnp.float32)
    jaxpr = jax.make_jaxpr(apply_fn)(params, x)
    convolutional = 'conv_general_dilated' in str(jaxpr)
  if loop == 'auto':
    loop = 'unroll' if convolutional else 'scan'
  if clients_in_parallel is None and convolutional:
    clients_in_parallel = 1
  return loop, clients_in_parallel


@dataclasses.dataclass(frozen=True)
class GossipConfig:
  """How the nodes of a decentralized run communicate
  (`fedjax_core.engine.decentralized`).

  Attributes:
    topology: the graph (`fedjax_core.channel.topology.build`): 'ring',
      'torus', 'exponential', 'one_peer_exponential', 'erdos_renyi(P)',
      'barabasi_albert(M)', 'complete', 'random_matching' or 'file:PATH'.
    mixing: gossip weights over the live links: 'metropolis'
      (Metropolis-Hastings, doubly stochastic) or 'uniform'.
    gossip_steps: mixing steps per round (DFedSAM-MGS's Q).
    active_nodes: nodes that train and gossip each round, a seeded uniform
      sample (MoDeST); None: all.
    node_failure_rate: probability that a node is down for a round (it
      neither trains nor gossips).
    link_failure_rate: probability that a link is down for a round.
    method: how mixing runs: 'dense' (a matrix product over the node axis),
      'gather' (neighbour gather), 'ring' / 'torus' (shifts, `ppermute`
      between devices) or 'auto' (`gossip.choose_method`).
    rule: what a node makes of what it receives: 'mean' (plain gossip) or
      a robust rule of `fedjax_core.channel.peer_robust`.
    num_byzantine: the Byzantine neighbours a robust rule tolerates (b).
    clip_radius: clipped gossip's fixed radius; None chooses it per node.
    byzantine_fraction: share of the nodes that are Byzantine (a fixed set
      drawn from the seed); they send `attack`'s messages.
    attack: the Byzantine nodes' per-edge messages ('none' when no node is
      Byzantine).
    attack_scale: the strength of the attack (its epsilon or scale).
    eval_nodes: node models evaluated (a fixed seeded sample of the honest
      nodes); None: every honest node.
    variance_correction: mix plainly but give each node's kernels the
      weighted mean variance of the kernels mixed in
      (`gossip.mix_preserving_variance`, Tian et al. 2024).
    independent_init: initialize every node's model from its own key (the
      setting of the vanishing-variance problem); otherwise all nodes start
      from one model, as D-PSGD does.
  """

  topology: str = 'ring'
  mixing: str = 'metropolis'
  gossip_steps: int = 1
  active_nodes: int | None = None
  node_failure_rate: float = 0.0
  link_failure_rate: float = 0.0
  method: str = 'auto'
  rule: str = 'mean'
  num_byzantine: int = 0
  clip_radius: float | None = None
  byzantine_fraction: float = 0.0
  attack: str = 'none'
  attack_scale: float = 1.0
  eval_nodes: int | None = None
  variance_correction: bool = False
  independent_init: bool = False

  def validate(self, num_nodes: int) -> None:
    """Raises `SettingError` naming the first bad setting and its fix."""
    for name, valid in (('mixing', mixing_weights.RULES),
                        ('method', ('auto',) + gossip.METHODS),
                        ('rule', peer_robust.PEER_RULES),
                        ('attack', peer_robust.PEER_ATTACKS)):
      if getattr(self, name) not in valid:
        raise SettingError(f'gossip.{name}', f'Unknown {name} '
                           f'{getattr(self, name)!r}; valid: '
                           f'{", ".join(valid)}.')
    if self.gossip_steps < 1:
      raise SettingError('gossip.gossip_steps', 'gossip_steps must be '
                         f'positive, got {self.gossip_steps}.')
    if self.active_nodes is not None and not (
        1 <= self.active_nodes <= num_nodes):
      raise SettingError(
          'gossip.active_nodes', f'active_nodes must be between 1 and the '
          f'{num_nodes} nodes (or None for all), got {self.active_nodes}.')
    for name in ('node_failure_rate', 'link_failure_rate'):
      rate = getattr(self, name)
      if not 0 <= rate < 1:
        raise SettingError(f'gossip.{name}', f'{name} must be in [0, 1), '
                           f'got {rate}.')
    if not 0 <= self.byzantine_fraction < 0.5:
      raise SettingError(
          'gossip.byzantine_fraction', 'byzantine_fraction must be in '
          f'[0, 0.5), got {self.byzantine_fraction}.')
    if (self.byzantine_fraction > 0) != (self.attack != 'none'):
      raise SettingError(
          'gossip.attack', 'Byzantine nodes need an attack and an attack '
          f'needs Byzantine nodes; got attack {self.attack!r} with '
          f'byzantine_fraction {self.byzantine_fraction}. Set both or '
          'neither.')
    if self.num_byzantine < 0:
      raise SettingError('gossip.num_byzantine', 'num_byzantine must be >= '
                         f'0, got {self.num_byzantine}.')
    if self.variance_correction and (self.rule != 'mean'
                                     or self.attack != 'none'):
      raise SettingError(
          'gossip.variance_correction', 'variance_correction corrects the '
          'plain gossip average; it does not combine with a robust rule or '
          'Byzantine nodes. Drop one of them.')
    if self.eval_nodes is not None and self.eval_nodes < 1:
      raise SettingError('gossip.eval_nodes', 'eval_nodes must be positive '
                         f'(or None for all), got {self.eval_nodes}.')
