"""Channel stages: every transformation of a message between the clients'
local training and the server update, as composable pure functions.

A `Stage` is an optax-like NamedTuple of pure functions with its own state.
Its `phase` says where it runs:

- 'broadcast': on the server's parameters before the clients receive them
  (downlink compression); `apply(state, params, key) -> (params, state,
  metrics)`.
- 'client': inside the vmapped client on its own message (momentum, error
  feedback, compression, RQM); its state is per client and lives in the
  client-state store; `apply(state, packet, key) -> (packet, state,
  metrics)`.
- 'cohort': on the stacked cohort's messages (attacks, client-level DP's
  clipping, centering); `apply(state, packets, ctx) -> (packets, state,
  metrics)`.
- 'reduce': exactly one, turning the cohort into one `Aggregate` (the mean,
  the secure sum, a robust rule); `apply(state, packets, ctx) ->
  (aggregate, state, metrics)`.

A cohort stage may also `finish(state, aggregate, ctx) -> (aggregate,
state, metrics)` after the reduction; finishes run in reverse order, so a
stage that transformed the messages on their way in sees the aggregate on
its way out (client-level DP adds its noise, centering adds the center
back). `chain(*stages)` checks the order and the combinations at build time
and names any conflict.
"""

from typing import Any, Callable, NamedTuple, Sequence

import jax

from fedjax_core.errors import SettingError

PyTree = Any
PHASES = ('broadcast', 'client', 'cohort', 'reduce')


class Packet(NamedTuple):
  """Messages in the channel: one client's inside the client, the
  cohort's (leading axis = cohort) after.

  Attributes:
    message: the message pytree.
    weight: the aggregation weight; 0 for clients that only pad the cohort.
    tallies: scalars in [0, 1] per client summed along with the messages
      (adaptive clipping's "was not clipped"), by name.
  """

  message: PyTree
  weight: jax.Array
  tallies: dict[str, jax.Array]


class Aggregate(NamedTuple):
  """The cohort reduced to one message.

  Attributes:
    mean: the server's estimate of the cohort's mean message.
    weight: the total weight of the clients counted (the denominator).
    tallies: each tally summed over the clients counted.
    arrived: `[cohort]` bool, the real clients whose messages were counted;
      the others keep their old client state.
  """

  mean: PyTree
  weight: jax.Array
  tallies: dict[str, jax.Array]
  arrived: jax.Array


class RoundContext(NamedTuple):
  """What a cohort stage knows of the round besides the messages.

  Attributes:
    client_ids: `[cohort]` int32 global client ids.
    is_real: `[cohort]` bool, False for clients that only pad the cohort.
    arrived: `[cohort]` bool, the real clients whose messages reach the
      server (all of them unless the host's protocol drops some).
    secagg: the secure-aggregation protocol's round inputs, or None.
    key: the stage's key for the round (its `stream` folded into the round
      key; None for a stage without a stream).
  """

  client_ids: jax.Array
  is_real: jax.Array
  arrived: jax.Array
  secagg: Any
  key: jax.Array


def _no_state(template: PyTree) -> tuple:
  del template
  return ()


