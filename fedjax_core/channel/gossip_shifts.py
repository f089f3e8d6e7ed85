"""Gossip on a ring and on a torus as shifts of the node axis.

On these two topologies a node's neighbours are the node axis shifted by
one (the ring; the torus's rows and columns), so `W x` needs no gather:
`jnp.roll` on one device, and between the shards of a device mesh only the
boundary rows move, by `jax.lax.ppermute` inside `jax.shard_map`. No device
ever holds the whole population (a 1,024-node ring on 8 devices sends two
rows a device). `fedjax_core.channel.gossip.mix` dispatches here.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from fedjax_core.channel import node_axis
from fedjax_core.channel import topology
from fedjax_core.channel.node_axis import CLIENTS_AXIS
from fedjax_core.channel.mixing_weights import Mixing
from fedjax_core.errors import SettingError

PyTree = Any
Grid = tuple[int, int]
# The number of neighbour slots each shift kernel expects.
SLOTS = {'ring': 2, 'torus': 4}


def _is_concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_shift_slots(method: str, mixing: Mixing,
                       expected: np.ndarray) -> None:
  """Raises if a concrete `mixing` has a live slot off the shift pattern.

  The shift kernels read only the weights: slot k of node i is assumed to
  be `expected[i, k]`. A slot naming another node is harmless only with
  weight 0. Skipped when `mixing` is traced (inside `jit`).
  """
  if not (_is_concrete(mixing.neighbours) and _is_concrete(mixing.weights)):
    return
  neighbours = np.asarray(mixing.neighbours)
  weights = np.asarray(mixing.weights)
  bad = (neighbours != expected) & (weights != 0)
  if bad.any():
    i, k = (int(v) for v in np.argwhere(bad)[0])
    raise SettingError(
        'gossip.method',
        f'The {method!r} gossip kernel expects neighbour slot {k} of node '
        f'{i} to be node {expected[i, k]}, but the mixing names node '
        f'{neighbours[i, k]} with weight {weights[i, k]}; build the mixing '
        f'with the {method} topology (its documented slot order) or use the '
        "method 'gather'.")


def _shards(mesh: Mesh | None, axis: str) -> int:
  if mesh is None:
    return 1
  if axis not in mesh.shape:
    raise SettingError(
        'gossip.axis', f'The mesh has axes {tuple(mesh.axis_names)}, not '
        f'{axis!r}; shard the nodes over a mesh axis and name it.')
  return mesh.shape[axis]


def _sharded(fn, mesh: Mesh, axis: str, tree: PyTree, weights: jax.Array,
             self_weight: jax.Array) -> PyTree:
  """`fn(tree, weights, self_weight)` per shard of the node axis."""
  spec = PartitionSpec(axis)
  return jax.shard_map(fn, mesh=mesh, in_specs=(spec, spec, spec),
                       out_specs=spec)(tree, weights, self_weight)


def _halos(block: jax.Array, axis: str, shards: int,
           width: int = 1) -> tuple[jax.Array, jax.Array]:
  """The `width` rows before and after this shard's `block` on the ring of
  shards: the previous shard's last rows and the next shard's first rows."""
  forward = [(j, (j + 1) % shards) for j in range(shards)]
  backward = [(j, (j - 1) % shards) for j in range(shards)]
  before = jax.lax.ppermute(block[-width:], axis, forward)
  after = jax.lax.ppermute(block[:width], axis, backward)
  return before, after


def check_slots(method: str, mixing: Mixing) -> None:
  k = mixing.weights.shape[1]
  if k != SLOTS[method]:
    raise SettingError(
        'gossip.method',
        f'The {method!r} gossip kernel needs {SLOTS[method]} neighbour '
        f'slots a node, but the mixing has {k}; use it only with the '
        f"{method} topology, or use the method 'gather' or 'dense'.")


def _ring_block(x: jax.Array, before: jax.Array, after: jax.Array,
                weights: jax.Array, self_weight: jax.Array) -> jax.Array:
  """One block of consecutive ring nodes mixed with its left and right
  neighbours; `before`/`after` are the rows just outside the block."""
  z = x.astype(node_axis.compute_dtype(x.dtype))
  left = jnp.concatenate([before.astype(z.dtype), z[:-1]])
  right = jnp.concatenate([z[1:], after.astype(z.dtype)])
  y = (node_axis.per_node(self_weight, z) * z + node_axis.per_node(weights[:, 0], z) * left +
       node_axis.per_node(weights[:, 1], z) * right)
  return y.astype(x.dtype)


def mix_ring(tree: PyTree, mixing: Mixing, mesh: Mesh | None = None,
             axis: str = CLIENTS_AXIS) -> PyTree:
  """`W x` on a ring: slot 0 is node (i - 1) % N, slot 1 node (i + 1) % N.

  The neighbours are the node axis shifted by one either way, so only the
  per-slot weights are read (`mixing.neighbours` is checked against the
  ring when it is concrete; a slot of weight 0 may name any node). With a
  `mesh` of more than one device on `axis` and N a multiple of that count,
  each device keeps its contiguous block of N / D nodes and receives just
  the last row of the previous block and the first row of the next
  (`lax.ppermute` inside `jax.shard_map`): nothing is all-gathered.
  Otherwise the shifts are `jnp.roll` along the node axis (the same
  arithmetic; XLA partitions it as it can).

  Args:
    tree: node states, every leaf `[N, ...]` floating point.
    mixing: ring gossip weights, `K = 2` slots in the order above.
    mesh: the mesh the nodes are sharded over, or None.
    axis: the mesh axis of the nodes.

  Returns:
    The mixed node states, same structure, shapes and dtypes.

  Examples:
    >>> m = Mixing(jnp.array([[2, 1], [0, 2], [1, 0]]),
    ...            jnp.full((3, 2), 0.25), jnp.full(3, 0.5))
    >>> mix_ring(jnp.array([0.0, 4.0, 8.0]), m).tolist()
    [3.0, 4.0, 5.0]
  """
  node_axis.check_floating(tree)
  check_slots('ring', mixing)
  n = node_axis.num_nodes(tree)
  _check_shift_slots('ring', mixing, topology.ring_slots(n))
  shards = _shards(mesh, axis)

  if shards > 1 and n % shards == 0:
    def per_shard(tree, weights, self_weight):
      def one(x):
        before, after = _halos(x, axis, shards)
        return _ring_block(x, before, after, weights, self_weight)
      return jax.tree.map(one, tree)
    return _sharded(per_shard, mesh, axis, tree, mixing.weights,
                    mixing.self_weight)

  def one(x):
    return _ring_block(x, x[-1:], x[:1], mixing.weights, mixing.self_weight)
  return jax.tree.map(one, tree)


def _torus_block(x: jax.Array, before: jax.Array, after: jax.Array,
                 weights: jax.Array, self_weight: jax.Array) -> jax.Array:
  """Whole grid rows `x`, `[r, cols, ...]`, mixed with their four
  neighbours; `before`/`after` are the grid rows just above and below."""
  z = x.astype(node_axis.compute_dtype(x.dtype))
  up = jnp.concatenate([before.astype(z.dtype), z[:-1]])
  down = jnp.concatenate([z[1:], after.astype(z.dtype)])
  left = jnp.roll(z, 1, axis=1)
  right = jnp.roll(z, -1, axis=1)
  w = weights.reshape(z.shape[:2] + (4,))
  y = node_axis.per_node(self_weight.reshape(z.shape[:2]), z) * z
  for k, neighbour in enumerate((up, down, left, right)):
    y = y + node_axis.per_node(w[..., k], z) * neighbour
  return y.astype(x.dtype)


def _check_grid(grid, n: int) -> Grid:
  if grid is None or len(grid) != 2 or min(grid) < 1:
    raise SettingError('gossip.grid', f'The torus kernel needs the grid as '
                       f'(rows, cols) of positive ints, got {grid!r}.')
  rows, cols = (int(g) for g in grid)
  if rows * cols != n:
    raise SettingError('gossip.grid', f'A {rows}x{cols} torus has '
                       f'{rows * cols} nodes but the states have {n}; pass '
                       'the grid the mixing was built on.')
  return rows, cols


def mix_torus(tree: PyTree, mixing: Mixing, grid: Grid,
              mesh: Mesh | None = None, axis: str = CLIENTS_AXIS) -> PyTree:
  """`W x` on a `rows x cols` torus, node id `r * cols + c`.

  Slots: 0 up (row (r - 1) % rows), 1 down ((r + 1) % rows), 2 left
  (column (c - 1) % cols), 3 right ((c + 1) % cols). Only the per-slot
  weights are read (`mixing.neighbours` is checked against the torus when
  it is concrete; a slot of weight 0 may name any node). With a `mesh` of
  D > 1 devices on `axis` and rows a multiple of D, each device keeps
  rows / D whole grid rows; left and right are local shifts and up and
  down need only the grid row above and below the block (`lax.ppermute`
  inside `jax.shard_map`). Otherwise the node axis is reshaped to
  `[rows, cols]` and shifted with `jnp.roll`.

  Args:
    tree: node states, every leaf `[rows * cols, ...]` floating point.
    mixing: torus gossip weights, `K = 4` slots in the order above.
    grid: `(rows, cols)`.
    mesh: the mesh the nodes are sharded over, or None.
    axis: the mesh axis of the nodes.

  Returns:
    The mixed node states, same structure, shapes and dtypes.

  Examples:
    >>> rows, cols = 3, 3
    >>> m = Mixing(jnp.asarray(topology.torus_slots(rows, cols)),
    ...            jnp.full((9, 4), 0.125), jnp.full(9, 0.5))
    >>> mix_torus(jnp.arange(9.0), m, (rows, cols)).tolist()[4]
    4.0
  """
  node_axis.check_floating(tree)
  check_slots('torus', mixing)
  n = node_axis.num_nodes(tree)
  rows, cols = _check_grid(grid, n)
  _check_shift_slots('torus', mixing, topology.torus_slots(rows, cols))
  shards = _shards(mesh, axis)

  def grid_rows(fn, x, weights, self_weight):
    return fn(x.reshape((-1, cols) + x.shape[1:]), weights,
              self_weight).reshape(x.shape)

  if shards > 1 and rows % shards == 0:
    def per_shard(tree, weights, self_weight):
      def block(z, weights, self_weight):
        before, after = _halos(z, axis, shards)
        return _torus_block(z, before, after, weights, self_weight)
      return jax.tree.map(
          lambda x: grid_rows(block, x, weights, self_weight), tree)
    return _sharded(per_shard, mesh, axis, tree, mixing.weights,
                    mixing.self_weight)

  def block(z, weights, self_weight):
    return _torus_block(z, z[-1:], z[:1], weights, self_weight)
  return jax.tree.map(
      lambda x: grid_rows(block, x, mixing.weights, mixing.self_weight), tree)
