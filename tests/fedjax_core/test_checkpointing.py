"""Tests of fedjax_core.engine.checkpointing."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from checkpoint_damage import DAMAGES, empty, printed_notes, truncate
from fedjax_core.algorithm import Frozen
from fedjax_core.engine.checkpointing import CheckpointMismatchError, Checkpointer


def _state(offset):
  server = {'params': {'w': jnp.arange(3, dtype=jnp.float32) + offset,
                       'b': jnp.float32(offset)},
            'step': jnp.int32(offset)}
  clients = {'c': np.arange(8, dtype=np.float32).reshape(4, 2) + offset,
             'n': np.full(4, offset, np.int32)}
  return server, clients


def _zeros_like(tree):
  return jax.tree.map(
      lambda a: np.zeros_like(a) if isinstance(a, np.ndarray)
      else jnp.zeros_like(a), tree)


def _assert_same_values_and_types(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert type(g) is type(w) or (isinstance(g, jax.Array)
                                  and isinstance(w, jax.Array)), (g, w)
    assert g.dtype == w.dtype and g.shape == w.shape
    np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


def test_save_two_rounds_and_restore_each(tmp_path):
  """After saving rounds 1 and 2 the latest is 2, and each restores its own
  values with the template's types (jax stays jax, numpy stays numpy)."""
  directory = str(tmp_path / 'ckpt')
  ckpt = Checkpointer(directory, max_to_keep=3)
  assert ckpt.latest_round() is None
  ckpt.save(1, *_state(1))
  ckpt.save(2, *_state(2))
  ckpt.close()

  ckpt = Checkpointer(directory, max_to_keep=3)
  assert ckpt.latest_round() == 2
  server_t, clients_t = _zeros_like(_state(0)[0]), _zeros_like(_state(0)[1])
  for r in (1, 2):
    server, clients, aggregator = ckpt.restore(r, server_t, clients_t)
    assert aggregator == {}  # Saved without aggregator state.
    want_server, want_clients = _state(r)
    _assert_same_values_and_types(server, want_server)
    _assert_same_values_and_types(clients, want_clients)
    assert isinstance(server['params']['w'], jax.Array)
    assert isinstance(clients['c'], np.ndarray)
    assert not isinstance(clients['c'], jax.Array)
    clients['c'][0, 0] = -1.0  # The restored store rows are writable.
  ckpt.close()


def test_max_to_keep_deletes_old_rounds(tmp_path):
  """With max_to_keep=2 only the two newest of rounds 1, 2, 3 remain."""
  directory = str(tmp_path / 'ckpt')
  ckpt = Checkpointer(directory, max_to_keep=2)
  for r in (1, 2, 3):
    ckpt.save(r, *_state(r))
  ckpt.close()
  steps = sorted(int(d) for d in os.listdir(directory) if d.isdigit())
  assert steps == [2, 3]
  ckpt = Checkpointer(directory, max_to_keep=2)
  assert ckpt.latest_round() == 3
  server, _, _ = ckpt.restore(3, *map(_zeros_like, _state(0)))
  np.testing.assert_array_equal(server['params']['w'], [3.0, 4.0, 5.0])
  ckpt.close()


def test_empty_tuple_client_state(tmp_path):
  """Stateless clients (client state `()`) save and restore as `()`."""
  directory = str(tmp_path / 'ckpt')
  server = {'w': jnp.array([1.5, -2.0])}
  ckpt = Checkpointer(directory)
  ckpt.save(5, server, ())
  ckpt.close()
  ckpt = Checkpointer(directory)
  assert ckpt.latest_round() == 5
  restored_server, restored_clients, _ = ckpt.restore(
      5, {'w': jnp.zeros(2)}, ())
  assert restored_clients == ()
  np.testing.assert_array_equal(restored_server['w'], [1.5, -2.0])
  ckpt.close()


def test_relative_directory_works(tmp_path, monkeypatch):
  """A workdir given as a relative path (the CLI's default) checkpoints."""
  monkeypatch.chdir(tmp_path)
  checkpointer = Checkpointer(os.path.join('runs', 'x', 'checkpoints'))
  checkpointer.save(1, {'w': jnp.ones(2)}, ())
  checkpointer.close()
  restored, _, _ = Checkpointer('runs/x/checkpoints').restore(
      1, {'w': jnp.zeros(2)}, ())
  np.testing.assert_array_equal(restored['w'], [1.0, 1.0])
  assert os.path.isdir(tmp_path / 'runs' / 'x' / 'checkpoints' / '1')


def test_aggregator_state_round_trips(tmp_path):
  """An adaptive clip norm saved with the round comes back with it."""
  ckpt = Checkpointer(str(tmp_path / 'ckpt'))
  ckpt.save(1, *_state(1), {'clip_norm': jnp.float32(0.37)})
  ckpt.close()
  ckpt = Checkpointer(str(tmp_path / 'ckpt'))
  _, _, aggregator = ckpt.restore(1, *map(_zeros_like, _state(0)),
                                  {'clip_norm': jnp.float32(0.0)})
  np.testing.assert_array_equal(aggregator['clip_norm'], np.float32(0.37))
  ckpt.close()