class Stage(NamedTuple):
  """One transformation of the messages (see the module docstring).

  Attributes:
    name: what the stage is, for error messages and checks.
    phase: one of `PHASES`.
    apply: the transformation; its signature depends on the phase.
    init: `message_template -> state` (the server's params for a
      'broadcast' stage; one client's state for a 'client' stage).
    finish: 'cohort' stages only, after the reduction, or None.
    stream: the PRNG stream (a `fedjax_core.streams` tag) folded into the
      round key (or, for 'client' stages, into the client's key) for this
      stage's key; None for a stage that draws no randomness (its key is
      None).
    provides: what a 'reduce' stage guarantees, e.g. 'sum' (a linear sum
      of the messages, whose sensitivity clipping bounds).
    needs: what this stage needs of the reducer, e.g. 'sum'.
    client_inputs: 'client' stages: `ctx -> [cohort] pytree` computed on
      the cohort before local training, each client gets its row.
    poison: 'client' stages: `(row, x, y) -> (x, y)` on every local
      batch (data poisoning: label flipping, backdoor triggers), x float32
      after `as_float` and augmentation; or None.
    accountant: host-side privacy accountant (`epsilon(rounds)`), or None.
  """

  name: str
  phase: str
  apply: Callable[..., Any]
  init: Callable[[PyTree], PyTree] = _no_state
  finish: Callable[..., Any] | None = None
  stream: int | None = None
  provides: frozenset[str] = frozenset()
  needs: frozenset[str] = frozenset()
  client_inputs: Callable[[RoundContext], PyTree] | None = None
  poison: Callable[[PyTree, jax.Array, jax.Array],
                   tuple[jax.Array, jax.Array]] | None = None
  accountant: Any = None


