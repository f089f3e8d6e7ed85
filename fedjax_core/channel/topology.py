"""Gossip topologies: the communication graphs of decentralized learning.

A `Topology` is built once on the host from a networkx generator
(`build`) and held as small numpy arrays: the undirected edge list and, per
node, a fixed number K of neighbour slots. `mixing_weights.round_mixing`
turns it into each round's gossip weights, and `draw` into a picture.

Topologies:

- `ring`, `torus` (2-D, periodic), `complete`, from networkx's
  `cycle_graph`, `grid_2d_graph(periodic=True)` and `complete_graph`.
- `exponential`: the static exponential graph, node i linked to
  i + 2^k mod N for k = 0 .. ceil(log2 N) - 1, taken undirected
  (networkx's `circulant_graph`), and `one_peer_exponential`, its
  time-varying one-peer version (Ying, Yuan, Chen, Hu, Pan and Yin,
  NeurIPS 2021, "Exponential Graph is Provably Efficient for Decentralized
  Deep Training"): in round t every node averages, 1/2 each, with the one
  peer at distance 2^(t mod tau), tau = ceil(log2 N); over tau rounds the
  product of the mixing matrices is exactly the average when N is a power
  of 2.
- `erdos_renyi(p)` (networkx's `gnp_random_graph`, seeded; it must come out
  connected) and `barabasi_albert(m)` (`barabasi_albert_graph`, seeded;
  Barabasi and Albert, Science 1999, "Emergence of Scaling in Random
  Networks").
- `random_matching`: time-varying, a fresh random perfect matching each
  round drawn from the round's key; matched pairs average, 1/2 each (the
  randomized gossip of Boyd, Ghosh, Prabhakar and Shah, IEEE Trans. Inf.
  Theory 2006, "Randomized Gossip Algorithms", all pairs at once).
- `file:PATH`: an edge list read by networkx's `read_edgelist`.
"""

import math
import os
import re
from typing import NamedTuple

import networkx as nx
import numpy as np

from fedjax_core.errors import SettingError

# The specs `build` accepts, as listed in its error messages.
SPECS = ('ring', 'torus', 'exponential', 'one_peer_exponential',
         'erdos_renyi(p)', 'barabasi_albert(m)', 'complete',
         'random_matching', 'file:PATH')
# How to write the parameter of a parametrized topology.
_PARAMETERS = {
    'erdos_renyi': 'erdos_renyi(p), p in (0, 1], e.g. erdos_renyi(0.3)',
    'barabasi_albert': ('barabasi_albert(m), m an integer in [1, N - 1], '
                        'e.g. barabasi_albert(2)'),
}
# Time-varying topologies: the round's pairs change with the round.
ONE_PEER_EXPONENTIAL = 'one_peer_exponential'
RANDOM_MATCHING = 'random_matching'


class Topology(NamedTuple):
  """A communication graph over N nodes, as host arrays (`build`).

  Slot order (kernels that exchange by fixed shifts, e.g. `ppermute` on a
  mesh, rely on it):

  - `ring` (N >= 3): `neighbours[i] = [(i - 1) % N, (i + 1) % N]`.
  - `torus` (rows x cols, both >= 3; node id r * cols + c):
    `neighbours[i] = [up, down, left, right]` =
    `[((r - 1) % rows, c), ((r + 1) % rows, c), (r, (c - 1) % cols),
    (r, (c + 1) % cols)]`.
  - `exponential`: slot k is node (i + s_k) % N for the shifts
    s = [-1, +1, -2, +2, -4, +4, ...] (powers 2^k < N), with a shift
    dropped when it names the same node as an earlier one (e.g. +N/2 after
    -N/2): every node has the same shifts, the graph is circulant.
  - any other static graph: neighbours in increasing id order.
  - `one_peer_exponential`: slot k is node i's in-peer of the rounds
    t = k mod tau, `(i - 2^k) % N`, K = tau = ceil(log2 N). `edges` is
    the union of all rounds' pairs (the static exponential graph), and
    `slot_edges[i, k]` the id of the edge {i, (i - 2^k) % N}.
  - `random_matching`: the pairs are drawn each round, so the graph is
    empty: `edges` is `[0, 2]`, `neighbours` `[N, 1]` names the node
    itself and `slot_edges` is `[N, 1]` of E = 0.

  Attributes:
    name: the spec as given to `build`, e.g. 'erdos_renyi(0.2)'.
    num_nodes: N.
    edges: `[E, 2]` int32 undirected edges (i, j), i < j, sorted.
    neighbours: `[N, K]` int32 neighbour ids, K the maximum degree;
      padding slots hold the node's own id.
    slot_edges: `[N, K]` int32 edge id (a row of `edges`) of each slot;
      E for padding slots.
    time_varying: None for a static graph, else 'one_peer_exponential' or
      'random_matching'.
    grid: (rows, cols) of a torus, else None.
  """

  name: str
  num_nodes: int
  edges: np.ndarray
  neighbours: np.ndarray
  slot_edges: np.ndarray
  time_varying: str | None
  grid: tuple[int, int] | None


