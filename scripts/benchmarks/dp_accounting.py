"""Workload `dp_accounting`: the share of a DP-FedAvg run that privacy
accounting takes, under RDP and PLD.

The quickstart's FedAvg on digits (20 clients, Poisson sampling of 5 a
round, 100 rounds) under client-level DP (clip 1, noise 1), with the RDP
and the PLD accountant. It reports the seconds the accounting takes (built
once, epsilon asked after every round, as a run does), the whole run's
seconds, their ratio (accounting_share_pld, ...) and the final epsilon.
"""

import time

import algorithms
from fedjax_core import Simulation, SimulationConfig
from fedjax_core.channel import privacy
from fedjax_core.channel import privacy_accounting
from fedjax_core.data import datasets
import models
from scripts import config_from_flags

_ROUNDS, _CLIENTS, _COHORT = 100, 20, 5


def run() -> dict:
  """Workload `dp_accounting`: the share of a DP-FedAvg run that privacy
  accounting takes, under RDP and PLD."""
  dataset = datasets.load_dataset('digits', num_clients=_CLIENTS)
  model = models.get_model('mlp', dataset.example_shape, dataset.num_classes)
  algorithm = algorithms.build_algorithm('fedavg', model.apply,
                                         num_clients=_CLIENTS)
  result = {'workload': 'dp_accounting', 'rounds': _ROUNDS}
  for accountant in privacy_accounting.ACCOUNTANTS:
    settings = privacy.ClientDPSettings(clip_norm=1.0, noise_multiplier=1.0,
                                        accountant=accountant)
    # What a run asks of its accounting: built once, epsilon every round.
    start = time.perf_counter()
    accounting = privacy.ClientLevelPrivacy(
        settings, num_clients=_CLIENTS, clients_per_round=_COHORT,
        participation='bernoulli', num_rounds=_ROUNDS)
    epsilon = [accounting.epsilon(k) for k in range(1, _ROUNDS + 1)][-1]
    accounting_s = time.perf_counter() - start
    sim = Simulation(algorithm, model, dataset, SimulationConfig(
        num_rounds=_ROUNDS, clients_per_round=_COHORT, batch_size=10,
        participation='bernoulli', client_dp=settings, eval_every=10,
        progress=False, **config_from_flags.placement_settings()),
                     mesh=config_from_flags.mesh())
    start = time.perf_counter()
    sim.run()  # Its own accounting included.
    run_s = time.perf_counter() - start
    result.update({f'accounting_s_{accountant}': accounting_s,
                   f'run_s_{accountant}': run_s,
                   f'accounting_share_{accountant}': accounting_s / run_s,
                   f'epsilon_{accountant}': epsilon})
  return result