class Chain(NamedTuple):
  """Stages in order, checked by `chain`; the round runs them through
  `broadcast`, `client`, `aggregate`."""

  stages: tuple[Stage, ...]

  def of_phase(self, phase: str) -> tuple[Stage, ...]:
    return tuple(s for s in self.stages if s.phase == phase)

  @property
  def accountant(self):
    """The privacy accountant of the chain's stages, or None."""
    return next((s.accountant for s in self.stages if s.accountant), None)

  def init(self, message_template: PyTree, params: PyTree
           ) -> dict[str, PyTree]:
    """The server-side state of the non-client stages that keep one, by
    `'{position}_{name}'` (a checkpointable dict; empty if none does)."""
    states = {}
    for key, stage in self._server_side():
      state = stage.init(params if stage.phase == 'broadcast' else
                         message_template)
      if jax.tree.leaves(state):
        states[key] = state
    return states

  def client_init(self, message_template: PyTree) -> tuple:
    """One client's state of every client stage, in order."""
    return tuple(s.init(message_template) for s in self.of_phase('client'))

  def broadcast(self, state: dict[str, PyTree], params: PyTree,
                round_key: jax.Array
                ) -> tuple[PyTree, dict[str, PyTree], dict[str, jax.Array]]:
    """What the clients receive; returns it, the new state and metrics."""
    state, metrics = dict(state), {}
    for key, stage in self._server_side():
      if stage.phase == 'broadcast':
        params, new, m = stage.apply(state.get(key, ()), params,
                                     _key(round_key, stage))
        _keep(state, key, new)
        metrics.update(m)
    return params, state, metrics

  def client_inputs(self, ctx: RoundContext) -> tuple:
    """Every client stage's per-client inputs of the round ([cohort] rows)."""
    return tuple(s.client_inputs(ctx._replace(key=_key(ctx.key, s)))
                 if s.client_inputs else () for s in self.of_phase('client'))

  def poison(self, inputs: tuple, x: jax.Array, y: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
    """One client's batch after every client stage's `poison`."""
    for stage, row in zip(self.of_phase('client'), inputs):
      if stage.poison is not None:
        x, y = stage.poison(row, x, y)
    return x, y

  @property
  def poisons(self) -> bool:
    """Whether any client stage changes the batches clients train on."""
    return any(s.poison is not None for s in self.of_phase('client'))

  def client(self, state: tuple, packet: Packet, client_key: jax.Array
             ) -> tuple[Packet, tuple, dict[str, jax.Array]]:
    """One client's message through the client stages."""
    states, metrics = list(state), {}
    for i, stage in enumerate(self.of_phase('client')):
      packet, states[i], m = stage.apply(states[i], packet,
                                         _key(client_key, stage))
      metrics.update(m)
    return packet, tuple(states), metrics

  def aggregate(self, state: dict[str, PyTree], packets: Packet,
                ctx: RoundContext
                ) -> tuple[Aggregate, dict[str, PyTree], dict[str, jax.Array]]:
    """The cohort's messages through the cohort stages and the reducer,
    then the cohort stages' finishes in reverse order."""
    state, metrics = dict(state), {}
    keyed = lambda s: ctx._replace(key=_key(ctx.key, s))
    finishing = []
    for key, stage in self._server_side():
      if stage.phase == 'cohort':
        packets, new, m = stage.apply(state.get(key, ()), packets,
                                      keyed(stage))
        if stage.finish is not None:
          finishing.append((key, stage))
      elif stage.phase == 'reduce':
        aggregate, new, m = stage.apply(state.get(key, ()), packets,
                                        keyed(stage))
      else:
        continue
      _keep(state, key, new)
      metrics.update(m)
    for key, stage in reversed(finishing):
      aggregate, new, m = stage.finish(state.get(key, ()), aggregate,
                                       keyed(stage))
      _keep(state, key, new)
      metrics.update(m)
    return aggregate, state, metrics

  def _server_side(self):
    """(state key, stage) of the non-client stages."""
    return ((f'{i}_{s.name.replace(" ", "_")}', s)
            for i, s in enumerate(self.stages) if s.phase != 'client')


def _key(key: jax.Array, stage: Stage) -> jax.Array | None:
  """The stage's key: its stream folded into `key`; None without one."""
  return None if stage.stream is None else jax.random.fold_in(key,
                                                              stage.stream)


def _keep(state: dict[str, PyTree], key: str, new: PyTree) -> None:
  """Stores a stage's new state; a stage without state stores nothing."""
  if jax.tree.leaves(new):
    state[key] = new


def chain(*stages: Stage) -> Chain:
  """Checks `stages` and composes them.

  The phases must come in the order of `PHASES`; there is at most one
  'broadcast' stage, exactly one 'reduce' stage (append
  `fedjax_core.channel.mean()` for the plain weighted mean), and at most one
  stage with a privacy accountant; every stage's `needs` must be among the
  reducer's `provides`.

  Raises:
    SettingError: naming the stages that conflict and why.

  Examples:
    >>> from fedjax_core import channel
    >>> pipeline = channel.chain(channel.mean())
  """
  order = {phase: i for i, phase in enumerate(PHASES)}
  for stage in stages:
    if stage.phase not in order:
      raise SettingError('channel', f'Stage {stage.name!r} has unknown phase '
                         f'{stage.phase!r}; valid: {", ".join(PHASES)}.')
  for before, after in zip(stages, stages[1:]):
    if order[before.phase] > order[after.phase]:
      raise SettingError(
          'channel', f'Stage {after.name!r} ({after.phase}) cannot follow '
          f'{before.name!r} ({before.phase}); phases run in the order '
          f'{" -> ".join(PHASES)}.')
  _at_most_one(stages, lambda s: s.phase == 'broadcast', 'broadcast stages',
               'the clients receive one model')
  reducers = [s for s in stages if s.phase == 'reduce']
  if not reducers:
    raise SettingError('channel', 'The chain has no reduce stage; end it '
                       'with channel.mean() for the weighted mean.')
  _at_most_one(stages, lambda s: s.phase == 'reduce', 'reduce stages',
               'a robust rule needs every message in the clear, which '
               'secure aggregation hides; keep one')
  _at_most_one(stages, lambda s: s.accountant is not None,
               'stages that account privacy',
               'their guarantees would have to be composed; keep one')
  reducer = reducers[0]
  for stage in stages:
    missing = stage.needs - reducer.provides
    if missing:
      raise SettingError(
          'channel', f'Stage {stage.name!r} needs a reducer that provides '
          f'{", ".join(sorted(missing))}; {reducer.name!r} does not.')
  return Chain(tuple(stages))


def _at_most_one(stages: Sequence[Stage], test, what: str, why: str) -> None:
  found = [s.name for s in stages if test(s)]
  if len(found) > 1:
    raise SettingError('channel', f'{len(found)} {what} ({", ".join(found)})'
                       f': {why}.')
