"""Membership inference against each defence: AUC and TPR at low FPR.

Runs of FedAvg each train on a balanced random half of a pool of digits
training rows (`shadow_runs.inclusion_masks`), all as one vmapped program;
every run is in turn the target and the others its shadows (leave one out),
and the members and non-members of every target are pooled for the ROC.
The clients run many local steps on few examples, so an undefended model
overfits its members (the setting in which the attacks are meaningful).

The `client_update` variant attacks one client's update instead (Nasr et
al. 2019's loss drop, `shadow_runs.client_update_membership`): a client
holding examples the first target never trained on runs one round from the
final global model, and the server scores them against the target's other
non-members through what it observes of the message
(`defences.observed_message`: the cohort's sum under secure aggregation,
the noised message under DP).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_core.adversary import inversion_objectives
from fedjax_core.adversary import membership
from fedjax_core.adversary import shadow_runs
from fedjax_core.data import datasets
from scripts.attack_tables import defences
from scripts.attack_tables import report
from scripts.attack_tables import training


@dataclasses.dataclass(frozen=True)
class MembershipSetup:
  """The runs the attack trains and attacks.

  Attributes:
    num_runs: runs trained together (even: each example is in half).
    pool_size: digits training rows the runs draw their halves from.
    num_clients: clients per run (all take part every round).
    local_steps: local SGD steps per round.
    batch_size: local batch size (at most a client's rows).
  """

  num_runs: int = 16
  pool_size: int = 100
  num_clients: int = 4
  local_steps: int = 50
  batch_size: int = 8


def _scores(variant: str, confidences: membership.Confidences,
            masks: np.ndarray) -> membership.MembershipScores:
  if variant == 'loss':
    return membership.MembershipScores(
        membership.loss_threshold_scores(confidences.loss).reshape(-1),
        masks.reshape(-1))
  attack = (membership.lira_online if variant == 'lira'
            else membership.lira_offline)
  return shadow_runs.leave_one_out(confidences.scaled, masks, attack,
                                   fix_variance=True)


def _client_update_scores(setup: training.Setup, attack: MembershipSetup,
                          defence: defences.Defence, params, pool,
                          run_data, masks) -> membership.MembershipScores:
  """Membership in the update of a client joining the first run: it holds
  as many of the run's non-members as its first client holds rows, and
  trains one round from the final global model; the run's other
  non-members are the non-members. Under secure aggregation its update is
  summed with those of the run's other clients."""
  model = setup.model_fns
  target = jax.tree.map(lambda p: p[0], params)
  clients = run_data[0].client_indices
  outs = np.flatnonzero(~masks[0])
  members, nonmembers = outs[:len(clients[0])], outs[len(clients[0]):]
  deltas = [inversion_objectives.fedavg_delta(
      model.apply, target, pool.train_x[rows], pool.train_y[rows],
      local_steps=attack.local_steps, local_lr=setup.client_lr,
      batch_size=min(attack.batch_size, len(rows)))
            for rows in [members, *list(clients)[1:]]]
  observed = defences.observed_message(
      defence, jax.tree.map(lambda *d: jnp.stack(d), *deltas),
      jax.random.key(setup.seed), dp_clip_norm=setup.dp_clip_norm)
  return shadow_runs.client_update_membership(
      model.apply, target, observed, pool.train_x[members],
      pool.train_y[members], pool.train_x[nonmembers],
      pool.train_y[nonmembers])


def cells(setup: training.Setup, columns: list[defences.Defence],
          variants: list[str], attack: MembershipSetup):
  """Yields one `report.Cell` per defence and variant."""
  runs_setup = dataclasses.replace(
      setup, clients_per_round=attack.num_clients,
      local_steps=attack.local_steps, batch_size=attack.batch_size)
  central = datasets.load_digits(setup.seed)
  rows = np.random.default_rng(setup.seed).choice(
      len(central.train_y), attack.pool_size, replace=False)
  pool = dataclasses.replace(central, train_x=central.train_x[rows],
                             train_y=central.train_y[rows])
  masks = shadow_runs.inclusion_masks(attack.pool_size, attack.num_runs,
                                      setup.seed)
  run_data = shadow_runs.run_datasets(pool, masks, attack.num_clients,
                                      setup.seed)
  model = setup.model_fns
  for defence in columns:
    config = training.simulation_config(runs_setup, defence)
    runs = shadow_runs.train_runs(training.fedavg(setup, run_data[0]), model,
                                  run_data, config)
    accuracy = float(np.mean([s['final_test_accuracy']
                              for s in runs.summaries]))
    confidences = membership.run_confidences(model.apply, runs.params,
                                             pool.train_x, pool.train_y)
    for variant in variants:
      scores = (_client_update_scores(setup, attack, defence, runs.params,
                                      pool, run_data, masks)
                if variant == 'client_update'
                else _scores(variant, confidences, masks))
      metrics = membership.roc_metrics(*scores)
      yield report.Cell('membership', variant, defence.label, accuracy,
                        metrics)
