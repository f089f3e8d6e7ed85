"""A backdoor's attack success rate on the triggered test set.

The attack success rate (ASR) of a target is the share of the test
examples whose label is not the target that the model classifies as the
target once they carry the target's whole trigger
(`fedjax_core.channel.backdoor.triggered_test_set`); with several targets
(independent attackers, as in Mirage) `backdoor_asr` is their mean and
`backdoor_asr_<target>` each. It is the accuracy against the target label,
scored in `evaluation.Evaluator`'s padded batches.
"""

from typing import Any

import numpy as np

from fedjax_core.channel import backdoor as backdoor_lib
from fedjax_core.engine.evaluation import ApplyFn, Evaluator

PyTree = Any


class BackdoorEvaluator:
  """`backdoor_asr` (and `backdoor_asr_<target>` per target) of a model;
  without a backdoor (`backdoor` None) an empty dict.

  Examples:
    >>> asr = BackdoorEvaluator(model.apply, Backdoor(targets=(7,)),
    ...                         test_x, test_y)
    >>> asr(params)  # {'backdoor_asr': ..., 'backdoor_asr_7': ...}
  """

  def __init__(self, apply_fn: ApplyFn,
               backdoor: backdoor_lib.Backdoor | None, x: np.ndarray,
               y: np.ndarray, batch_size: int = 1024):
    self._evaluators = {}
    if backdoor is None:
      return
    for target, triggered in backdoor_lib.triggered_test_set(
        backdoor, x, y).items():
      self._evaluators[target] = Evaluator(
          apply_fn, triggered, np.full(len(triggered), target, y.dtype),
          batch_size)

  def __call__(self, params: PyTree) -> dict[str, float]:
    if not self._evaluators:
      return {}
    rates = {f'backdoor_asr_{target}': evaluator(params)['accuracy']
             for target, evaluator in self._evaluators.items()}
    return {'backdoor_asr': float(np.mean(list(rates.values()))), **rates}