def build(spec: str, num_nodes: int, seed: int) -> Topology:
  """Builds the topology named by `spec` over `num_nodes` nodes.

  Args:
    spec: one of 'ring', 'torus', 'exponential', 'one_peer_exponential',
      'erdos_renyi(p)' with p in (0, 1], 'barabasi_albert(m)' with m an
      integer in [1, N - 1], 'complete', 'random_matching', or 'file:PATH'
      (an edge list, one 'i j' pair per line, node ids 0 .. N - 1).
    num_nodes: N, the number of nodes (at least 2; 3 for a ring, 9 for a
      torus).
    seed: the seed of the random graphs (erdos_renyi, barabasi_albert).

  Returns:
    The `Topology`.

  Raises:
    SettingError: for an unknown spec, a parameter out of range, too few
      nodes, no torus factorization of N, a disconnected graph, or an edge
      list that is missing or does not describe nodes 0 .. N - 1.

  Examples:
    >>> build('ring', 4, seed=0).neighbours.tolist()
    [[3, 1], [0, 2], [1, 3], [2, 0]]
  """
  spec = spec.strip()
  if not isinstance(num_nodes, (int, np.integer)) or isinstance(
      num_nodes, bool):
    raise SettingError('num_nodes', f'the number of nodes must be an '
                       f'integer, got {num_nodes!r}.')
  num_nodes = int(num_nodes)
  if spec.startswith('file:'):
    return _from_file(spec, spec[len('file:'):].strip(), num_nodes)
  match = re.fullmatch(r'(\w+)\s*(?:\((.*)\))?', spec)
  kind, argument = (match.group(1), match.group(2)) if match else (spec, None)
  if kind in ('erdos_renyi', 'barabasi_albert'):
    if argument is None:
      raise SettingError('topology', f'topology {spec!r} needs its '
                         f'parameter: write {_PARAMETERS[kind]}.')
  elif argument is not None or kind not in (
      'ring', 'torus', 'exponential', ONE_PEER_EXPONENTIAL, 'complete',
      RANDOM_MATCHING):
    raise SettingError(
        'topology', f'unknown topology {spec!r}; valid topologies: '
        f"{', '.join(SPECS)}.")
  _check_num_nodes(spec, num_nodes, 3 if kind == 'ring' else 2)

  if kind == 'ring':
    graph = nx.cycle_graph(num_nodes)
    return _from_graph(spec, graph, ring_slots(num_nodes))
  if kind == 'torus':
    rows, cols = _torus_shape(spec, num_nodes)
    graph = nx.convert_node_labels_to_integers(
        nx.grid_2d_graph(rows, cols, periodic=True), ordering='sorted')
    return _from_graph(spec, graph, torus_slots(rows, cols),
                       grid=(rows, cols))
  if kind == 'exponential':
    graph = nx.circulant_graph(num_nodes, _powers_of_two(num_nodes))
    return _from_graph(spec, graph,
                       _circulant_slots(num_nodes, _exponential_shifts(
                           num_nodes)))
  if kind == ONE_PEER_EXPONENTIAL:
    return _one_peer_exponential(spec, num_nodes)
  if kind == 'complete':
    return _from_graph(spec, nx.complete_graph(num_nodes))
  if kind == RANDOM_MATCHING:
    return Topology(spec, num_nodes, np.zeros((0, 2), np.int32),
                    np.arange(num_nodes, dtype=np.int32)[:, None],
                    np.zeros((num_nodes, 1), np.int32), RANDOM_MATCHING,
                    None)
  if kind == 'erdos_renyi':
    return _erdos_renyi(spec, argument, num_nodes, seed)
  return _barabasi_albert(spec, argument, num_nodes, seed)


