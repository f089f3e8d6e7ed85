"""Gossip averaging of node models stacked on a leading node axis.

In decentralized learning every node i holds its own model x_i; one gossip
round replaces each by a weighted average of itself and its neighbours,
`x_i <- self_weight[i] x_i + sum_k weights[i, k] x_{neighbours[i, k]}`,
i.e. `x <- W x` for the mixing matrix W a `mixing_weights.Mixing` describes.
Every leaf of the pytrees here is `[N, ...]`, the N nodes stacked on the
leading axis. Four kernels compute the same `W x`:

- `mix_dense`: builds the dense `[N, N]` W and applies one matmul per leaf,
  O(N^2 d); the fastest for small N (one well-shaped matmul).
- `mix_gather`: per neighbour slot, a row gather and a weighted add,
  O(N K d); for large sparse graphs.
- `gossip_shifts.mix_ring` and `gossip_shifts.mix_torus`: for those two
  topologies the neighbours are shifts of the node axis, so the exchange is
  `jnp.roll` on one device and `jax.lax.ppermute` of the boundary rows
  between neighbouring shards of a device mesh: no device ever holds the
  whole population.

`mix` dispatches on a method name and repeats the mixing `steps` times;
`choose_method` is the rule behind the method 'auto'. `consensus_distance`
and `average` measure how far the nodes are from agreement.

References:
- Boyd, Ghosh, Prabhakar and Shah, IEEE Trans. Inf. Theory 2006,
  "Randomized Gossip Algorithms" (gossip averaging, `x <- W x`).
- Lian, Zhang, Zhang, Hsieh, Zhang and Liu, NeurIPS 2017, "Can
  Decentralized Algorithms Outperform Centralized Algorithms? A Case Study
  for Decentralized Parallel Stochastic Gradient Descent" (D-PSGD; the
  consensus distance (1/N) sum_i ||x_i - x_bar||^2).
- Koloskova, Loizou, Boreiri, Jaggi and Stich, ICML 2020, "A Unified
  Theory of Decentralized SGD with Changing Topology and Local Updates"
  (time-varying W: per-round weights, failed links).
- Shi, Li, Shen, Tian, Tao et al., ICML 2023, "Improving the Model
  Consistency of Decentralized Federated Learning" (DFedSAM-MGS: several
  gossip steps a round, `steps`).

Leaves must be floating point; each is mixed in at least float32 (bfloat16
leaves are promoted, then cast back) and keeps its dtype. The dense matmuls
run at `Precision.HIGHEST`, so accelerators do not round float32 models to
TF32 in every round. All functions are pure and jittable with `method`,
`steps`, `grid`, `mesh` and `axis` static.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from fedjax_core.channel import gossip_shifts
from fedjax_core.channel import mixing_weights
from fedjax_core.channel import node_axis
from fedjax_core.channel.node_axis import CLIENTS_AXIS
from fedjax_core.channel.mixing_weights import Mixing
from fedjax_core.errors import SettingError

PyTree = Any
Grid = tuple[int, int]
METHODS = ('dense', 'gather', 'ring', 'torus')
# `choose_method`: N up to this uses the dense matmul.
DENSE_MAX_NODES = 64


def _apply_matrix(w: jax.Array, tree: PyTree) -> PyTree:
  def one(x):
    dtype = node_axis.compute_dtype(x.dtype)
    y = jnp.tensordot(w.astype(dtype), x.astype(dtype), axes=1,
                      precision=jax.lax.Precision.HIGHEST)
    return y.astype(x.dtype)

  return jax.tree.map(one, tree)


def _matrix_power(w: jax.Array, steps: int) -> jax.Array:
  """`w ** steps` by repeated squaring at full matmul precision."""
  matmul = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)
  result, square = None, w
  while steps:
    if steps & 1:
      result = square if result is None else matmul(square, result)
    steps >>= 1
    if steps:
      square = matmul(square, square)
  return result


def mix_dense(tree: PyTree, mixing: Mixing) -> PyTree:
  """`W x` for every leaf through the dense `[N, N]` mixing matrix.

  O(N^2 d) work in one matmul per leaf: the fastest kernel for small N, and
  the reference the other kernels are tested against.

  Args:
    tree: node states, every leaf `[N, ...]` floating point.
    mixing: the round's gossip weights over the N nodes.

  Returns:
    The mixed node states, same structure, shapes and dtypes.

  Examples:
    >>> m = Mixing(jnp.array([[1], [0]]), jnp.array([[0.5], [0.5]]),
    ...            jnp.array([0.5, 0.5]))
    >>> mix_dense(jnp.array([0.0, 2.0]), m).tolist()
    [1.0, 1.0]
  """
  node_axis.check_floating(tree)
  return _apply_matrix(mixing_weights.mixing_matrix(mixing), tree)


def mix_gather(tree: PyTree, mixing: Mixing) -> PyTree:
  """`W x` for every leaf by gathering each neighbour slot's rows.

  `self_weight[i] x_i + sum_k weights[i, k] x[neighbours[i, k]]`, one
  `[N, ...]` gather and weighted add per slot: O(N K d) work and O(N d)
  extra memory, for large sparse graphs.

  Args:
    tree: node states, every leaf `[N, ...]` floating point.
    mixing: the round's gossip weights over the N nodes.

  Returns:
    The mixed node states, same structure, shapes and dtypes.

  Examples:
    >>> m = Mixing(jnp.array([[1], [0]]), jnp.array([[0.5], [0.5]]),
    ...            jnp.array([0.5, 0.5]))
    >>> mix_gather(jnp.array([0.0, 2.0]), m).tolist()
    [1.0, 1.0]
  """
  node_axis.check_floating(tree)

  def one(x):
    z = x.astype(node_axis.compute_dtype(x.dtype))
    y = node_axis.per_node(mixing.self_weight, z) * z
    for k in range(mixing.neighbours.shape[1]):
      y = y + node_axis.per_node(mixing.weights[:, k], z) * jnp.take(
          z, mixing.neighbours[:, k], axis=0)
    return y.astype(x.dtype)

  return jax.tree.map(one, tree)


# ----------------------------------------------------------------- dispatch


def mix(tree: PyTree, mixing: Mixing, method: str, *, steps: int = 1,
        grid: Grid | None = None, mesh: Mesh | None = None,
        axis: str = CLIENTS_AXIS) -> PyTree:
  """`W^steps x`: `steps` gossip rounds with the kernel `method`.

  Several gossip steps per round with the same weights are the multi-gossip
  steps of DFedSAM-MGS (Shi et al. 2023). The dense kernel raises W to the
  power once (repeated squaring) and applies it in one matmul per leaf;
  the others apply their kernel `steps` times (a `lax.fori_loop` beyond
  one step).

  Args:
    tree: node states, every leaf `[N, ...]` floating point.
    mixing: the gossip weights over the N nodes.
    method: 'dense', 'gather', 'ring' or 'torus' (see `choose_method`).
    steps: gossip steps, a static int >= 1.
    grid: `(rows, cols)`, for 'torus'.
    mesh: the mesh the nodes are sharded over, for 'ring' and 'torus'.
    axis: the mesh axis of the nodes.

  Returns:
    The mixed node states, same structure, shapes and dtypes.

  Raises:
    SettingError: an unknown method, steps < 1, or 'ring' / 'torus' on a
      mixing without 2 / 4 slots a node (or a torus without its grid).

  Examples:
    >>> m = Mixing(jnp.array([[1], [0]]), jnp.array([[0.25], [0.25]]),
    ...            jnp.array([0.75, 0.75]))
    >>> mix(jnp.array([0.0, 4.0]), m, 'gather', steps=2).tolist()
    [1.5, 2.5]
  """
  if method not in METHODS:
    raise SettingError('gossip.method', f'Unknown gossip method {method!r}; '
                       f'valid: {", ".join(METHODS)} (or choose one with '
                       'choose_method).')
  if not isinstance(steps, (int, np.integer)) or steps < 1:
    raise SettingError('gossip.steps', f'Gossip steps must be an int >= 1, '
                       f'got {steps!r}.')
  if method in gossip_shifts.SLOTS:
    gossip_shifts.check_slots(method, mixing)
  if method == 'dense':
    node_axis.check_floating(tree)
    return _apply_matrix(_matrix_power(mixing_weights.mixing_matrix(mixing), int(steps)),
                         tree)
  if method == 'gather':
    one = functools.partial(mix_gather, mixing=mixing)
  elif method == 'ring':
    one = functools.partial(gossip_shifts.mix_ring, mixing=mixing, mesh=mesh, axis=axis)
  else:
    one = functools.partial(gossip_shifts.mix_torus, mixing=mixing, grid=grid, mesh=mesh,
                            axis=axis)
  if steps == 1:
    return one(tree)
  tree = one(tree)  # Checks the settings once, outside the loop.
  return jax.lax.fori_loop(1, steps, lambda _, t: one(t), tree)


def mix_preserving_variance(tree: PyTree, mixing: Mixing, method: str, *,
                            steps: int = 1, grid: Grid | None = None,
                            mesh: Mesh | None = None,
                            axis: str = CLIENTS_AXIS) -> PyTree:
  """`steps` gossip rounds that keep the weight variance of the kernels.

  Tian, Al-Ars, Kitsak and Hofstee, 2024, "Vanishing Variance Problem in
  Fully Decentralized Neural-Network Systems": averaging models that are not
  yet correlated shrinks the variance of their weights below what Xavier
  initialization set, and delays training. Here, in each round, node i's
  kernels (leaves of two or more dimensions per node; biases and scales are
  mixed plainly) are first mixed, `m_i = sum_j W_ij x_j`, then rescaled
  about their mean so that their variance is the W-weighted mean of the
  variances of the kernels mixed in:
  `m_i <- mean(m_i) + (m_i - mean(m_i)) sqrt(sum_j W_ij var(x_j) /
  var(m_i))`. (This is our statement of the paper's variance-corrected
  average: per layer, the averaged weights are given the mean variance of
  the models averaged.)

  Args:
    tree: node states, every leaf `[N, ...]` floating point.
    mixing: the gossip weights over the N nodes.
    method: the kernel, as in `mix`.
    steps: gossip steps, each corrected.
    grid: `(rows, cols)`, for 'torus'.
    mesh: the mesh the nodes are sharded over, for 'ring' and 'torus'.
    axis: the mesh axis of the nodes.

  Returns:
    The mixed node states, same structure, shapes and dtypes.

  Examples:
    >>> m = Mixing(jnp.array([[1], [0]]), jnp.array([[0.5], [0.5]]),
    ...            jnp.array([0.5, 0.5]))
    >>> x = jnp.array([[[2.0, 0.0]], [[0.0, 0.0]]])  # Two 1x2 kernels.
    >>> y = mix_preserving_variance(x, m, 'dense')  # Plain: [1, 0] twice.
    >>> [round(v, 4) for v in y[0, 0].tolist()]  # Variance 0.5, not 0.25.
    [1.2071, -0.2071]
  """
  def variance(x):
    if x.ndim < 3:  # Not a kernel: its variance is not corrected.
      return jnp.zeros(x.shape[:1], node_axis.compute_dtype(x.dtype))
    z = x.astype(node_axis.compute_dtype(x.dtype)).reshape(x.shape[0], -1)
    return jnp.var(z, axis=1)

  def corrected(mixed, target):
    if mixed.ndim < 3:
      return mixed
    z = mixed.astype(node_axis.compute_dtype(mixed.dtype))
    flat = z.reshape(z.shape[0], -1)
    mean = jnp.mean(flat, axis=1, keepdims=True)
    now = jnp.var(flat, axis=1, keepdims=True)
    scale = jnp.where(now > 0, jnp.sqrt(target[:, None] / jnp.where(
        now > 0, now, 1.0)), 1.0)
    return (mean + (flat - mean) * scale).reshape(mixed.shape).astype(
        mixed.dtype)

  for _ in range(steps):
    kwargs = dict(grid=grid, mesh=mesh, axis=axis)
    target = mix(jax.tree.map(variance, tree), mixing, method, **kwargs)
    tree = jax.tree.map(corrected, mix(tree, mixing, method, **kwargs),
                        target)
  return tree


def choose_method(topology_name: str, num_nodes: int, max_degree: int,
                  num_devices: int, grid: Grid | None = None) -> str:
  """The gossip kernel the method 'auto' picks.

  The rule, in order:
  1. 'ring' for the ring topology (`max_degree` 2) and 'torus' for the
     torus (`max_degree` 4, its `grid` given): shifts of the node axis,
     `ppermute` between devices when the nodes divide over more than one
     (they never gather the population), `jnp.roll` otherwise. On one CPU
     device a 256-node ring of MLPs mixed in 0.015 s this way against
     0.12 s by gather and 0.38 s dense (BUILD_NOTES.md, workload gossip).
  2. 'dense' when `num_nodes <= DENSE_MAX_NODES` (64) or the graph is dense,
     `max_degree > num_nodes / 4`: one `[N, N]` matmul beats K gathers.
  3. 'gather' otherwise: O(N K d) for large sparse graphs.

  Args:
    topology_name: the topology's name, e.g. 'ring', 'torus', 'erdos_renyi'.
    num_nodes: N.
    max_degree: K, the neighbour slots a node.
    num_devices: devices on the mesh axis the nodes are sharded over.
    grid: `(rows, cols)` of a torus.

  Returns:
    One of 'dense', 'gather', 'ring', 'torus'.

  Examples:
    >>> choose_method('ring', 1024, 2, num_devices=8)
    'ring'
    >>> choose_method('exponential', 1024, 20, num_devices=1)
    'gather'
    >>> choose_method('erdos_renyi', 32, 9, num_devices=8)
    'dense'
  """
  del num_devices  # The shift kernels choose ppermute or roll themselves.
  if topology_name == 'ring' and max_degree == gossip_shifts.SLOTS['ring']:
    return 'ring'
  if (topology_name == 'torus' and max_degree == gossip_shifts.SLOTS['torus'] and
      grid is not None and grid[0] * grid[1] == num_nodes):
    return 'torus'
  if num_nodes <= DENSE_MAX_NODES or max_degree * 4 > num_nodes:
    return 'dense'
  return 'gather'


# ---------------------------------------------------------------- consensus


def _live_weights(live: jax.Array | None, n: int) -> jax.Array:
  if live is None:
    return jnp.ones((n,), jnp.float32)
  return (jnp.asarray(live) != 0).astype(jnp.float32)


def average(tree: PyTree, live: jax.Array | None = None) -> PyTree:
  """x_bar, the mean model of the (live) nodes.

  Args:
    tree: node states, every leaf `[N, ...]`.
    live: optional `[N]` mask (bool, or nonzero = live) of the nodes to
      average; None averages all.

  Returns:
    The mean, every leaf `[...]` in its dtype; zeros if no node is live.
    Dead nodes' values are never read (NaN there does not spread).

  Examples:
    >>> average(jnp.array([1.0, 3.0, 9.0]),
    ...         live=jnp.array([True, True, False])).tolist()
    2.0
  """
  w = _live_weights(live, node_axis.num_nodes(tree))
  count = jnp.maximum(jnp.sum(w), 1.0)

  def one(x):
    z = jnp.where(node_axis.per_node(w, x) > 0, x, 0).astype(node_axis.compute_dtype(x.dtype))
    mean = jnp.tensordot(w.astype(z.dtype), z, axes=1,
                         precision=jax.lax.Precision.HIGHEST) / count
    return mean.astype(x.dtype)

  return jax.tree.map(one, tree)


def consensus_distance(tree: PyTree, live: jax.Array | None = None
                       ) -> jax.Array:
  """(1/m) sum_i ||x_i - x_bar||^2 over the m (live) nodes.

  The squared norm runs over every leaf of a node's state; x_bar is the
  live nodes' mean (`average`). It is 0 when the nodes agree (Lian et al.
  2017 bound the D-PSGD error by it).

  Args:
    tree: node states, every leaf `[N, ...]`.
    live: optional `[N]` mask (bool, or nonzero = live); None takes all.

  Returns:
    A float32 scalar; 0 if no node is live.

  Examples:
    >>> float(consensus_distance(jnp.array([[0.0], [2.0]])))
    1.0
  """
  w = _live_weights(live, node_axis.num_nodes(tree))
  count = jnp.maximum(jnp.sum(w), 1.0)
  mean = average(tree, live)

  def one(x, x_bar):
    dtype = node_axis.compute_dtype(x.dtype)
    diff = x.astype(dtype) - x_bar.astype(dtype)
    per_node = jnp.sum(jnp.square(diff).reshape(x.shape[0], -1), axis=1)
    return jnp.sum(jnp.where(w > 0, per_node, 0)).astype(jnp.float32)

  total = sum(jax.tree.leaves(jax.tree.map(one, tree, mean)))
  return jnp.asarray(total, jnp.float32) / count
