"""Each client's personal model, scored on the client's own held-out split.

A personalized algorithm (`Algorithm.personalization`) keeps personal state
per client in the state store. `PersonalEvaluator` gathers the state of the
clients it scores, builds each one's personal model
(`Personalization.personal_params`, adapting on a few batches of the
client's own training split where the algorithm does) and scores it on the
client's held-out rows, next to the global model on the same rows. The
clients are mapped like a round's cohort (`placement.map_clients`, sharded
over the mesh's 'clients' axis), a fixed number per call, so one program
compiles per run. For a large population it scores a seeded sample of the
clients, the same at every evaluation.

The statistics are those of the personalization literature (e.g. Collins
et al. 2021, Li et al. 2021 "Ditto"): the mean, 10th percentile and
standard deviation over clients of the per-client accuracy.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_core import streams
from fedjax_core.algorithm import Algorithm, Batch, Personalization
from fedjax_core.data.client_indices import ClientIndices
from fedjax_core.data.federated import FederatedDataset, as_float
from fedjax_core.engine import batching
from fedjax_core.engine import placement
from fedjax_core.engine.evaluation import LocalEvaluator
from fedjax_core.errors import SettingError
from fedjax_core.toolkit import losses

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]
# `(ids) -> the algorithm's client state of clients ids, stacked`.
StatesFn = Callable[[np.ndarray], PyTree]


def sample_clients(sizes: np.ndarray, max_clients: int, seed: int
                   ) -> np.ndarray:
  """The clients a personal evaluation scores: those with held-out rows
  (`sizes > 0`), or a seeded sample of `max_clients` of them (0: all)."""
  candidates = np.flatnonzero(sizes > 0)
  if max_clients <= 0 or max_clients >= len(candidates):
    return candidates
  rng = np.random.default_rng((seed, streams.EVAL_CLIENTS))
  return np.sort(rng.choice(candidates, max_clients, replace=False))


def _padded_rows(indices: ClientIndices, ids: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
  """`[len(ids), longest]` rows of each client and their 0/1 mask."""
  sizes = indices.sizes[ids]
  width = max(int(sizes.max(initial=0)), 1)
  rows = np.zeros((len(ids), width), np.int32)
  mask = np.arange(width) < sizes[:, None]
  rows[mask] = np.concatenate([indices[i] for i in ids]) if len(ids) else 0
  return rows, mask.astype(np.float32)


def _statistics(prefix: str, accuracy: np.ndarray) -> dict[str, float]:
  return {f'{prefix}_mean': float(np.mean(accuracy)),
          f'{prefix}_p10': float(np.percentile(accuracy, 10)),
          f'{prefix}_std': float(np.std(accuracy))}


class PersonalEvaluator:
  """The accuracy of clients `ids`' personal models on their held-out rows.

  Examples:
    >>> evaluator = PersonalEvaluator(
    ...     algorithm, model.apply, train_x, train_y,
    ...     train_indices=dataset.client_indices,
    ...     test_indices=dataset.local_test_indices, ids=np.arange(50),
    ...     batch_size=10, seed=0, mesh=mesh)
    >>> evaluator(server_state, store.gather, round_num=5, key=key)
    {'personal_accuracy_mean': ..., 'personal_accuracy_p10': ..., ...}
  """

  def __init__(self, algorithm: Algorithm, apply_fn: ApplyFn,
               train_x: jax.Array, train_y: jax.Array, *,
               train_indices: ClientIndices, test_indices: ClientIndices,
               ids: np.ndarray, batch_size: int, seed: int,
               mesh: jax.sharding.Mesh, clients_per_call: int = 1024):
    """Prepares the held-out rows of clients `ids`.

    Args:
      algorithm: a personalized algorithm.
      apply_fn: `(params, x) -> logits`.
      train_x: the population's training inputs (on the devices).
      train_y: their labels.
      train_indices: each client's training rows.
      test_indices: each client's held-out rows (rows of `train_x`).
      ids: the clients to score; each must have held-out rows.
      batch_size: rows per batch of the training split the algorithm
        adapts on.
      seed: the run's seed.
      mesh: the mesh the clients are sharded over.
      clients_per_call: clients scored by one compiled call (rounded up to
        a multiple of the mesh's 'clients' axis).
    """
    if algorithm.personalization is None:
      raise ValueError('PersonalEvaluator scores personalized algorithms '
                       '(Algorithm.personalization is None).')
    if not len(ids) or np.any(test_indices.sizes[ids] == 0):
      raise ValueError('Every client a personal evaluation scores needs '
                       'held-out rows.')
    self._algorithm = algorithm
    self._apply_fn = apply_fn
    self._train_x, self._train_y = train_x, train_y
    self._train_indices = train_indices
    self._ids = np.asarray(ids, np.int64)
    self._batch_size = batch_size
    self._seed = seed
    self._mesh = mesh
    devices = mesh.shape[placement.CLIENTS_AXIS]
    per_call = min(clients_per_call, len(ids))
    self._per_call = per_call + (-per_call % devices)
    self._test_rows, self._test_mask = _padded_rows(test_indices, self._ids)
    self._sharding = placement.cohort_sharding(mesh)
    self._jitted = jax.jit(self._scores)
    self.num_traces = 0

  @property
  def ids(self) -> np.ndarray:
    """The clients scored."""
    return self._ids

  def __call__(self, server_state: PyTree, states: StatesFn,
               round_num: int, key: jax.Array) -> dict[str, float]:
    """The mean, p10 and std over the clients of their personal models'
    accuracy (`personal_accuracy_*`).

    Args:
      server_state: the run's server state.
      states: the algorithm's client state of given clients, stacked.
      round_num: rounds done (the adaptation batches are drawn from it).
      key: the run's key of round `round_num`.
    """
    return _statistics('personal_accuracy', self.per_client_accuracy(
        server_state, states, round_num, key))

  def per_client_accuracy(self, server_state: PyTree, states: StatesFn,
                          round_num: int, key: jax.Array) -> np.ndarray:
    """`[len(ids)]` accuracies of the clients' personal models (0 for a
    client none of whose held-out targets is scored)."""
    key = jax.random.fold_in(key, streams.PERSONAL_EVAL)
    counts = []
    for start in range(0, len(self._ids), self._per_call):
      ids = self._ids[start:start + self._per_call]
      pad = self._per_call - len(ids)
      padded = np.concatenate([ids, np.repeat(ids[:1], pad)])
      inputs = (self._test_rows[start:start + self._per_call],
                self._test_mask[start:start + self._per_call],
                *self._train_batches(ids, round_num))
      inputs = [np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)])
                for a in inputs]
      counts.append(jax.device_get(self._jitted(
          server_state, states(padded),
          placement.put((padded.astype(np.int32), *inputs), self._sharding),
          self._train_x, self._train_y, key))[:len(ids)])
    hits, scored = np.concatenate(counts).T
    return hits / np.maximum(scored, 1)

  def _train_batches(self, ids: np.ndarray, round_num: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The batches of their training split clients `ids` adapt on."""
    steps = self._algorithm.personalization.train_steps
    if steps == 0:
      shape = (len(ids), 0, self._batch_size)
      return np.zeros(shape, np.int32), np.zeros(shape, np.float32)
    batches = batching.cohort_batches(
        self._train_indices, ids, seed=self._seed, round_num=round_num,
        batch_size=self._batch_size, num_steps=steps, local_steps=steps,
        stream=streams.PERSONAL_BATCHES)
    return batches.indices, batches.mask

  def _scores(self, server_state, client_states, inputs, train_x, train_y,
              key) -> jax.Array:
    """`[clients, 2]` correct and scored held-out targets of the personal
    models."""
    self.num_traces += 1
    return placement.map_clients(
        self._one_client, (client_states, *inputs), mesh=self._mesh,
        shared=(server_state, train_x, train_y, key))

  def _one_client(self, shared, args) -> jax.Array:
    server_state, train_x, train_y, key = shared
    (client_state, client_id, test_rows, test_mask, train_rows,
     train_mask) = args
    train = Batch(as_float(train_x[train_rows]), train_y[train_rows],
                  train_mask)
    params = self._algorithm.personalization.personal_params(
        server_state, client_state, train, jax.random.fold_in(key, client_id))
    logits = self._apply_fn(params, as_float(train_x[test_rows]))
    scores = losses.example_scores(logits, train_y[test_rows])
    return jnp.stack([jnp.sum(scores.correct * test_mask),
                      jnp.sum(scores.scored * test_mask)])


