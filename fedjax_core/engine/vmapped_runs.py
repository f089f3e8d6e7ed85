"""Several runs of one configuration as one compiled program.

Runs that differ only in their seed, and optionally in scalar
hyperparameters (the client or server learning rate, SAM's rho, FedProx's
mu, ...), share one compiled round: `jax.vmap` over a leading run axis of the
server state, the cohort's client state, the aggregator state, the round's
inputs, the training data and the PRNG keys. Each run keeps its own
`Simulation` for the host's work (its sampler, batches, client-state store,
evaluation and privacy accounting), so run k computes what the single run of
its seed and hyperparameters computes; only the compiled round is shared.
One checkpoint holds every run; each run writes its own metrics and summary
(`fedjax_core.engine.driver` runs the loop). A run that diverges stops alone.
"""

import dataclasses
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_core.engine import driver
from fedjax_core.engine import placement
from fedjax_core.algorithm import Algorithm
from fedjax_core.engine.driver import TrainingDivergedError
from fedjax_core.engine.rounds import RoundInputs
from fedjax_core.engine.simulation import PreparedRound, Simulation

PyTree = Any
Record = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a vmapped group.

  Attributes:
    simulation: the run's own simulation, built with `workdir=None` (the
      group does the run's I/O).
    workdir: where the run's `metrics.jsonl` and `summary.json` go; None
      keeps them in memory only.
    hparams: the run's values of the hyperparameters that vary along the
      run axis, e.g. `{'client_lr': 0.05}`; every run names the same ones.
  """

  simulation: Simulation
  workdir: str | None = None
  hparams: dict[str, float] = dataclasses.field(default_factory=dict)


def _stack(trees: Sequence[PyTree]) -> PyTree:
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]),
                      *trees)


def _run_slice(stacked: PyTree, k: int) -> PyTree:
  """Run k's tree of `stacked`, a tree stacked on the run axis."""
  return jax.tree.map(lambda a: a[k], stacked)


def _pad_axis(a: np.ndarray, axis: int, size: int, edge: bool) -> np.ndarray:
  """`a` padded along `axis` to `size`, with zeros or copies of its first
  entry along that axis."""
  missing = size - a.shape[axis]
  if missing == 0:
    return a
  shape = list(a.shape)
  shape[axis] = missing
  if edge:
    fill = np.repeat(np.take(a, [0], axis=axis), missing, axis=axis)
  else:
    fill = np.zeros(shape, a.dtype)
  return np.concatenate([a, fill], axis=axis)


def _stacked_round(prepared: Sequence[PreparedRound]
                   ) -> tuple[RoundInputs, PyTree]:
  """The runs' round inputs and cohort states stacked on a leading run
  axis: cohorts padded with zero-weight clients (the state of each run's
  first client) and local steps with empty steps to the largest run's."""
  cohort = max(p.inputs.mask.shape[0] for p in prepared)
  steps = max(p.inputs.mask.shape[1] for p in prepared)
  if any(p.inputs.secagg is not None for p in prepared) and any(
      p.inputs.mask.shape[0] != cohort for p in prepared):
    raise ValueError('Secure aggregation needs every run\'s cohort to be of '
                     'one size; use --participation=fixed.')

  def padded(p: PreparedRound) -> tuple[RoundInputs, PyTree]:
    inputs = p.inputs._replace(
        client_ids=_pad_axis(p.inputs.client_ids, 0, cohort, False),
        indices=_pad_axis(_pad_axis(p.inputs.indices, 1, steps, False), 0,
                          cohort, False),
        mask=_pad_axis(_pad_axis(p.inputs.mask, 1, steps, False), 0, cohort,
                       False),
        is_real=_pad_axis(p.inputs.is_real, 0, cohort, False))
    state = jax.tree.map(lambda a: _pad_axis(np.asarray(a), 0, cohort, True),
                         p.cohort_state)
    return inputs, state

  inputs, states = zip(*map(padded, prepared))
  return _stack(inputs), _stack(states)


def _stacked_data(arrays: Sequence[np.ndarray]) -> tuple[np.ndarray, Any]:
  """One array every run shares (vmap axis None) if the runs' are equal,
  else theirs stacked on a run axis (axis 0), padded to the longest."""
  first = arrays[0]
  if all(a is first or (a.shape == first.shape and np.array_equal(a, first))
         for a in arrays):
    return first, None
  rows = max(len(a) for a in arrays)
  return np.stack([_pad_axis(a, 0, rows, False) for a in arrays]), 0


