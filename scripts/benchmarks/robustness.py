"""Workload `robustness`: the cost of robust rules and of compression.

The `mlp` workload's FedAvg aggregated by the plain mean, by every robust
rule (f = 2 of the 10 clients) and by the mean after nearest-neighbour
mixing, and with each compressor, rounds interleaved; it reports each round
time as a ratio to the plain one (ratio_median_vs_plain,
ratio_topk_vs_plain, ...).
"""

from fedjax_core.channel import aggregation
from fedjax_core.channel import uplink
from scripts.benchmarks import harness
from scripts.benchmarks import setups


def run() -> dict:
  """Workload `robustness`: the cost of robust rules and of compression."""
  x, y = setups.mlp_data()
  overrides = {'plain': {}}
  for rule in aggregation.ROBUST_RULES:
    overrides[rule] = {'robust': aggregation.RobustAggregation(
        rule, num_byzantine=2)}
  overrides['nnm'] = {'robust': aggregation.RobustAggregation(
      'mean', num_byzantine=2, nnm=True)}
  for name in ('topk', 'qsgd', 'sign', 'fedzip'):
    overrides[name] = {'uplink': uplink.Uplink(name)}
  runs = {name: setups.mlp_simulation(x, y, 'fedavg', config_overrides=o)
          for name, o in overrides.items()}
  result = harness.interleaved_comparison('robustness', runs, 'plain')
  result['peak_mem_mb'] = harness.peak_host_mb()
  return result
