"""Backdoors against each defence: the attack success rate (ASR).

A fixed set of attacker clients of FedAvg's population stamps a trigger on
half of every local batch and relabels it to the target (as
`fedjax_core.channel.backdoor` describes); the ASR is the share of the
triggered test images of other classes that the final model puts in the
target class. The variants:

- `pattern`: a pixel pattern (BadNets), four attackers.
- `blend`: a blended random pattern (Chen et al. 2017), four attackers.
- `dba`: the pattern split into four local triggers, one per attacker
  (DBA, Xie et al. 2020); the test stamps the whole pattern.
- `boosted`: model replacement (Bagdasaryan et al. 2020): two attackers
  scale their updates by `boost`.
- `two_targets`: two independent groups of two attackers, targets 7 and 1,
  each with its own trigger (as in Mirage); the ASR is their mean.
"""

import dataclasses

from fedjax_core.channel.backdoor import Backdoor
from scripts.attack_tables import defences
from scripts.attack_tables import report
from scripts.attack_tables import training

VARIANTS = ('pattern', 'blend', 'dba', 'boosted', 'two_targets')


def backdoor_of(variant: str, boost: float, seed: int) -> Backdoor:
  """The `Backdoor` a table row plants (see the module docstring)."""
  plain = Backdoor(trigger='pattern', targets=(7,), num_attackers=4,
                   seed=seed)
  if variant == 'blend':
    return dataclasses.replace(plain, trigger='blend')
  if variant == 'dba':
    return dataclasses.replace(plain, dba_parts=4)
  if variant == 'boosted':
    return dataclasses.replace(plain, num_attackers=2, boost=boost)
  if variant == 'two_targets':
    return dataclasses.replace(plain, targets=(7, 1))
  return plain


def cells(setup: training.Setup, columns: list[defences.Defence],
          variants: list[str], boost: float):
  """Yields one `report.Cell` per variant and defence: the final model's
  ASR and its accuracy on the clean test set."""
  for variant in variants:
    attack = backdoor_of(variant, boost, setup.seed)
    for defence in columns:
      sim = training.simulation_of(setup, defence, backdoor=attack)
      accuracy = training.final_accuracy(sim)
      last = sim.history[-1] if sim.history else {}
      metrics = {k: float(v) for k, v in last.items()
                 if k.startswith('backdoor_asr')}
      if not metrics:  # Diverged before its evaluation.
        metrics = {'asr': float('nan')}
      metrics['asr'] = metrics.pop('backdoor_asr', metrics.get('asr'))
      yield report.Cell('backdoor', variant, defence.label, accuracy,
                        metrics)
