"""Workload `privacy`: the cost of secure aggregation and of DP.

The `mlp` workload's FedAvg aggregated in the clear, by secure aggregation
(32-bit words, no dropouts, and with 30% of each cohort dropping after
masking), and with client-level DP (clip 1, noise 1, RDP accounting every
round), rounds interleaved; it reports each round time as a ratio to the
plain one (ratio_secure_vs_plain, ...) and the host time of the protocol's
key agreement and Shamir recovery (secagg_setup_s).
"""

from fedjax_core.channel import aggregation
from fedjax_core.channel import privacy
from scripts.benchmarks import harness
from scripts.benchmarks import setups


def run() -> dict:
  """Workload `privacy`: the cost of secure aggregation and of DP."""
  x, y = setups.mlp_data()
  overrides = {
      'plain': {},
      'secure': {'secure_aggregation': aggregation.SecureAggregation()},
      'secure_dropout': {'secure_aggregation': aggregation.SecureAggregation(
          dropout_fraction=0.3)},
      'dp': {'client_dp': privacy.ClientDPSettings(
          clip_norm=1.0, noise_multiplier=1.0)},
  }
  runs = {name: setups.mlp_simulation(x, y, 'fedavg', config_overrides=o)
          for name, o in overrides.items()}
  result = harness.interleaved_comparison('privacy', runs, 'plain')
  result['secagg_setup_s'] = runs['secure_dropout'].run_round()[
      'secagg_setup_s']
  result['peak_mem_mb'] = harness.peak_host_mb()
  return result
