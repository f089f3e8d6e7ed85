"""Each round's gossip weights over a topology's live links.

`round_mixing` turns a `topology.Topology` into the round's `Mixing` inside
jit, over the links that are up (a link fails with a given probability)
between the nodes that are live. Two weight rules for static graphs:

- Metropolis-Hastings weights, w_ij = 1 / (1 + max(d_i, d_j)): symmetric
  and doubly stochastic on any undirected graph (Xiao and Boyd, Systems &
  Control Letters 2004, "Fast Linear Iterations for Distributed
  Averaging"; Xiao, Boyd and Lall, IPSN 2005, "A Scheme for Robust
  Distributed Sensor Fusion Based on Average Consensus").
- Uniform weights, w_ij = 1 / (d_i + 1) over the closed neighbourhood:
  row stochastic only, the plain neighbourhood average.

Time-varying topologies (one-peer exponential, random matching) pair each
node with one peer a round. `spectral_gap` and `describe` summarize the
all-live weights.

Everything in `round_mixing` is a pure jax function of the round number,
the key and the live mask; the topology, rule and failure rate are static
Python (close over them, e.g. with `functools.partial`, before `jax.jit`).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_core.channel.topology import ONE_PEER_EXPONENTIAL
from fedjax_core.channel.topology import RANDOM_MATCHING
from fedjax_core.channel.topology import Topology
from fedjax_core.errors import SettingError

# The weight rules of `round_mixing`.
RULES = ('metropolis', 'uniform')


class Mixing(NamedTuple):
  """One round's gossip weights over N nodes with at most K neighbours.

  Node i's mixed value is
  `self_weight[i] * x_i + sum_k weights[i, k] * x_{neighbours[i, k]}`.
  A padding slot (or a dead link) has weight 0 and names node i itself.

  Attributes:
    neighbours: `[N, K]` int32 neighbour ids.
    weights: `[N, K]` float32 weight of each neighbour slot.
    self_weight: `[N]` float32 weight of the node's own value.
  """

  neighbours: jax.Array
  weights: jax.Array
  self_weight: jax.Array


def round_mixing(topology: Topology, rule: str, round_num: jax.Array | int,
                 key: jax.Array, node_live: jax.Array,
                 link_failure_rate: float) -> tuple[Mixing, jax.Array]:
  """The round's gossip weights over the live links between live nodes.

  Each undirected edge fails independently with probability
  `link_failure_rate` (one Bernoulli draw per edge from `fold_in(key, 0)`,
  so both directions fail together). A dead node neither sends nor
  receives: its row is self weight 1 and no other node weighs it. The
  weights are renormalized over what is left, with d_i node i's number of
  live links:

  - 'metropolis': w_ij = 1 / (1 + max(d_i, d_j)), w_ii = 1 - sum_j w_ij;
    symmetric, doubly stochastic.
  - 'uniform': w_ij = w_ii = 1 / (d_i + 1); row stochastic only.

  Time-varying topologies ignore the rule and return K = 1 (the round's one
  peer): `one_peer_exponential` pairs node i with its in-peer
  (i - 2^(round_num mod tau)) % N; `random_matching` draws a uniformly
  random perfect matching from `fold_in(key, 1)` (with N odd, one node
  sits out) and draws each pair's failure from `fold_in(key, 0)`. A live
  pair weighs 1/2 and 1/2; otherwise the node keeps its value. Random
  matchings are symmetric, so doubly stochastic; one-peer exponential
  is doubly stochastic with all links live, and only row stochastic
  after failures (a node whose in-link fails keeps its value, while its
  in-peer still gives half its own to no one else).

  Args:
    topology: the `Topology` (static).
    rule: 'metropolis' or 'uniform' (static).
    round_num: the round number, a Python or traced int (used by
      one_peer_exponential only).
    key: the round's PRNG key (link failures, random matchings).
    node_live: `[N]` bool, which nodes take part this round.
    link_failure_rate: the probability that a link fails, in [0, 1]
      (static).

  Returns:
    `(mixing, num_live_edges)`: the round's `Mixing` (`[N, K]` slots in the
    topology's slot order, a dead slot named by the node itself, weight 0)
    and the int32 scalar number of undirected links used this round.

  Raises:
    SettingError: for an unknown rule or a failure rate outside [0, 1].

  Examples:
    >>> ring = topology.build('ring', 4, seed=0)
    >>> mixing, live = round_mixing(ring, 'metropolis', 0,
    ...                             jax.random.key(0), jnp.ones(4, bool), 0.0)
    >>> [round(w, 4) for w in mixing.weights[0].tolist()], int(live)
    ([0.3333, 0.3333], 4)
  """
  _check_rule(rule)
  if not 0.0 <= link_failure_rate <= 1.0:
    raise SettingError(
        'gossip.link_failure_rate', f'the link failure rate is a probability in '
        f'[0, 1], got {link_failure_rate}.')
  node_live = jnp.asarray(node_live, bool)
  if node_live.shape != (topology.num_nodes,):
    raise ValueError(f'node_live must have shape ({topology.num_nodes},), '
                     f'got {node_live.shape}.')
  return _round_mixing(
      jnp.asarray(topology.edges), jnp.asarray(topology.neighbours),
      jnp.asarray(topology.slot_edges), jnp.asarray(round_num, jnp.int32),
      key, node_live, topology.time_varying,
      rule if topology.time_varying is None else RULES[0],  # Ignored there.
      float(link_failure_rate))


# Jitted with the topology's arrays as arguments, so that eager callers
# (tests, `spectral_gap`) compile once per shape; inside an outer jit it is
# inlined.
@functools.partial(jax.jit, static_argnums=(6, 7, 8))
def _round_mixing(edges: jax.Array, neighbours: jax.Array,
                  slot_edges: jax.Array, round_num: jax.Array, key: jax.Array,
                  node_live: jax.Array, time_varying: str | None, rule: str,
                  link_failure_rate: float) -> tuple[Mixing, jax.Array]:
  fail_key, match_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  if time_varying == RANDOM_MATCHING:
    return _random_matching(node_live.shape[0], match_key, fail_key,
                            node_live, link_failure_rate)
  link_up = _links_up(fail_key, link_failure_rate, edges.shape[0])
  edge_live = link_up & node_live[edges[:, 0]] & node_live[edges[:, 1]]
  if time_varying == ONE_PEER_EXPONENTIAL:
    return _one_peer_mixing(neighbours, slot_edges, round_num, edge_live)
  return _static_mixing(edges, neighbours, slot_edges, rule, edge_live)


@jax.jit
def mixing_matrix(mixing: Mixing) -> jax.Array:
  """The dense `[N, N]` mixing matrix W, x_new = W x (jittable).

  Args:
    mixing: a round's `Mixing`.

  Returns:
    `[N, N]` W with W[i, j] the weight node i gives node j's value.

  Examples:
    >>> mixing = Mixing(jnp.array([[1], [0]]), jnp.array([[0.5], [0.25]]),
    ...                 jnp.array([0.5, 0.75]))
    >>> mixing_matrix(mixing).tolist()
    [[0.5, 0.5], [0.25, 0.75]]
  """
  n, k = mixing.neighbours.shape
  rows = jnp.broadcast_to(jnp.arange(n)[:, None], (n, k))
  matrix = jnp.zeros((n, n), mixing.weights.dtype)
  matrix = matrix.at[rows, mixing.neighbours].add(mixing.weights)
  return matrix + jnp.diag(mixing.self_weight)


def spectral_gap(topology: Topology, rule: str) -> float | None:
  """1 - |lambda_2| of the mixing matrix with all nodes and links live.

  |lambda_2| is the second largest eigenvalue modulus (numpy.linalg's
  eigvalsh for a symmetric W, eigvals otherwise) of round 0's matrix W;
  the gap sets the consensus rate, the distance to the average shrinking
  like |lambda_2|^t. For `one_peer_exponential` it is
  1 - |lambda_2(W_{tau-1} ... W_0)|^(1 / tau), the per-round rate of one
  period of tau rounds (1 when N is a power of 2, where the period's
  product is exactly the average; a product modulus below 1e-9 counts as
  0). For `random_matching` it is None (the
  matrix is random).

  Args:
    topology: the `Topology`.
    rule: 'metropolis' or 'uniform'.

  Returns:
    The spectral gap, or None for random matchings.

  Examples:
    >>> round(spectral_gap(topology.build('complete', 4, seed=0), 'metropolis'), 6)
    1.0
  """
  _check_rule(rule)
  if topology.time_varying == RANDOM_MATCHING:
    return None
  n = topology.num_nodes
  key, live = jax.random.key(0), jnp.ones(n, bool)

  def matrix(t):
    mixing, _ = round_mixing(topology, rule, t, key, live, 0.0)
    return np.asarray(mixing_matrix(mixing), np.float64)

  if topology.time_varying == ONE_PEER_EXPONENTIAL:
    period = topology.neighbours.shape[1]
    product = np.eye(n)
    for t in range(period):
      product = matrix(t) @ product
    # The root would blow eigvals' rounding (~1e-16) of an exact average up
    # to ~1e-16^(1/tau): a modulus below 1e-9 counts as 0.
    modulus = _second_modulus(product)
    return float(1.0 - (modulus if modulus > 1e-9 else 0.0)**(1.0 / period))
  return float(1.0 - _second_modulus(matrix(0)))


def describe(topology: Topology, rule: str) -> str:
  """One line: name, N, edges, maximum degree and spectral gap.

  For time-varying topologies the edges are those of a period's union
  (none for random matching) and the maximum degree is per round (1).

  Args:
    topology: the `Topology`.
    rule: the weight rule of the spectral gap.

  Returns:
    e.g. 'ring: N=5, 5 edges, max degree 2, spectral gap 0.461 (metropolis)';
    time-varying topologies name no rule (they ignore it).

  Examples:
    >>> describe(topology.build('ring', 5, seed=0), 'metropolis')
    'ring: N=5, 5 edges, max degree 2, spectral gap 0.461 (metropolis)'
  """
  gap = spectral_gap(topology, rule)
  degree = 1 if topology.time_varying else topology.neighbours.shape[1]
  return (f'{topology.name}: N={topology.num_nodes}, '
          f'{len(topology.edges)} edges'
          + (f' (time-varying: {topology.time_varying})'
             if topology.time_varying else '')
          + f', max degree {degree}, spectral gap '
          + ('n/a' if gap is None else f'{gap:.3g}')
          + ('' if topology.time_varying else f' ({rule})'))


def _check_rule(rule: str) -> None:
  if rule not in RULES:
    raise SettingError('gossip.mixing', f'unknown mixing rule {rule!r}; valid '
                       f"rules: {', '.join(RULES)}.")


def _second_modulus(matrix: np.ndarray) -> float:
  symmetric = np.array_equal(matrix, matrix.T)  # Metropolis: eigvalsh.
  eigenvalues = (np.linalg.eigvalsh(matrix) if symmetric
                 else np.linalg.eigvals(matrix))
  moduli = np.sort(np.abs(eigenvalues))[::-1]
  return float(moduli[1]) if len(moduli) > 1 else 0.0


# ----------------------------------------------------------------------------
# Mixing.


def _links_up(key: jax.Array, link_failure_rate: float,
              num_links: int) -> jax.Array:
  """`[num_links]` bool, each link up with probability 1 - rate."""
  if link_failure_rate in (0.0, 1.0):  # No draw (nor its compile) needed.
    return jnp.full((num_links,), link_failure_rate == 0.0)
  return ~jax.random.bernoulli(key, link_failure_rate, (num_links,))


def _static_mixing(edges: jax.Array, neighbours: jax.Array,
                   slot_edges: jax.Array, rule: str,
                   edge_live: jax.Array) -> tuple[Mixing, jax.Array]:
  n = neighbours.shape[0]
  live = edge_live.astype(jnp.float32)
  degree = (jax.ops.segment_sum(live, edges[:, 0], n)
            + jax.ops.segment_sum(live, edges[:, 1], n))
  slot_live = jnp.append(edge_live, False)[slot_edges]
  if rule == 'metropolis':
    edge_weight = live / (1.0 + jnp.maximum(degree[edges[:, 0]],
                                            degree[edges[:, 1]]))
    weights = jnp.append(edge_weight, 0.0)[slot_edges]
  else:
    weights = slot_live / (degree + 1.0)[:, None]
  self_ids = jnp.arange(n, dtype=jnp.int32)[:, None]
  neighbours = jnp.where(slot_live, neighbours, self_ids)
  mixing = Mixing(neighbours, weights, 1.0 - jnp.sum(weights, axis=1))
  return mixing, jnp.sum(edge_live, dtype=jnp.int32)


def _one_peer_mixing(neighbours: jax.Array, slot_edges: jax.Array,
                     round_num: jax.Array,
                     edge_live: jax.Array) -> tuple[Mixing, jax.Array]:
  n, period = neighbours.shape
  phase = round_num % period
  peer = neighbours[:, phase]
  edge = slot_edges[:, phase]
  pair_live = edge_live[edge]
  weight = jnp.where(pair_live, 0.5, 0.0).astype(jnp.float32)
  neighbours = jnp.where(pair_live, peer, jnp.arange(n, dtype=jnp.int32))
  used = jnp.zeros(edge_live.shape[0], bool).at[edge].max(pair_live)
  mixing = Mixing(neighbours[:, None], weight[:, None], 1.0 - weight)
  return mixing, jnp.sum(used, dtype=jnp.int32)


def _random_matching(num_nodes: int, match_key: jax.Array,
                     fail_key: jax.Array, node_live: jax.Array,
                     link_failure_rate: float) -> tuple[Mixing, jax.Array]:
  order = jax.random.permutation(match_key, num_nodes).astype(jnp.int32)
  pairs = num_nodes // 2
  first, second = order[0:2 * pairs:2], order[1:2 * pairs:2]
  link_up = _links_up(fail_key, link_failure_rate, pairs)
  pair_live = link_up & node_live[first] & node_live[second]
  ids = jnp.arange(num_nodes, dtype=jnp.int32)
  partner = ids.at[first].set(jnp.where(pair_live, second, first))
  partner = partner.at[second].set(jnp.where(pair_live, first, second))
  matched = jnp.zeros(num_nodes, bool).at[first].set(pair_live)
  matched = matched.at[second].set(pair_live)
  weight = jnp.where(matched, 0.5, 0.0).astype(jnp.float32)
  mixing = Mixing(partner[:, None], weight[:, None], 1.0 - weight)
  return mixing, jnp.sum(pair_live, dtype=jnp.int32)
