"""Checkpoints of a run's server state and client-state store, via orbax.

A checkpoint's step is the number of completed rounds. Everything a resumed
run needs is a function of that step and the run's flags (the sampler, the
batch shuffles and the PRNG keys derive from the seed and the round), so a
resumed run is bit-identical to an uninterrupted one. `Frozen` state (a
pre-trained base) is left out: a resumed run has it from its start.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from fedjax_core.algorithm import Frozen

PyTree = Any


def _is_frozen(node: Any) -> bool:
  return isinstance(node, Frozen)


def _without_frozen(tree: PyTree) -> PyTree:
  """`tree` with every `Frozen` node emptied."""
  return jax.tree.map(lambda x: Frozen(()) if _is_frozen(x) else x, tree,
                      is_leaf=_is_frozen)


class Checkpointer:
  """Saves and restores `{'server': server_state, 'clients': stacked,
  'aggregator': aggregator_state}` (the last one empty unless the
  aggregation keeps state, e.g. an adaptive DP clip norm)."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory), options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True))

  def latest_round(self) -> int | None:
    """Completed rounds of the newest checkpoint, None if there is none."""
    return self._manager.latest_step()

  def save(self, completed_rounds: int, server_state: PyTree,
           client_states: PyTree, aggregator_state: PyTree = None) -> None:
    """Starts saving; returns once the state no longer needs its buffers."""
    self._manager.save(completed_rounds, args=ocp.args.StandardSave(
        {'server': _without_frozen(server_state), 'clients': client_states,
         'aggregator': aggregator_state or {}}))

  def restore(self, completed_rounds: int, server_template: PyTree,
              clients_template: PyTree, aggregator_template: PyTree = None
              ) -> tuple[PyTree, PyTree, PyTree]:
    """The saved server, client and aggregator states, with the templates'
    types, shapes and shardings; the server's `Frozen` state is the
    template's."""
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                          {'server': _without_frozen(server_template),
                           'clients': clients_template,
                           'aggregator': aggregator_template or {}})
    restored = self._manager.restore(
        completed_rounds, args=ocp.args.StandardRestore(target))
    server = jax.tree.map(
        lambda template, saved: template if _is_frozen(template) else saved,
        server_template, restored['server'], is_leaf=_is_frozen)
    return server, restored['clients'], restored['aggregator']

  def close(self) -> None:
    """Waits for pending saves and releases the manager."""
    self._manager.wait_until_finished()
    self._manager.close()
