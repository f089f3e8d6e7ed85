"""Workload `fedspeed`: FedSpeed's round time relative to FedAvg's.

The `mlp` workload trained by FedAvg and by FedSpeed (both forms), rounds
interleaved; it reports FedSpeed's round time as a ratio to FedAvg's
(ratio_fedspeed_vs_fedavg).
"""

from scripts.benchmarks import harness
from scripts.benchmarks import setups


def run() -> dict:
  """Workload `fedspeed`: FedSpeed's round time relative to FedAvg's.

  The `mlp` workload run by FedAvg (optax SGD), by local-SGD FedAvg (FedProx
  with mu = 0: the same client loop FedSpeed uses, minus its extra
  gradient) and by FedSpeed in both forms. Rounds are interleaved, one of
  each in turn, so machine noise falls on all alike; medians are reported.
  FedSpeed evaluates two gradients per local step (at y and at the ascent
  point), so about 2x FedAvg's arithmetic; FL-Simulator's PyTorch FedSpeed
  pays 1.9x.
  """
  x, y = setups.mlp_data()
  runs = {'fedavg': setups.mlp_simulation(x, y, 'fedavg'),
          'fedprox_mu0': setups.mlp_simulation(x, y, 'fedprox', mu=0.0),
          'fedspeed': setups.mlp_simulation(x, y, 'fedspeed'),
          'fedspeed_reference': setups.mlp_simulation(x, y, 'fedspeed',
                                                      form='reference')}
  result = harness.interleaved_comparison('fedspeed', runs, 'fedavg')
  result['peak_mem_mb'] = harness.peak_host_mb()
  return result