def _scored_as_global(algorithm: Algorithm) -> Algorithm:
  """`algorithm`, whose clients' models are the global model unless it is
  personalized."""
  if algorithm.personalization is not None:
    return algorithm
  return algorithm._replace(personalization=Personalization(
      lambda server_state, client_state, train, rng: (
          algorithm.evaluated_params(server_state))))


class ClientEvaluation:
  """What a run measures on its clients' own held-out rows.

  The global model on every client's held-out rows (`LocalEvaluator`,
  `local_test_accuracy_*`) and, for a personalized algorithm, each client's
  personal model on the same rows (`PersonalEvaluator`,
  `personal_accuracy_*`), both on a seeded sample of the clients if
  asked. With new clients (`FederatedDataset.new_clients`), each is
  personalized the algorithm's way from its initial client state and
  scored (`newclient_accuracy_*`; the global model for an algorithm that is
  not personalized).
  """

  def __init__(self, algorithm: Algorithm, apply_fn: ApplyFn,
               dataset: FederatedDataset, train_x: jax.Array,
               train_y: jax.Array, *, initial_client_state: PyTree,
               batch_size: int, eval_batch_size: int, max_clients: int,
               seed: int, mesh: jax.sharding.Mesh):
    """Raises SettingError if a personalized algorithm's clients hold out no
    rows to score their models on."""
    self._local = self._personal = self._new = None
    local_test = dataset.local_test_indices
    personal = dict(batch_size=batch_size, seed=seed, mesh=mesh)
    if algorithm.personalization is not None:
      if local_test is None:
        raise SettingError(
            'local_test_fraction', 'A personalized algorithm is scored on '
            "each client's own held-out rows; set local_test_fraction "
            '(e.g. 0.2).')
      ids = sample_clients(local_test.sizes, max_clients, seed)
      self._personal = PersonalEvaluator(
          algorithm, apply_fn, train_x, train_y,
          train_indices=dataset.client_indices, test_indices=local_test,
          ids=ids, **personal)
      local_test = local_test.select(ids)
    if local_test is not None:
      self._local = LocalEvaluator(apply_fn, dataset.train_x,
                                   dataset.train_y, local_test,
                                   eval_batch_size)
    new = dataset.new_clients
    if new is not None:
      self._new = PersonalEvaluator(
          _scored_as_global(algorithm), apply_fn, train_x, train_y,
          train_indices=new.client_indices,
          test_indices=new.local_test_indices,
          ids=sample_clients(new.local_test_indices.sizes, max_clients,
                             seed), **personal)
      self._initial = initial_client_state

  def __call__(self, server_state: PyTree, params: PyTree, states: StatesFn,
               round_num: int, key: jax.Array) -> dict[str, float]:
    """The metrics after `round_num` rounds, of the server state (whose
    evaluated model is `params`) and the clients' states (`states`)."""
    metrics = {}
    if self._local is not None:
      metrics.update(self._local(params))
    if self._personal is not None:
      metrics.update(self._personal(server_state, states, round_num, key))
    if self._new is not None:
      personal = self._new.per_client_accuracy(
          server_state, self._initial_states, round_num, key)
      metrics.update(_statistics('newclient_accuracy', personal))
    return metrics

  def _initial_states(self, ids: np.ndarray) -> PyTree:
    return jax.tree.map(
        lambda x: np.repeat(np.asarray(x)[None], len(ids), axis=0),
        self._initial)