@pytest.mark.parametrize('damage', DAMAGES, ids=lambda f: f.__name__)
def test_restore_latest_falls_back_past_an_unreadable_checkpoint(
    tmp_path, capsys, damage):
  """A damaged newest round is reported in one line and deleted; the older
  one is restored, and the damaged round can be saved again."""
  directory = str(tmp_path / 'ckpt')
  ckpt = Checkpointer(directory)
  ckpt.save(1, *_state(1))
  ckpt.save(2, *_state(2))
  ckpt.close()
  damage(os.path.join(directory, '2'))
  capsys.readouterr()

  ckpt = Checkpointer(directory)
  step, server, clients, _ = ckpt.restore_latest(
      *map(_zeros_like, _state(0)))
  assert step == 1
  _assert_same_values_and_types(server, _state(1)[0])
  _assert_same_values_and_types(clients, _state(1)[1])
  notes = printed_notes(capsys)
  assert len(notes) == 1, notes
  assert re.fullmatch(r'Checkpoint of round 2 in .*ckpt is unreadable '
                      r'\(\w+: .{1,97}\); deleted it, trying round 1\.',
                      notes[0]), notes[0]
  assert sorted(os.listdir(directory)) == ['1']
  ckpt.save(2, *_state(7))  # Not refused as an existing round.
  ckpt.close()
  ckpt = Checkpointer(directory)
  step, server, _, _ = ckpt.restore_latest(*map(_zeros_like, _state(0)))
  assert step == 2
  np.testing.assert_array_equal(server['params']['w'], [7.0, 8.0, 9.0])
  ckpt.close()


def test_restore_latest_with_no_readable_checkpoint_starts_clean(
    tmp_path, capsys):
  directory = str(tmp_path / 'ckpt')
  ckpt = Checkpointer(directory)
  assert ckpt.restore_latest(*map(_zeros_like, _state(0))) is None
  ckpt.save(1, *_state(1))
  ckpt.save(2, *_state(2))
  ckpt.close()
  truncate(os.path.join(directory, '2'))
  empty(os.path.join(directory, '1'))
  capsys.readouterr()

  ckpt = Checkpointer(directory)
  assert ckpt.restore_latest(*map(_zeros_like, _state(0))) is None
  notes = printed_notes(capsys)
  assert len(notes) == 2, notes
  assert notes[0].startswith('Checkpoint of round 2 ')
  assert notes[0].endswith('; deleted it, trying round 1.')
  assert notes[1].startswith('Checkpoint of round 1 ')
  assert notes[1] == (
      f'Checkpoint of round 1 in {directory} is unreadable '
      '(FileNotFoundError: no checkpoint metadata); deleted it, no readable '
      'checkpoint is left, so the run starts from round 0.')
  ckpt.save(1, *_state(1))  # A clean start saves again.
  ckpt.close()
  assert Checkpointer(directory).latest_round() == 1


def test_restore_latest_refuses_another_structure_without_falling_back(
    tmp_path, capsys):
  """A checkpoint of other shapes (another model) is not damage: it stays,
  and the error says how to get out."""
  directory = str(tmp_path / 'ckpt')
  ckpt = Checkpointer(directory)
  ckpt.save(1, *_state(1))
  ckpt.save(2, *_state(2))
  ckpt.close()
  capsys.readouterr()
  server, clients = map(_zeros_like, _state(0))
  server['params']['w'] = jnp.zeros(5)
  server['params']['extra'] = jnp.zeros((2, 2))
  del server['step']

  ckpt = Checkpointer(directory)
  with pytest.raises(CheckpointMismatchError) as raised:
    ckpt.restore_latest(server, clients)
  ckpt.close()
  assert str(raised.value) == (
      f'The checkpoint of round 2 in {directory} was written by a run with '
      'a different model or algorithm state (server/params/extra is not in '
      'the checkpoint; server/params/w is float32[3] there, float32[5] '
      'here; server/step is only in the checkpoint). Use a new workdir, '
      f'or delete {directory} to start over.')
  assert raised.value.setting == 'workdir'
  assert isinstance(raised.value, ValueError)  # The CLI's one-line error.
  assert printed_notes(capsys) == []
  assert sorted(os.listdir(directory)) == ['1', '2']


def test_restore_latest_counts_an_empty_node_as_structure(tmp_path):
  """Orbax refuses a template with an extra empty node (a stateless
  optimizer's state) too: a mismatch, not damage to delete."""
  directory = str(tmp_path / 'ckpt')
  ckpt = Checkpointer(directory)
  ckpt.save(1, {'w': jnp.ones(2)}, ())
  ckpt.close()
  ckpt = Checkpointer(directory)
  with pytest.raises(CheckpointMismatchError,
                     match=r'\(server/opt is not in the checkpoint\)'):
    ckpt.restore_latest({'w': jnp.zeros(2), 'opt': ()}, ())
  step, server, _, _ = ckpt.restore_latest({'w': jnp.zeros(2)}, ())
  ckpt.close()
  assert step == 1
  np.testing.assert_array_equal(server['w'], [1.0, 1.0])


def test_restore_latest_compares_without_frozen_state(tmp_path):
  """`Frozen` state is not saved, so it is no mismatch; it comes back as
  the template's."""
  directory = str(tmp_path / 'ckpt')
  ckpt = Checkpointer(directory)
  ckpt.save(3, {'w': jnp.ones(2), 'base': Frozen(jnp.ones(4))}, ())
  ckpt.close()
  ckpt = Checkpointer(directory)
  base = Frozen(jnp.full(4, 2.0))
  step, server, _, _ = ckpt.restore_latest(
      {'w': jnp.zeros(2), 'base': base}, ())
  ckpt.close()
  assert step == 3 and server['base'] is base
  np.testing.assert_array_equal(server['w'], [1.0, 1.0])