class VmappedRuns:
  """Runs `runs` as one compiled program, a leading run axis over them: the
  driver's group of those runs (`driver.RunGroup`).

  Examples:
    >>> sims = [Simulation(algorithm, model, load_dataset('digits', seed=s),
    ...                    dataclasses.replace(config, seed=s))
    ...         for s in range(4)]
    >>> summaries = VmappedRuns([Run(sim) for sim in sims]).run()
  """

  def __init__(self, runs: Sequence[Run], *,
               algorithm_for: Callable[[dict[str, jax.Array]],
                                       Algorithm] | None = None,
               workdir: str | None = None, progress: bool = True):
    """Checks that the runs fit one program.

    Args:
      runs: the runs; their simulations share every setting but the seed
        and their `hparams`.
      algorithm_for: builds the algorithm from the run-axis hyperparameters
        (traced scalars, named as in `Run.hparams`); needed when the runs
        have any.
      workdir: where the checkpoints of all runs and `runs.json` go; None
        keeps nothing on disk.
      progress: show a progress bar.
    """
    if not runs:
      raise ValueError('VmappedRuns needs at least one run.')
    self.runs = list(runs)
    self._sims = [run.simulation for run in self.runs]
    first = self._sims[0]
    names = set(self.runs[0].hparams)
    for run in self.runs:
      config = run.simulation.config
      if config.workdir is not None:
        raise ValueError('Build each run\'s Simulation with workdir=None; '
                         'VmappedRuns writes to Run.workdir.')
      if dataclasses.replace(config, seed=0) != dataclasses.replace(
          first.config, seed=0):
        raise ValueError('Vmapped runs must share every setting but the '
                         'seed; run the others separately.')
      if set(run.hparams) != names:
        raise ValueError('Every run must name the same run-axis '
                         f'hyperparameters; got {sorted(run.hparams)} and '
                         f'{sorted(names)}.')
    if names and algorithm_for is None:
      raise ValueError('Runs that vary hyperparameters need algorithm_for.')
    self.final_round = first.final_round
    self._workdir = workdir
    self._progress = progress
    self._algorithm_for = algorithm_for
    self.num_traces = 0
    self._consistent = True  # server state, stores and round count agree.
    self.diverged: dict[int, TrainingDivergedError] = {}
    for sim in self._sims:  # The group stacks its runs' cohorts on the host.
      sim.keep_clients_on_host()
    mesh = first.mesh
    self._replicated = placement.replicated_sharding(mesh)
    self._cohort_sharding = jax.NamedSharding(
        mesh, jax.sharding.PartitionSpec(None, placement.CLIENTS_AXIS))
    train_x, x_axis = _stacked_data([s.dataset.train_x for s in self._sims])
    train_y, y_axis = _stacked_data([s.dataset.train_y for s in self._sims])
    self._train_x = jax.device_put(train_x, self._replicated)
    self._train_y = jax.device_put(train_y, self._replicated)
    self._hparams = jax.device_put(
        {name: np.array([run.hparams[name] for run in self.runs], np.float32)
         for name in sorted(names)}, self._replicated)
    self._rounds_keys = jax.device_put(
        jnp.stack([s.rounds_key for s in self._sims]), self._replicated)
    # The runs' server and aggregator states, stacked on the run axis.
    self.server_state, self.aggregator_state = (
        jax.device_put(jax.tree.map(lambda *xs: jnp.stack(xs), *states),
                       self._replicated)
        for states in ([s.server_state for s in self._sims],
                       [s.aggregator_state for s in self._sims]))
    self._jitted = jax.jit(
        jax.vmap(self._one_run, in_axes=(0, 0, 0, 0, x_axis, y_axis, 0, 0,
                                         None)),
        donate_argnums=(1, 2, 3))

  @property
  def completed_rounds(self) -> int:
    return self._sims[0].completed_rounds

  @property
  def consistent(self) -> bool:
    """Whether the server states, stores and round count agree."""
    return self._consistent

  def _one_run(self, hparams, server_state, cohort_state, aggregator_state,
               train_x, train_y, inputs, rounds_key, round_num):
    """One run's round; vmapped over the runs."""
    self.num_traces += 1
    round_fn = self._sims[0].round_fn
    if hparams:
      try:
        round_fn = self._sims[0].compiled_round(self._algorithm_for(hparams))
      except jax.errors.ConcretizationTypeError as e:
        raise ValueError(
            f'The algorithm branches on the value of {", ".join(hparams)}, '
            'so it cannot vary along the run axis; run each value as its '
            'own run (scripts.sweep does).') from e
    return round_fn.body(server_state, cohort_state, aggregator_state,
                         train_x, train_y, inputs,
                         jax.random.fold_in(rounds_key, round_num))

  def run_round(self) -> list[driver.Outcome]:
    """Runs the next round of every run; returns each run's record, the
    error of a run that diverged in it, or None for a run that diverged
    before."""
    start = time.perf_counter()
    prepared = [s.prepare_round()._replace(start=start) for s in self._sims]
    inputs, cohort_state = _stacked_round(prepared)
    round_num = prepared[0].round_num
    traces = self.num_traces
    self._consistent = False
    server_state, cohort_state, aggregator_state, metrics = self._jitted(
        self._hparams, self.server_state,
        jax.device_put(cohort_state, self._cohort_sharding),
        self.aggregator_state, self._train_x, self._train_y,
        jax.device_put(inputs, self._cohort_sharding), self._rounds_keys,
        round_num)
    epsilons = [s.epsilon_after(round_num) for s in self._sims]
    metrics = jax.device_get(metrics)
    cohort_state = jax.tree.map(np.asarray, jax.device_get(cohort_state))
    self.server_state = server_state
    self.aggregator_state = aggregator_state
    outcomes = []
    for k, p in enumerate(prepared):
      rows = jax.tree.map(lambda a: a[k, :len(p.inputs.client_ids)],
                          cohort_state)
      run_metrics = {name: float(v[k]) for name, v in metrics.items()}
      outcomes.append(self._finish(k, p, run_metrics, rows, epsilons[k]))
    self._consistent = True
    # Every run's round took the shared round's time (evaluation excluded,
    # as in a single run).
    wall_s = time.perf_counter() - start
    for record in outcomes:
      if isinstance(record, dict):
        record.update(wall_s=wall_s,
                      examples_per_s=record['num_examples'] / wall_s,
                      compiled=self.num_traces > traces)
    return outcomes

  def _finish(self, k: int, prepared: PreparedRound,
              metrics: dict[str, float], rows: PyTree,
              epsilon: float | None) -> driver.Outcome:
    """Run k's outcome of the round (see `run_round`)."""
    sim = self._sims[k]
    if k in self.diverged:
      sim.skip_round()
      return None
    try:
      return sim.finish_round(prepared, metrics, rows, epsilon)
    except TrainingDivergedError as e:
      self.diverged[k] = e
      sim.skip_round()
      return e

  def complete_records(self, records: Sequence[Record | None],
                       evaluate: bool) -> None:
    """Adds to each live run's record of the round just run its evaluation
    if `evaluate` (of its server state, from the runs' stacked one on the
    host), and keeps the records in the runs' histories."""
    host_state = jax.device_get(self.server_state) if evaluate else None
    for k, (sim, record) in enumerate(zip(self._sims, records)):
      if record is None:
        continue
      evaluation = None
      if evaluate:
        evaluation = sim.evaluate(_run_slice(host_state, k))
      sim.complete_record(record, evaluation)

  def checkpoint_state(self) -> tuple[PyTree, PyTree, PyTree]:
    """The runs' server, client and aggregator states, stacked on the run
    axis."""
    return (self.server_state, _stack([s.store.stacked for s in self._sims]),
            self.aggregator_state)

  def restore(self, completed_rounds: int, server_state: PyTree,
              client_states: PyTree, aggregator_state: PyTree) -> None:
    """Continues every run from a checkpoint's stacked states, saved after
    `completed_rounds` rounds."""
    self.server_state = server_state
    self.aggregator_state = aggregator_state
    for k, sim in enumerate(self._sims):
      sim.restore_clients(
          completed_rounds,
          jax.tree.map(lambda a: np.array(a[k]), client_states))

  def stop(self, k: int, error: TrainingDivergedError) -> None:
    """Stops run k, which diverged with `error`."""
    self.diverged[k] = error

  def history(self, k: int) -> list[Record]:
    return self._sims[k].history

  def summary(self, k: int) -> dict[str, Any]:
    """Run k's privacy spent, seed and run-axis hyperparameters."""
    run = self.runs[k]
    return {**run.simulation.privacy_summary(),
            'seed': run.simulation.config.seed, **run.hparams}

  def name(self, k: int) -> str:
    run = self.runs[k]
    parts = [f'{n}={v:g}' for n, v in sorted(run.hparams.items())]
    return ' '.join(parts + [f'seed {run.simulation.config.seed}'])

  def run(self) -> list[dict[str, Any]]:
    """Runs (or resumes) every run; returns their summaries in order. A run
    that diverges stops being trained and reported; the others go on."""
    config = self._sims[0].config
    return driver.run(
        self, workdir=self._workdir,
        run_workdirs=[run.workdir for run in self.runs],
        eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every, progress=self._progress,
        runs_description=[{'seed': run.simulation.config.seed,
                           'hparams': run.hparams, 'workdir': run.workdir}
                          for run in self.runs])
