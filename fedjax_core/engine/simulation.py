"""A federated run's rounds.

Each round: sample the cohort (a pure function of seed and round), gather its
client state, build its padded batches, run the compiled round and scatter
the new client state. The driver (`fedjax_core.engine.driver`) runs the
loop around the rounds: every few rounds it evaluates, logs and
checkpoints, and a run given a workdir resumes from its newest readable
checkpoint.
"""

import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_core.algorithm import Algorithm
from fedjax_core.channel import privacy
from fedjax_core.channel import rqm as rqm_lib
from fedjax_core.channel import secagg_protocol
from fedjax_core.channel import secure_aggregation
from fedjax_core.data import augmentation
from fedjax_core.data import sampling
from fedjax_core.data.federated import FederatedDataset
from fedjax_core.engine import batching
from fedjax_core.engine import driver
from fedjax_core.engine import placement
from fedjax_core.engine import rounds
# The run's settings, importable from here too.
from fedjax_core.engine.config import LOOPS, PARTICIPATIONS, STATE_STORES
from fedjax_core.engine.config import SimulationConfig, resolve_loop
from fedjax_core.errors import SettingError
# TrainingDivergedError, is_due and summarize are importable from here too.
from fedjax_core.engine.driver import TrainingDivergedError, is_due, summarize
from fedjax_core.engine.backdoor_evaluation import BackdoorEvaluator
from fedjax_core.engine.evaluation import Evaluator
from fedjax_core.engine.personal_evaluation import ClientEvaluation
from fedjax_core.engine.state_store import ClientStateStore
from fedjax_core.engine.state_store import make_store, resolve_state_store

PyTree = Any


class PreparedRound(NamedTuple):
  """A round's host inputs, ready for the compiled round.

  Attributes:
    round_num: the round, from 0.
    ids: the cohort's client ids, without padding.
    inputs: the compiled round's inputs (host arrays, padded).
    cohort_state: the padded cohort's client state (host arrays).
    start: `time.perf_counter()` when the round's host work began.
    secagg_setup_s: seconds of secure aggregation's host protocol, or None.
  """

  round_num: int
  ids: np.ndarray
  inputs: rounds.RoundInputs
  cohort_state: PyTree
  start: float
  secagg_setup_s: float | None


