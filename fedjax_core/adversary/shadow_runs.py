"""Shadow models for membership inference, trained as the runs of one
compiled program.

LiRA (Carlini, Chien, Nasr, Song, Terzis and Tramer, IEEE S&P 2022,
"Membership Inference Attacks From First Principles") trains many models,
each on a random half of a pool of examples, and reads off each example's
confidence when it was in and when it was out of training. Here every such
model is a federated run: the runs share the pool's `train_x` (so
`fedjax_core.engine.vmapped_runs.VmappedRuns` holds it once) and differ in
which rows their clients own, their seed (model init, sampling, batches)
and nothing else, so all of them train in one compiled round. Any run can
play the target and the others its shadows (`leave_one_out` lets each do
so in turn and pools their scores).

Membership in one client's update (`client_update_membership`): Nasr,
Shokri and Houmansadr, IEEE S&P 2019, "Comprehensive Privacy Analysis of
Deep Learning", show that a federated server learns membership from a
participant's update. Here the server scores each example by how much the
client's FedAvg delta lowered its loss, `loss(params) - loss(params +
delta)`: Yeom et al.'s loss threshold made relative to the model the
client started from, which removes the example's own difficulty.
"""

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_core.adversary import membership
from fedjax_core.algorithm import Algorithm
from fedjax_core.data.client_indices import ClientIndices
from fedjax_core.data.federated import CentralDataset, FederatedDataset
from fedjax_core.data.partition import make_partition
from fedjax_core.engine.config import SimulationConfig
from fedjax_core.engine.simulation import Simulation
from fedjax_core.engine.vmapped_runs import Run, VmappedRuns
from fedjax_core.errors import SettingError

PyTree = Any
ApplyFn = membership.ApplyFn


class TrainedRuns(NamedTuple):
  """What `train_runs` returns.

  Attributes:
    params: the runs' final evaluated params, stacked on a leading
      `[num_runs]` axis.
    summaries: each run's summary (final test accuracy, privacy spent).
  """

  params: PyTree
  summaries: list[dict[str, Any]]


def inclusion_masks(num_examples: int, num_runs: int, seed: int
                    ) -> np.ndarray:
  """Which pool examples each run trains on: Carlini et al.'s balanced
  sampling, in which every example is in exactly half of the runs (per
  example, a seeded random permutation of the runs, the first half in), so
  every example has as many in as out shadow models.

  Args:
    num_examples: the pool's size n.
    num_runs: how many runs; even.
    seed: seed of the permutations.

  Returns:
    `[num_runs, num_examples]` bool.

  Examples:
    >>> inclusion_masks(3, 4, seed=0).sum(0)  # [2, 2, 2]
  """
  if num_runs < 2 or num_runs % 2:
    raise SettingError('num_runs', 'Balanced inclusion puts every example '
                       'in exactly half of the runs, so num_runs must be '
                       f'even and at least 2; got {num_runs}.')
  ranks = np.broadcast_to(np.arange(num_runs)[:, None],
                          (num_runs, num_examples))
  return np.random.default_rng(seed).permuted(ranks, axis=0) < num_runs // 2


def run_datasets(pool: CentralDataset | FederatedDataset, masks: np.ndarray,
                 num_clients: int, seed: int, partition: str = 'iid'
                 ) -> list[FederatedDataset]:
  """One federated dataset per run, holding that run's included pool rows
  split over `num_clients` clients.

  Every run's dataset shares the pool's `train_x` and `train_y` arrays
  (the same objects, which `VmappedRuns` then keeps once for all runs) and
  the pool's own test split (so the runs' test accuracies compare); only
  the client indices differ.

  Args:
    pool: the examples the runs draw from: all training rows of a
      `CentralDataset` or `FederatedDataset`.
    masks: `[num_runs, num_train]` bool, e.g. `inclusion_masks`.
    num_clients: clients per run.
    seed: seeds run k's partition (with k).
    partition: a partition of `fedjax_core.data.partition.PARTITION_NAMES`
      other than 'natural'.

  Returns:
    The runs' datasets, in order.

  Examples:
    >>> masks = inclusion_masks(len(pool.train_y), 16, seed=0)
    >>> datasets = run_datasets(pool, masks, num_clients=4, seed=0)
  """
  masks = np.asarray(masks, bool)
  if masks.ndim != 2 or masks.shape[1] != len(pool.train_y):
    raise ValueError(f'masks must be [num_runs, {len(pool.train_y)}] (one '
                     f'column per pool example); got {masks.shape}.')
  datasets = []
  for k, mask in enumerate(masks):
    rows = np.flatnonzero(mask)
    local = make_partition(partition, labels=pool.train_y[rows],
                           num_clients=num_clients,
                           seed=int(np.random.default_rng((seed, k))
                                    .integers(2**31)))
    datasets.append(FederatedDataset(
        name=pool.name, train_x=pool.train_x, train_y=pool.train_y,
        client_indices=ClientIndices(rows[local.rows], local.offsets),
        test_x=pool.test_x, test_y=pool.test_y,
        num_classes=pool.num_classes,
        partition_info={'partition': partition, 'run': k,
                        'num_included': len(rows)}))
  return datasets


