"""Per-round metrics as JSON lines, one object per round."""

import json
import math
import os
from typing import Any

import numpy as np


def _jsonable(value: Any) -> Any:
  if isinstance(value, (np.generic, np.ndarray)):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN or inf.
  return value


class MetricsWriter:
  """Appends `{'round': k, ...}` lines to a JSONL file.

  Opened for a run resumed after `completed_rounds`, it first drops lines of
  later rounds (written after the checkpoint it resumes from), so the file
  holds each round once.
  """

  def __init__(self, path: str, completed_rounds: int = 0):
    kept = []
    if os.path.exists(path):
      with open(path) as f:
        kept = [line for line in f if line.strip()
                and json.loads(line)['round'] <= completed_rounds]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
      f.writelines(kept)
    self._file = open(path, 'a')

  def write(self, record: dict[str, Any]) -> None:
    self._file.write(json.dumps({k: _jsonable(v) for k, v in record.items()})
                     + '\n')
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def read_metrics(path: str) -> list[dict[str, Any]]:
  """All records of a metrics file, in order."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
