"""Runs scripts/train.py's main in the test's own process (no subprocess,
one JAX import for the whole test file)."""

import json

from absl import flags
from absl.testing import flagsaver

from fedjax_core.engine import placement
from scripts import train

# Two rounds of FedAvg, evaluated after each, cohorts of 2, batches of 2.
SMALL_RUN = ('--algorithm=fedavg', '--num_rounds=2', '--eval_every=1',
             '--clients_per_round=2', '--batch_size=2', '--progress=false')


def run_train(workdir, monkeypatch, *args) -> tuple[list[dict], dict, dict]:
  """train's main on `SMALL_RUN` plus `args`, writing into `workdir`.

  Returns:
    The metrics records, the summary and the partition record it wrote.
  """
  monkeypatch.setattr(placement, 'use_cpu_device_per_core', lambda n: None)
  with flagsaver.flagsaver():
    flags.FLAGS.unparse_flags()
    flags.FLAGS(['train', *SMALL_RUN, *args, f'--workdir={workdir}'])
    train.main(['train'])
  with open(workdir / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  with open(workdir / 'summary.json') as f:
    summary = json.load(f)
  with open(workdir / 'partition.json') as f:
    return records, summary, json.load(f)