def train_runs(algorithm: Algorithm, model, datasets: Sequence[
    FederatedDataset], config: SimulationConfig) -> TrainedRuns:
  """Trains one run per dataset as one compiled program (a vmapped run
  axis); run k's seed is `config.seed + k`.

  Args:
    algorithm: the algorithm (the caller builds it; all runs share it).
    model: has `init(rng)` and `apply(params, x)`.
    datasets: the runs' datasets (`run_datasets`), sharing `train_x`.
    config: the runs' settings, with `workdir=None`.

  Returns:
    The runs' final params, stacked, and their summaries.

  Examples:
    >>> runs = train_runs(algorithm, model, datasets, config)
    >>> conf = run_confidences(model.apply, runs.params, pool.train_x,
    ...                        pool.train_y)
  """
  group = VmappedRuns(
      [Run(Simulation(algorithm, model, dataset,
                      dataclasses.replace(config, seed=config.seed + k)))
       for k, dataset in enumerate(datasets)], progress=False)
  summaries = group.run()
  if group.diverged:
    raise ValueError(f'Runs {sorted(group.diverged)} diverged; lower the '
                     'learning rate or the local steps.')
  params = jax.vmap(algorithm.evaluated_params)(group.server_state)
  return TrainedRuns(jax.device_get(params), summaries)


def leave_one_out(scaled: np.ndarray, in_masks: np.ndarray,
                  attack: Callable[..., np.ndarray] = membership.lira_online,
                  **kwargs) -> membership.MembershipScores:
  """Every run in turn as the target, the others as its shadows; the
  targets' scores pooled into one set (more scores than one target
  gives, at no extra training).

  Args:
    scaled: `[runs, n]` logit-scaled confidences of every run.
    in_masks: `[runs, n]` bool inclusion masks.
    attack: `membership.lira_online` or `lira_offline`.
    **kwargs: passed to `attack` (e.g. `fix_variance=True`).

  Returns:
    `[runs * n]` scores and membership truth.

  Examples:
    >>> membership.roc_metrics(*leave_one_out(conf.scaled, masks,
    ...                                       fix_variance=True))
  """
  runs = np.arange(len(scaled))
  scores = [attack(scaled[k], scaled[runs != k], in_masks[runs != k],
                   **kwargs) for k in runs]
  return membership.MembershipScores(np.concatenate(scores),
                                     np.asarray(in_masks, bool).reshape(-1))


def client_update_membership(apply_fn: ApplyFn, params: PyTree,
                             delta: PyTree, member_x: np.ndarray,
                             member_y: np.ndarray, nonmember_x: np.ndarray,
                             nonmember_y: np.ndarray, batch_size: int = 512
                             ) -> membership.MembershipScores:
  """Membership in one client's update, as the server sees it: the global
  `params` it broadcast and the client's FedAvg `delta` (params after
  local training minus `params`). Each example's score is the drop of its
  loss, `loss(params) - loss(params + delta)`.

  Args:
    apply_fn: `(params, x) -> logits`.
    params: the global model the client started from.
    delta: the client's message, a tree like `params`.
    member_x, member_y: the client's training examples.
    nonmember_x, nonmember_y: held-out examples it never saw.
    batch_size: examples per compiled call.

  Returns:
    The scores of the members followed by the non-members, and the truth.

  Examples:
    >>> scores, is_member = client_update_membership(
    ...     model.apply, params, delta, client_x, client_y, test_x, test_y)
    >>> roc_metrics(scores, is_member)['auc']
  """
  updated = jax.tree.map(jnp.add, params, delta)
  x = np.concatenate([member_x, nonmember_x])
  y = np.concatenate([member_y, nonmember_y])
  before, after = (membership.example_confidences(apply_fn, p, x, y,
                                                  batch_size).loss
                   for p in (params, updated))
  is_member = np.arange(len(y)) < len(member_y)
  return membership.MembershipScores(before - after, is_member)
