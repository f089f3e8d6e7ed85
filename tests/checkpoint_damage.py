"""Test helper: damaging a saved checkpoint step the ways a crash, a full
disk or a careless hand does, and reading what the checkpointer printed."""

import glob
import os
import shutil


def _data_files(step_dir):
  """The array-data files of a saved step (in its OCDBT databases)."""
  files = glob.glob(os.path.join(step_dir, '**', 'd', '*'), recursive=True)
  assert files, f'no data files under {step_dir}'
  return files


def truncate(step_dir):
  """Cuts each data file of the step to half its length."""
  for path in _data_files(step_dir):
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)


def delete_data_files(step_dir):
  for path in _data_files(step_dir):
    os.remove(path)


def empty(step_dir):
  """Leaves the step's directory, empty."""
  shutil.rmtree(step_dir)
  os.mkdir(step_dir)


DAMAGES = [truncate, delete_data_files, empty]


def printed_notes(capsys):
  """The lines printed on stderr since the last read, absl's log lines left
  out."""
  return [line for line in capsys.readouterr().err.splitlines()
          if not line.startswith(('WARNING:', 'INFO:'))]