def draw(topology: Topology, path: str) -> None:
  """Writes a PNG picture of the graph to `path` (matplotlib, Agg).

  Circular layout for ring, exponential, one-peer exponential, complete and
  random matching; the grid for a torus (its wrap-around edges run along
  the grid lines); a seeded spring layout otherwise
  (20 iterations above 300 nodes, so 1024 nodes draw in a few seconds).
  Time-varying topologies show the union of a period's pairs (none for
  random matching). Nodes are drawn small above 100 nodes.

  Args:
    topology: the `Topology`.
    path: the PNG file to write.

  Examples:
    >>> draw(build('ring', 8, seed=0), '/tmp/ring.png')
  """
  # Imported here: only drawing needs matplotlib. The figure is built without
  # pyplot, so no global backend or figure state is touched.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  graph = _graph(topology)
  n = topology.num_nodes
  kind = _kind(topology.name)
  if topology.grid is not None:
    _, cols = topology.grid
    pos = {i: (i % cols, -(i // cols)) for i in range(n)}
  elif kind in ('ring', 'exponential', ONE_PEER_EXPONENTIAL, 'complete',
                RANDOM_MATCHING):
    pos = nx.circular_layout(graph)
  else:
    # Fewer iterations for big graphs: 1024 nodes take seconds, not tens.
    pos = nx.spring_layout(graph, seed=0, method='force',
                           iterations=50 if n <= 300 else 20)
  small = n > 100
  figure = Figure(figsize=(8, 8) if small else (6, 6))
  FigureCanvasAgg(figure)
  ax = figure.add_subplot()
  nx.draw(graph, pos, ax=ax, node_size=8 if small else 200,
          with_labels=not small, font_size=7,
          width=0.2 if small else 1.0, edge_color='0.5',
          node_color='tab:blue' if small else 'lightsteelblue')
  ax.set_title(f'{topology.name}: N={n}, {graph.number_of_edges()} edges'
               + (f' (time-varying: {topology.time_varying})'
                  if topology.time_varying else ''))
  figure.savefig(path, format='png', dpi=100)


# ----------------------------------------------------------------------------
# Building.


def _check_num_nodes(spec: str, num_nodes: int, minimum: int) -> None:
  if num_nodes < minimum:
    raise SettingError('num_nodes', f'topology {spec!r} needs at least '
                       f'{minimum} nodes, got {num_nodes}.')


def _kind(spec: str) -> str:
  return 'file' if spec.startswith('file:') else re.split(r'[\s(]', spec)[0]


def _powers_of_two(num_nodes: int) -> list[int]:
  """2^k for k = 0 .. ceil(log2 N) - 1: every power of two below N."""
  return [2**k for k in range(max(num_nodes - 1, 0).bit_length())]


def _exponential_shifts(num_nodes: int) -> list[int]:
  """-1, +1, -2, +2, ..., each distinct node offset mod N once."""
  shifts, seen = [], set()
  for power in _powers_of_two(num_nodes):
    for shift in (-power, power):
      if shift % num_nodes not in seen:
        seen.add(shift % num_nodes)
        shifts.append(shift)
  return shifts


def ring_slots(num_nodes: int) -> np.ndarray:
  """`[N, 2]` neighbour ids of a ring in its slot order: i - 1, i + 1."""
  return _circulant_slots(num_nodes, [-1, 1])


def _circulant_slots(num_nodes: int, shifts: list[int]) -> np.ndarray:
  return (np.arange(num_nodes)[:, None] + np.asarray(shifts)) % num_nodes


def _torus_shape(spec: str, num_nodes: int) -> tuple[int, int]:
  """The most square rows x cols = N with rows <= cols and rows >= 3."""
  rows = max((r for r in range(3, math.isqrt(num_nodes) + 1)
              if num_nodes % r == 0), default=None)
  if rows is None:
    below = max((m for m in range(9, num_nodes) if _has_torus(m)), default=None)
    above = next(m for m in range(max(num_nodes + 1, 9), 4 * num_nodes + 10)
                 if _has_torus(m))
    near = f'{below} or {above}' if below else f'{above}'
    raise SettingError(
        'num_nodes', f'topology {spec!r} needs N = rows * cols with rows, '
        f'cols >= 3; N={num_nodes} has no such factorization. Use e.g. '
        f'N = {near}, or another topology.')
  return rows, num_nodes // rows


def _has_torus(num_nodes: int) -> bool:
  return any(num_nodes % r == 0 and num_nodes // r >= 3
             for r in range(3, math.isqrt(num_nodes) + 1))


def torus_slots(rows: int, cols: int) -> np.ndarray:
  """`[rows * cols, 4]` neighbour ids of a torus in its slot order: up,
  down, left, right (see `Topology`)."""
  r, c = np.divmod(np.arange(rows * cols), cols)
  return np.stack([((r - 1) % rows) * cols + c, ((r + 1) % rows) * cols + c,
                   r * cols + (c - 1) % cols, r * cols + (c + 1) % cols], 1)


def _from_graph(spec: str, graph: nx.Graph, slots: np.ndarray | None = None,
                grid: tuple[int, int] | None = None) -> Topology:
  """The arrays of an undirected graph on nodes 0 .. N - 1.

  `slots`, `[N, K]`, gives each node's neighbours in slot order; it must
  list exactly the graph's neighbours. Without it the order is by id.
  """
  n = graph.number_of_nodes()
  edges = np.array(sorted((min(a, b), max(a, b)) for a, b in graph.edges()),
                   np.int32).reshape(-1, 2)
  edge_id = {(int(a), int(b)): e for e, (a, b) in enumerate(edges)}
  if slots is None:
    lists = [sorted(graph.adj[i]) for i in range(n)]
  else:
    lists = [list(map(int, row)) for row in slots]
    for i, row in enumerate(lists):  # The slot formula matches networkx.
      assert sorted(row) == sorted(graph.adj[i]), (spec, i, row)
  width = max(max((len(row) for row in lists), default=0), 1)
  neighbours = np.tile(np.arange(n, dtype=np.int32)[:, None], (1, width))
  slot_edges = np.full((n, width), len(edges), np.int32)
  for i, row in enumerate(lists):
    neighbours[i, :len(row)] = row
    slot_edges[i, :len(row)] = [edge_id[min(i, j), max(i, j)] for j in row]
  return Topology(spec, n, edges, neighbours, slot_edges, None, grid)


def _one_peer_exponential(spec: str, num_nodes: int) -> Topology:
  union = _from_graph(spec, nx.circulant_graph(num_nodes,
                                               _powers_of_two(num_nodes)))
  edge_id = {tuple(map(int, e)): k for k, e in enumerate(union.edges)}
  peers = _circulant_slots(num_nodes,
                           [-p for p in _powers_of_two(num_nodes)])
  slot_edges = np.array(
      [[edge_id[min(i, j), max(i, j)] for j in row]
       for i, row in enumerate(peers)], np.int32)
  return union._replace(neighbours=peers.astype(np.int32),
                        slot_edges=slot_edges,
                        time_varying=ONE_PEER_EXPONENTIAL)


def _erdos_renyi(spec: str, argument: str, num_nodes: int,
                 seed: int) -> Topology:
  try:
    p = float(argument)
  except ValueError:
    p = math.nan
  if not 0.0 < p <= 1.0:
    raise SettingError('topology', f'erdos_renyi(p) needs an edge '
                       f'probability p in (0, 1], got {argument!r}.')
  graph = nx.gnp_random_graph(num_nodes, p, seed=seed)
  if not nx.is_connected(graph):
    threshold = math.log(num_nodes) / num_nodes
    raise SettingError(
        'topology', f'erdos_renyi(p={p:g}) over N={num_nodes} nodes with '
        f'seed {seed} is not connected, and gossip needs a connected graph. '
        f'Use a larger p: above ln(N)/N = {threshold:.3g} the graph is '
        f'connected with high probability; with this seed p = '
        f'{_connecting_p(num_nodes, p, seed):.3g} connects it.')
  return _from_graph(spec, graph)


def _connecting_p(num_nodes: int, p: float, seed: int) -> float:
  """About the smallest p (2 significant digits) that connects the seeded
  G(N, p).

  networkx's `gnp_random_graph` draws one uniform per node pair in a fixed
  order, so with one seed a larger p gives a supergraph and connectivity is
  monotone in p: a bisection between p (disconnected) and 1 finds it.
  """

  def connected(q):
    return q >= 1.0 or nx.is_connected(
        nx.gnp_random_graph(num_nodes, q, seed=seed))

  low, high = p, 1.0
  for _ in range(12):
    middle = (low + high) / 2
    low, high = (low, middle) if connected(middle) else (middle, high)
  digits = 1 - math.floor(math.log10(high))
  rounded = min(math.ceil(high * 10**digits) / 10**digits, 1.0)
  return rounded if connected(rounded) else high


def _barabasi_albert(spec: str, argument: str, num_nodes: int,
                     seed: int) -> Topology:
  m = int(argument) if re.fullmatch(r'\s*\d+\s*', argument) else None
  if m is None or not 1 <= m <= num_nodes - 1:
    raise SettingError(
        'topology', f'barabasi_albert(m) needs an integer m in [1, N - 1] = '
        f'[1, {num_nodes - 1}] (edges per new node), got {argument!r}.')
  return _from_graph(spec, nx.barabasi_albert_graph(num_nodes, m, seed=seed))


def _from_file(spec: str, path: str, num_nodes: int) -> Topology:
  if not os.path.isfile(path):
    raise SettingError('topology', f'topology {spec!r}: no edge list file at '
                       f'{path!r}; give the path of a file with one '
                       f"'i j' edge per line.")
  try:
    graph = nx.read_edgelist(path, nodetype=int)
  except (TypeError, ValueError, IndexError) as e:
    raise SettingError(
        'topology', f'topology {spec!r}: could not read {path!r} as an edge '
        f"list of integer node ids, one 'i j' pair per line ({e}).") from e
  nodes = sorted(graph.nodes)
  bad = [i for i in nodes if not 0 <= i < num_nodes]
  if bad:
    raise SettingError(
        'topology', f'topology {spec!r}: node ids must be in [0, '
        f'{num_nodes - 1}] for N={num_nodes} nodes; {path!r} has '
        f'{bad[:5]}.')
  if len(nodes) != num_nodes:
    missing = sorted(set(range(num_nodes)) - set(nodes))
    raise SettingError(
        'num_nodes', f'topology {spec!r}: {path!r} has edges at '
        f'{len(nodes)} nodes but N={num_nodes}; nodes {missing[:5]} have '
        f'no edge. Set the number of nodes to match the file, or give '
        f'every node an edge.')
  loops = list(nx.selfloop_edges(graph))
  if loops:
    raise SettingError('topology', f'topology {spec!r}: {path!r} has '
                       f'self-loops {loops[:5]}; remove them (a node always '
                       f'keeps its own value).')
  if not nx.is_connected(graph):
    parts = nx.number_connected_components(graph)
    raise SettingError(
        'topology', f'topology {spec!r}: the graph in {path!r} falls into '
        f'{parts} connected components, and gossip needs a connected '
        f'graph; add edges between them.')
  ordered = nx.Graph()
  ordered.add_nodes_from(range(num_nodes))
  ordered.add_edges_from(graph.edges)
  return _from_graph(spec, ordered)


def _graph(topology: Topology) -> nx.Graph:
  graph = nx.Graph()
  graph.add_nodes_from(range(topology.num_nodes))
  graph.add_edges_from(map(tuple, topology.edges.tolist()))
  return graph
