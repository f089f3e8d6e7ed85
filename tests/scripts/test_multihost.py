"""A two-process run (jax.distributed, 4 CPU devices each) equals the same
run in one process on 8 devices."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

# Every test here launches processes.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
_FLAGS = ('--dataset=synthetic', '--model=logreg', '--num_clients=20',
          '--clients_per_round=5', '--algorithm=scaffold', '--num_rounds=3',
          '--eval_every=1', '--checkpoint_every=2', '--progress=false')
_TIMEOUT_S = 240


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env() -> dict:
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=REPO)


def _two_processes(workdir: str, *flags: str) -> list[str]:
  """Runs scripts.train as processes 0 and 1; returns their stdouts. A
  process that fails or hangs fails the test, and its partner is killed
  (a survivor would wait in a collective)."""
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'scripts.train', *_FLAGS, *flags,
       f'--workdir={workdir}', '--cpu_devices=4',
       f'--coordinator_address=localhost:{port}', '--num_processes=2',
       f'--process_id={i}'],
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, start_new_session=True) for i in range(2)]
  outputs = []
  try:
    for proc in procs:
      out, err = proc.communicate(timeout=_TIMEOUT_S)
      assert proc.returncode == 0, err[-3000:]
      outputs.append(out)
  finally:
    for proc in procs:
      if proc.poll() is None:
        os.killpg(proc.pid, 9)
        proc.wait()
  return outputs


def _metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _checkpoint_leaves(workdir: str, step: int) -> list[np.ndarray]:
  """The arrays of checkpoint `step`, read onto this process's device
  (they were written from 8 devices)."""
  path = os.path.join(workdir, 'checkpoints', str(step), 'default')
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
        checkpointer.metadata(path).item_metadata)
    saved = checkpointer.restore(path, target)
  return [np.asarray(x) for x in jax.tree.leaves(saved)]


@pytest.fixture(scope='module')
def single(tmp_path_factory) -> str:
  """The workdir of the one-process run on 8 devices."""
  workdir = str(tmp_path_factory.mktemp('single'))
  subprocess.run([sys.executable, '-m', 'scripts.train', *_FLAGS,
                  f'--workdir={workdir}', '--cpu_devices=8',
                  '--state_store=host'],
                 cwd=REPO, env=_env(), check=True, capture_output=True,
                 timeout=_TIMEOUT_S)
  return workdir


@pytest.mark.parametrize('state_store', ['host', 'sharded'])
def test_two_processes_equal_one_process(tmp_path, single, state_store):
  """SCAFFOLD for 3 rounds: the two-process run's metrics, evaluations and
  checkpointed server and client state equal the one-process run's; only
  process 0 prints and writes the log; the checkpoints are written once,
  collectively, and (sharded store) a second launch resumes from them."""
  multi = str(tmp_path / 'multi')
  out0, out1 = _two_processes(multi, f'--state_store={state_store}')

  assert 'scaffold' in out0 and f'state store={state_store}' in out0
  assert 'devices=8' in out0
  # Process 1 prints nothing of its own (gloo's C++ prints connections).
  assert 'scaffold' not in out1 and 'Metrics and checkpoints' not in out1
  want, got = _metrics(single), _metrics(multi)
  assert [r['round'] for r in got] == [1, 2, 3]
  for key in ('train_loss', 'test_accuracy', 'test_loss', 'num_examples'):
    np.testing.assert_allclose([r[key] for r in got],
                               [r[key] for r in want], rtol=1e-6,
                               err_msg=key)
  assert sorted(os.listdir(os.path.join(multi, 'checkpoints'))) == ['2', '3']
  got, want = _checkpoint_leaves(multi, 3), _checkpoint_leaves(single, 3)
  # The server's model, c and round count; every client's c_i (kernel and
  # bias).
  assert len(got) == len(want) == 7
  assert sum(x.shape[:1] == (20,) for x in got) == 2
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

  if state_store == 'sharded':
    _two_processes(multi, f'--state_store={state_store}', '--num_rounds=4',
                   '--allow_config_change')
    assert [r['round'] for r in _metrics(multi)] == [1, 2, 3, 4]

