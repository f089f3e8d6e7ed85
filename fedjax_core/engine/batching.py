"""Static-shape local-training batches for a cohort.

Every client of a round gets a `[num_steps, batch_size]` array of row
indices into the training arrays plus a mask. `num_steps` is one of a few
size buckets (`step_buckets`), so the compiled round sees at most that many
shapes in a run. Local training is either `local_epochs` passes over
the client's data (ceil(n_i / B) * E real steps for client i, the last batch
of each pass partial, the remaining steps masked) or exactly `local_steps`
steps drawn from successive shuffles of the client's data. The shuffles are a
pure function of `(seed, round, client)`, so a resumed run replays them.
"""

from typing import NamedTuple

import numpy as np

from fedjax_core.data.client_indices import ClientIndices
from fedjax_core.errors import SettingError


class CohortBatches(NamedTuple):
  """Row indices and masks of one round's local training.

  Attributes:
    indices: `[cohort, num_steps, batch_size]` int32 rows of the training
      arrays (0 where masked).
    mask: `[cohort, num_steps, batch_size]` float32, 1.0 for real examples.
  """

  indices: np.ndarray
  mask: np.ndarray


def client_num_steps(client_sizes: np.ndarray, batch_size: int,
                     local_epochs: int | None = None,
                     local_steps: int | None = None) -> np.ndarray:
  """The real local steps of every client.

  Args:
    client_sizes: `[num_clients]` training examples per client.
    batch_size: local batch size B.
    local_epochs: E passes over the data; exclusive with `local_steps`.
    local_steps: fixed step count; exclusive with `local_epochs`.

  Returns:
    `[num_clients]` int64: `ceil(n_i / B) * E`, or `local_steps` for all.
  """
  if (local_epochs is None) == (local_steps is None):
    raise ValueError('Set exactly one of local_epochs and local_steps.')
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  client_sizes = np.asarray(client_sizes, np.int64)
  if batch_size > int(np.max(client_sizes)):
    raise SettingError(
        'batch_size',
        f'batch_size {batch_size} is larger than every client (the largest '
        f'has {int(np.max(client_sizes))} examples); use a smaller '
        'batch_size or fewer clients.')
  if local_steps is not None:
    if local_steps < 1:
      raise ValueError(f'local_steps must be positive, got {local_steps}.')
    return np.full(len(client_sizes), local_steps, np.int64)
  if local_epochs < 1:
    raise ValueError(f'local_epochs must be positive, got {local_epochs}.')
  return -(-client_sizes // batch_size) * local_epochs


def step_buckets(steps: np.ndarray, cohort_size: int,
                 num_buckets: int) -> np.ndarray:
  """At most `num_buckets` static step counts that rounds are padded to.

  A round runs as many steps as the smallest bucket that fits its cohort's
  largest client, so a run compiles at most `num_buckets` times. The bucket
  ceilings are quantiles of the population's step counts at levels
  `(k / num_buckets) ** (1 / cohort_size)`, k = 1..num_buckets: for a cohort
  drawn uniformly, its largest client falls below the k-th ceiling with
  probability about k / num_buckets, so rounds spread evenly over buckets.
  The last ceiling is the largest client's, so every cohort fits.

  Args:
    steps: `[num_clients]` real local steps per client.
    cohort_size: (expected) clients per round.
    num_buckets: the most step counts to compile for, >= 1.

  Returns:
    Ascending distinct int64 step counts, the last one `max(steps)`.
  """
  if num_buckets < 1:
    raise SettingError('size_buckets', 'size_buckets must be >= 1, got '
                       f'{num_buckets}.')
  levels = (np.arange(1, num_buckets + 1) / num_buckets)**(1 / cohort_size)
  return np.unique(np.quantile(steps, levels, method='higher')
                   .astype(np.int64))


def bucket_steps(buckets: np.ndarray, cohort_steps: np.ndarray) -> int:
  """The smallest bucket that fits every client of a cohort (the smallest
  bucket for an empty cohort)."""
  return int(buckets[np.searchsorted(buckets, np.max(cohort_steps,
                                                     initial=0))])


def _epoch_batches(rows: np.ndarray, rng: np.random.Generator,
                   batch_size: int, local_epochs: int) -> list[np.ndarray]:
  """E shuffled passes over `rows`, each cut into batches of B.

  The last batch of each pass is partial when B does not divide n.
  """
  batches = []
  for _ in range(local_epochs):
    perm = rng.permutation(rows)
    batches.extend(np.split(perm, range(batch_size, len(perm), batch_size)))
  return batches


def _step_batches(rows: np.ndarray, rng: np.random.Generator,
                  batch_size: int, local_steps: int) -> list[np.ndarray]:
  """`local_steps` batches of min(B, n) distinct rows from successive shuffles.

  Every row is used once per pass. A batch that runs past the end of a pass
  is completed from the next shuffle, whose rows already in the batch are
  moved to its end, so no batch repeats a row.
  """
  # Works on positions into `rows`: `rows[rng.permutation(n)]` draws the
  # same shuffle as `rng.permutation(rows)`, and a position's membership in
  # a batch is one lookup (np.isin dominated the cost of a round's batches).
  n = len(rows)
  width = min(batch_size, n)
  perm, pos, batches = rng.permutation(n), 0, []
  while len(batches) < local_steps:
    # The whole batches left in this pass, cut at once.
    whole = min(local_steps - len(batches), (n - pos) // width)
    batches.extend(perm[pos:pos + whole * width].reshape(whole, width))
    pos += whole * width
    if len(batches) == local_steps:
      break
    batch = perm[pos:]  # Shorter than a batch: completed from a new pass.
    fresh = rng.permutation(n)
    in_batch = np.zeros(n, bool)
    in_batch[batch] = True
    taken = in_batch[fresh]
    perm = np.concatenate([fresh[~taken], fresh[taken]])
    pos = width - len(batch)
    batches.append(np.concatenate([batch, perm[:pos]]))
  return [rows[batch] for batch in batches]


def cohort_batches(client_indices: ClientIndices,
                   client_ids: np.ndarray, *, seed: int, round_num: int,
                   batch_size: int, num_steps: int,
                   local_epochs: int | None = None,
                   local_steps: int | None = None,
                   stream: int | None = None) -> CohortBatches:
  """Builds the padded batches of one round's cohort.

  Args:
    client_indices: client id -> its rows in the training arrays.
    client_ids: `[cohort]` ids of the sampled clients.
    seed: the run seed.
    round_num: the round, counted from 0.
    batch_size: local batch size B.
    num_steps: static step count, at least every client's real steps.
    local_epochs: E passes; exclusive with `local_steps`.
    local_steps: fixed step count; exclusive with `local_epochs`.
    stream: a `fedjax_core.streams` tag for batches drawn for another
      purpose than the round's training (evaluation's fine-tuning); None
      draws the training batches.

  Returns:
    The cohort's `CohortBatches`.
  """
  cohort = len(client_ids)
  indices = np.zeros((cohort, num_steps, batch_size), np.int32)
  mask = np.zeros((cohort, num_steps, batch_size), np.float32)
  for slot, cid in enumerate(client_ids):
    rng = np.random.default_rng(
        (seed, round_num, int(cid)) + (() if stream is None else (stream,)))
    rows = client_indices[cid]
    if local_steps is not None:
      batches = _step_batches(rows, rng, batch_size, local_steps)
    else:
      batches = _epoch_batches(rows, rng, batch_size, local_epochs)
    lengths = np.array([len(batch) for batch in batches])
    real = np.arange(batch_size) < lengths[:, None]  # [steps, batch_size]
    indices[slot, :len(batches)][real] = np.concatenate(batches)
    mask[slot, :len(batches)] = real
  return CohortBatches(indices=indices, mask=mask)


class LocalWork:
  """A run's local training: every client's real step count, the step
  buckets its rounds are padded to, and each round's batches of a cohort.

  Neither `local_epochs` nor `local_steps` set means one local epoch.

  Examples:
    >>> work = LocalWork(dataset.client_indices, seed=0, batch_size=10,
    ...                  local_epochs=1, local_steps=None, cohort_size=5,
    ...                  size_buckets=4)
    >>> batches = work.batches(np.array([3, 7]), round_num=0)
  """

  def __init__(self, client_indices: ClientIndices, *, seed: int,
               batch_size: int, local_epochs: int | None,
               local_steps: int | None, cohort_size: int,
               size_buckets: int):
    if local_epochs is None and local_steps is None:
      local_epochs = 1
    self._client_indices = client_indices
    self._seed = seed
    self._batch_size = batch_size
    self._local_epochs = local_epochs
    self._local_steps = local_steps
    self.steps = client_num_steps(client_indices.sizes, batch_size,
                                  local_epochs, local_steps)
    self.buckets = step_buckets(self.steps, cohort_size, size_buckets)

  def batches(self, client_ids: np.ndarray, round_num: int) -> CohortBatches:
    """The padded batches of cohort `client_ids` in round `round_num`, at
    the smallest bucket that fits its largest client."""
    return cohort_batches(
        self._client_indices, client_ids, seed=self._seed,
        round_num=round_num, batch_size=self._batch_size,
        num_steps=bucket_steps(self.buckets, self.steps[client_ids]),
        local_epochs=self._local_epochs, local_steps=self._local_steps)