class Simulation:
  """A federated run of `algorithm` on `dataset`.

  Examples:
    >>> sim = Simulation(algorithm, model, dataset,
    ...                  SimulationConfig(num_rounds=5, clients_per_round=4,
    ...                                   batch_size=10))
    >>> summary = sim.run()
  """

  def __init__(self, algorithm: Algorithm, model, dataset: FederatedDataset,
               config: SimulationConfig,
               mesh: jax.sharding.Mesh | None = None):
    """Prepares the run; raises ValueError on bad settings before compiling.

    Args:
      algorithm: the algorithm's pure functions.
      model: has `init(rng) -> params` and `apply(params, x) -> logits`.
      dataset: the federated dataset.
      config: the run's settings.
      mesh: device mesh with a 'clients' axis (default: all devices).
    """
    config.validate(dataset.num_clients)
    self.config = config
    self.dataset = dataset
    self._local_work = batching.LocalWork(
        dataset.client_indices, seed=config.seed,
        batch_size=config.batch_size, local_epochs=config.local_epochs,
        local_steps=config.local_steps,
        cohort_size=config.clients_per_round,
        size_buckets=config.size_buckets)
    self.step_buckets = self._local_work.buckets
    self._algorithm = algorithm
    self.mesh = placement.client_mesh() if mesh is None else mesh
    self._cohort_sharding = placement.cohort_sharding(self.mesh)
    replicated = placement.replicated_sharding(self.mesh)

    init_key, server_key, self.rounds_key = jax.random.split(
        jax.random.key(config.seed), 3)
    params = model.init(init_key)
    self.loop, self.clients_in_parallel = resolve_loop(
        config.loop, config.clients_in_parallel, model.apply, params,
        dataset.example_shape)
    # Copies: an algorithm may put one array in its state twice (two zero
    # trees), and the round donates each leaf of the state.
    self.server_state = placement.put(
        jax.tree.map(jnp.copy, algorithm.server_init(params, server_key)),
        replicated)
    self._train_x = placement.put(dataset.train_x, replicated)
    self._train_y = placement.put(dataset.train_y, replicated)
    template = rounds.message_template(
        algorithm, self.server_state, algorithm.client_state_init(params),
        self._train_x, self._train_y)
    # One client's message in float32.
    self.message_bytes = 4 * sum(x.size for x in jax.tree.leaves(template))
    # The model broadcast in float32.
    self.bytes_down = 4 * optax.tree.size(
        algorithm.server_params(self.server_state))
    augment = augmentation.for_dataset(config.augment, dataset)
    self.privacy = self.sample_privacy = None
    if config.client_dp is not None:
      self.privacy = privacy.ClientLevelPrivacy(
          config.client_dp, num_clients=dataset.num_clients,
          clients_per_round=config.clients_per_round,
          participation=config.participation, num_rounds=config.num_rounds)
    elif config.rqm is not None:
      self.privacy = rqm_lib.RQMPrivacy(
          config.rqm, num_coordinates=self.message_bytes // 4)
    if config.sample_dp is not None:
      self.sample_privacy = privacy.SampleLevelPrivacy(
          config.sample_dp.noise_multiplier, delta=config.sample_dp.delta,
          accountant=config.sample_dp.accountant,
          batch_size=config.batch_size, client_sizes=dataset.client_sizes,
          client_steps=self._local_work.steps)
    # The round the run ends after: the last, or the last one the privacy
    # budget affords.
    self.final_round = config.num_rounds
    if config.client_dp is not None:
      self.final_round = self.privacy.affordable_rounds(config.num_rounds)
      if self.final_round == 0:
        raise SettingError(
            'client_dp.target_epsilon', 'One round already spends epsilon '
            f'{self.privacy.epsilon(1):.3g} > the target epsilon '
            f'{config.client_dp.target_epsilon:g}; raise target_epsilon or '
            'the noise_multiplier.')
    self._secure = None
    if config.secure_aggregation is not None:
      self._secure = config.secure_aggregation.config(self._cohort_capacity())
    self.channel = config.channel(dataset, self.privacy, self._secure)
    one_client = rounds.initial_client_state(algorithm, self.channel, params,
                                             template)
    self.store = make_store(
        resolve_state_store(config.state_store, one_client,
                            dataset.num_clients, self.mesh),
        ClientStateStore.replicate(one_client, dataset.num_clients).stacked,
        dataset.num_clients, self.mesh)
    # A client's upload without compression: the float32 message, or under
    # secure aggregation its masked words with the weight's (and adaptive
    # clipping's flag's) word.
    self._plain_bytes_up = self.message_bytes
    if self._secure is not None:
      adaptive = config.client_dp is not None and (
          self.privacy.dp_config.adaptive)
      self._secagg_words = self.message_bytes // 4 + 1 + int(adaptive)
      self._plain_bytes_up = math.ceil(
          self._secagg_words * self._secure.bits / 8)
    self.aggregator_state = placement.put(
        self.channel.init(template, algorithm.server_params(
            self.server_state)), replicated)
    self._augment = augment
    self.round_fn = self.compiled_round(algorithm)
    self._evaluator = Evaluator(model.apply, dataset.test_x, dataset.test_y,
                                config.eval_batch_size)
    self._backdoor_evaluator = BackdoorEvaluator(
        model.apply, config.backdoor, dataset.test_x, dataset.test_y,
        config.eval_batch_size)
    self._client_evaluation = ClientEvaluation(
        algorithm, model.apply, dataset, self._train_x, self._train_y,
        initial_client_state=algorithm.client_state_init(params),
        batch_size=config.batch_size,
        eval_batch_size=config.eval_batch_size,
        max_clients=config.personal_eval_clients, seed=config.seed,
        mesh=self.mesh)
    self.completed_rounds = 0
    self._consistent = True  # server state, store and round count agree.
    self.history: list[dict[str, Any]] = []

  def compiled_round(self, algorithm: Algorithm) -> rounds.CompiledRound:
    """This run's compiled round for `algorithm` (this run's, or the same
    algorithm with other hyperparameters, as `VmappedRuns` builds it)."""
    config = self.config
    return rounds.CompiledRound(
        algorithm, self.channel, unroll=self.loop == 'unroll',
        skip_empty_steps=config.local_steps is None,
        clients_in_parallel=self.clients_in_parallel, mesh=self.mesh,
        augment=self._augment)

  def evaluate(self, server_state: PyTree = None) -> dict[str, float]:
    """Metrics of the global model in `server_state` (default: this run's)
    and of the clients' models on held-out data.

    `test_loss` and `test_accuracy` on the test split and, where clients
    hold out local test rows, the mean and 10th percentile over clients of
    the accuracy on their own rows, of the global model and of the
    clients' personal models (`ClientEvaluation`); a backdoor's success.
    """
    if server_state is None:
      server_state = self.server_state
    params = self._algorithm.evaluated_params(server_state)
    if jax.process_count() > 1:  # Each process evaluates on its own device.
      params = placement.to_host(params)
    test = self._evaluator(params)
    metrics = {'test_loss': test['loss'], 'test_accuracy': test['accuracy'],
               **self._backdoor_evaluator(params)}
    metrics.update(self._client_evaluation(
        server_state, params, self._algorithm_states, self.completed_rounds,
        jax.random.fold_in(self.rounds_key, self.completed_rounds)))
    return metrics

  def _algorithm_states(self, ids: np.ndarray) -> PyTree:
    """The algorithm's client state of clients `ids` (without the client
    stages' state), stacked."""
    if np.array_equal(ids, np.arange(self.store.num_clients)):
      rows = self.store.stacked  # Every client: no copy.
    else:
      rows = self.store.gather(ids)
    return rows.algorithm if self.channel.of_phase('client') else rows

  def _cohort_capacity(self) -> int:
    """Clients a round holds before padding to the device count: the cohort,
    or under Bernoulli participation a size it rarely exceeds."""
    cohort = self.config.clients_per_round
    if self.config.participation == 'bernoulli':
      return sampling.bernoulli_capacity(self.dataset.num_clients,
                                         cohort / self.dataset.num_clients)
    return cohort

  def _round_inputs(self, round_num: int) -> tuple[np.ndarray,
                                                   rounds.RoundInputs]:
    """The cohort of `round_num`, padded with zero-weight clients to its
    capacity (Bernoulli participation) and to a multiple of the device
    count."""
    num_clients = self.dataset.num_clients
    cohort = self.config.clients_per_round
    if self.config.participation == 'bernoulli':
      # Under DP the draw must stand as it fell, even if empty.
      ids = sampling.sample_bernoulli(
          self.config.seed, round_num, num_clients, cohort / num_clients,
          allow_empty=self.privacy is not None)
      cohort = max(len(ids), self._cohort_capacity())
    else:
      ids = sampling.sample_clients(self.config.seed, round_num, num_clients,
                                    cohort)
    batches = self._local_work.batches(ids, round_num)
    pad = cohort - len(ids) + (-cohort % self.mesh.shape[
        placement.CLIENTS_AXIS])
    padded_ids = np.concatenate([ids, np.zeros(pad, ids.dtype)])

    def pad_rows(a):
      return np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])

    inputs = rounds.RoundInputs(
        client_ids=padded_ids.astype(np.int32),
        indices=pad_rows(batches.indices), mask=pad_rows(batches.mask),
        is_real=pad_rows(np.ones(len(ids), np.float32)))
    return ids, inputs

  def _with_secagg(self, round_num: int, inputs: rounds.RoundInputs
                   ) -> rounds.RoundInputs:
    """`inputs` with the secure-aggregation protocol's round: key
    agreement, dropouts and the server's Shamir recovery."""
    participating = inputs.is_real > 0
    # A Bernoulli draw beyond the capacity could overflow the modulus.
    secure_aggregation.check_overflow(int(participating.sum()), self._secure)
    settings = self.config.secure_aggregation
    return inputs._replace(secagg=secagg_protocol.round_setup(
        self.config.seed, round_num, inputs.client_ids, participating,
        settings.dropout_fraction, settings.threshold))

  def run_round(self) -> dict[str, float]:
    """Runs the next round and returns its metrics as host floats."""
    prepared = self.prepare_round()
    round_key = jax.random.fold_in(self.rounds_key, prepared.round_num)
    traces = self.round_fn.num_traces
    self._consistent = False
    server_state, cohort_state, aggregator_state, metrics = self.round_fn(
        self.server_state,
        placement.put(prepared.cohort_state, self._cohort_sharding),
        self.aggregator_state, self._train_x, self._train_y,
        placement.put(prepared.inputs, self._cohort_sharding), round_key)
    epsilon = self.epsilon_after(prepared.round_num)  # While it runs.
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    self.server_state = server_state
    self.aggregator_state = aggregator_state
    record = self.finish_round(prepared, metrics, cohort_state, epsilon)
    record['compiled'] = self.round_fn.num_traces > traces
    return record

  def prepare_round(self) -> PreparedRound:
    """The host's work before the next round's compiled round: its cohort,
    batches, secure-aggregation setup and the cohort's client state."""
    start = time.perf_counter()
    round_num = self.completed_rounds
    ids, inputs = self._round_inputs(round_num)
    secagg_setup_s = None
    if self._secure is not None:
      secagg_start = time.perf_counter()
      inputs = self._with_secagg(round_num, inputs)
      secagg_setup_s = time.perf_counter() - secagg_start
    return PreparedRound(round_num, ids, inputs,
                         self.store.gather(inputs.client_ids), start,
                         secagg_setup_s)

  def epsilon_after(self, round_num: int) -> float | None:
    """The epsilon spent once round `round_num` (from 0) is done; None
    without client-level privacy (Gaussian DP or RQM)."""
    if self.privacy is None:
      return None
    return self.privacy.epsilon(round_num + 1)

  def finish_round(self, prepared: PreparedRound, metrics: dict[str, float],
                   cohort_state: PyTree, epsilon: float | None
                   ) -> dict[str, Any]:
    """The host's work after the compiled round: checks the loss, stores the
    cohort's new client state (padding rows included) and returns the
    round's record.

    Raises:
      TrainingDivergedError: the train loss is not finite.
    """
    round_num, ids, inputs = prepared.round_num, prepared.ids, prepared.inputs
    if not math.isfinite(metrics['train_loss']):
      raise TrainingDivergedError(
          f'Training diverged: the train loss is {metrics["train_loss"]} in '
          f'round {round_num + 1}. Lower --client_lr or --server_lr.',
          round_num + 1)
    self.store.scatter(ids, cohort_state)
    self.completed_rounds += 1
    self._consistent = True
    wall_s = time.perf_counter() - prepared.start
    metrics.setdefault('bytes_up', float(self._plain_bytes_up))
    metrics.setdefault('bytes_down', float(self.bytes_down))
    record = {'round': self.completed_rounds, **metrics,
              'compression_ratio': self.message_bytes / metrics['bytes_up']
              if metrics['bytes_up'] > 0 else float('inf'),
              'wall_s': wall_s,
              'examples_per_s': metrics['num_examples'] / wall_s,
              'local_steps': inputs.mask.shape[1],
              'padding_fraction': 1.0 - float(inputs.mask.mean())}
    if inputs.secagg is not None:
      record.update(
          secagg_setup_s=prepared.secagg_setup_s,
          secagg_dropped=int(np.sum(inputs.is_real > 0)
                             - np.sum(inputs.secagg.arrived)),
          secagg_mask_words=secure_aggregation.mask_words(
              int(np.sum(inputs.is_real > 0)),
              int(np.sum(inputs.arrived())), self._secagg_words))
    if epsilon is not None:
      record['epsilon'] = epsilon
    return record

  def complete_record(self, record: dict[str, Any],
                      evaluation: dict[str, float] | None = None) -> None:
    """Keeps the record of the round just run in `history`, adding the
    `evaluation` of the model after it, if it was evaluated, and then the
    sample-level epsilon spent so far."""
    if evaluation is not None:
      record.update(evaluation)
      if self.sample_privacy is not None:
        record['sample_epsilon'] = self.sample_privacy.epsilon(
            self.completed_rounds)
    self.history.append(record)

  @property
  def consistent(self) -> bool:
    """Whether the server state, client states and round count agree (no
    round is half done)."""
    return self._consistent

  def skip_round(self) -> None:
    """Counts the next round as done without running it: a run of a vmapped
    group that diverged sits out the group's rounds."""
    self.completed_rounds += 1

  def checkpoint_state(self) -> tuple[PyTree, PyTree, PyTree]:
    """The server, client and aggregator states a checkpoint holds."""
    return self.server_state, self.store.stacked, self.aggregator_state

  def restore(self, completed_rounds: int, server_state: PyTree,
              client_states: PyTree, aggregator_state: PyTree) -> None:
    """Continues from a checkpoint's states, saved after `completed_rounds`
    rounds."""
    self.server_state = server_state
    self.aggregator_state = aggregator_state
    self.restore_clients(completed_rounds, client_states)

  def restore_clients(self, completed_rounds: int,
                      client_states: PyTree) -> None:
    """Continues after `completed_rounds` rounds with the population's
    `client_states` (`[num_clients, ...]` per leaf), kept where the store
    keeps them; a run of a vmapped group, which holds the server state."""
    self.store = make_store(self.store.placement, client_states,
                            self.dataset.num_clients, self.mesh)
    self.completed_rounds = completed_rounds

  def keep_clients_on_host(self) -> None:
    """Moves the population's client state to a host store (numpy), as a
    vmapped group, which stacks its runs' cohorts on the host, keeps it."""
    self.store = ClientStateStore(jax.device_get(self.store.stacked),
                                  self.dataset.num_clients)

  def run(self) -> dict[str, Any]:
    """Runs (or resumes) the whole simulation and returns its summary."""
    config = self.config
    summaries = driver.run(
        driver.LoneRun(self), workdir=config.workdir,
        run_workdirs=[config.workdir], eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every, progress=config.progress)
    return summaries[0]

  def summary_entries(self) -> dict[str, Any]:
    """The run's summary entries beyond its metrics': its privacy."""
    return self.privacy_summary()

  def privacy_summary(self) -> dict[str, Any]:
    """The privacy a client-level DP run spent, and whether its budget cut
    it short."""
    if self.privacy is None:
      return {}
    summary = self.privacy.summary(self.completed_rounds)
    if self.final_round < self.config.num_rounds:
      summary['stopped_by_privacy_budget'] = (
          f'stopped after round {self.final_round} of '
          f'{self.config.num_rounds}: one more round would spend epsilon '
          f'{self.privacy.epsilon(self.final_round + 1):.4g} > the target '
          f'epsilon {self.privacy.settings.target_epsilon:g}')
    return summary
