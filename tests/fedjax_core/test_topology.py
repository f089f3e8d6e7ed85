"""Gossip topologies and their mixing weights, by hand and against plain
numpy re-statements."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.channel import mixing_weights as mw
from fedjax_core.channel import topology as tp
from fedjax_core.errors import SettingError

KEY = jax.random.key(0)


def _matrix(topology, rule='metropolis', round_num=0, key=KEY, live=None,
            rate=0.0):
  """The round's dense mixing matrix (float64) and live edge count."""
  if live is None:
    live = np.ones(topology.num_nodes, bool)
  mixing, count = mw.round_mixing(topology, rule, round_num, key,
                                  jnp.asarray(live), rate)
  return np.asarray(mw.mixing_matrix(mixing), np.float64), int(count)


def _adjacency(topology):
  adj = np.zeros((topology.num_nodes,) * 2)
  for i, j in topology.edges:
    adj[i, j] = adj[j, i] = 1.0
  return adj


def _numpy_metropolis(adj):
  """Metropolis-Hastings weights of a 0/1 adjacency matrix, restated."""
  degree = adj.sum(1)
  w = adj / (1.0 + np.maximum(degree[:, None], degree[None, :]))
  return w + np.diag(1.0 - w.sum(1))


def _edge_file(tmp_path, lines, name='graph.txt'):
  path = tmp_path / name
  path.write_text('\n'.join(lines) + '\n')
  return f'file:{path}'


# A path with a branch: 0 - 1 - 2, 1 - 3 - 4. Degrees 1, 3, 1, 2, 1.
BRANCH = ['0 1', '1 2', '1 3', '3 4']


def test_ring_neighbour_order_and_circulant_metropolis_weights():
  ring = tp.build('ring', 5, seed=0)
  assert ring.neighbours.tolist() == [[4, 1], [0, 2], [1, 3], [2, 4], [3, 0]]
  assert ring.edges.tolist() == [[0, 1], [0, 4], [1, 2], [2, 3], [3, 4]]
  assert ring.time_varying is None and ring.grid is None
  mixing, count = mw.round_mixing(ring, 'metropolis', 0, KEY,
                                  jnp.ones(5, bool), 0.0)
  np.testing.assert_allclose(mixing.weights, np.full((5, 2), 1 / 3),
                             rtol=1e-6)
  np.testing.assert_allclose(mixing.self_weight, np.full(5, 1 / 3),
                             rtol=1e-6)
  third = 1 / 3
  circulant = np.array([[third, third, 0, 0, third],
                        [third, third, third, 0, 0],
                        [0, third, third, third, 0],
                        [0, 0, third, third, third],
                        [third, 0, 0, third, third]])
  w, _ = _matrix(ring)
  np.testing.assert_allclose(w, circulant, rtol=1e-6)
  np.testing.assert_allclose(w.sum(0), 1.0, rtol=1e-6)
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
  assert int(count) == 5


def test_torus_neighbour_order_up_down_left_right():
  torus = tp.build('torus', 9, seed=0)
  assert torus.grid == (3, 3)
  assert torus.neighbours[0].tolist() == [6, 3, 2, 1]
  assert torus.neighbours[4].tolist() == [1, 7, 3, 5]
  assert torus.neighbours[8].tolist() == [5, 2, 7, 6]
  assert len(torus.edges) == 18


def test_torus_picks_the_most_square_shape():
  torus = tp.build('torus', 12, seed=0)
  assert torus.grid == (3, 4)
  assert torus.neighbours[5].tolist() == [1, 9, 4, 6]  # node (1, 1).
  assert tp.build('torus', 16, seed=0).grid == (4, 4)
  assert tp.build('torus', 18, seed=0).grid == (3, 6)


def test_torus_without_a_factorization_is_refused():
  with pytest.raises(SettingError, match='rows, cols >= 3') as info:
    tp.build('torus', 10, seed=0)
  assert info.value.setting == 'num_nodes'
  assert '9 or 12' in str(info.value)


def test_metropolis_weights_of_unequal_degrees_by_hand(tmp_path):
  graph = tp.build(_edge_file(tmp_path, BRANCH), 5, seed=0)
  assert graph.edges.tolist() == [[0, 1], [1, 2], [1, 3], [3, 4]]
  w, count = _matrix(graph)
  expected = np.array([[3 / 4, 1 / 4, 0, 0, 0],
                       [1 / 4, 1 / 4, 1 / 4, 1 / 4, 0],
                       [0, 1 / 4, 3 / 4, 0, 0],
                       [0, 1 / 4, 0, 5 / 12, 1 / 3],
                       [0, 0, 0, 1 / 3, 2 / 3]])
  np.testing.assert_allclose(w, expected, rtol=1e-6)
  np.testing.assert_allclose(w.sum(0), 1.0, rtol=1e-6)
  assert count == 4


def test_uniform_weights_are_row_stochastic_by_hand(tmp_path):
  graph = tp.build(_edge_file(tmp_path, BRANCH), 5, seed=0)
  w, _ = _matrix(graph, 'uniform')
  expected = np.array([[1 / 2, 1 / 2, 0, 0, 0],
                       [1 / 4, 1 / 4, 1 / 4, 1 / 4, 0],
                       [0, 1 / 2, 1 / 2, 0, 0],
                       [0, 1 / 3, 0, 1 / 3, 1 / 3],
                       [0, 0, 0, 1 / 2, 1 / 2]])
  np.testing.assert_allclose(w, expected, rtol=1e-6)
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)


def test_slot_edges_name_each_slots_edge_and_pad_with_e():
  graph = tp.build('barabasi_albert(1)', 8, seed=3)
  e = len(graph.edges)
  assert graph.neighbours.shape[1] == int(np.bincount(graph.edges.ravel())
                                          .max())
  for i in range(graph.num_nodes):
    for j, edge in zip(graph.neighbours[i], graph.slot_edges[i]):
      if edge == e:
        assert j == i
      else:
        assert graph.edges[edge].tolist() == sorted([i, int(j)])
  assert (graph.slot_edges == e).any()  # A tree has unequal degrees.


def test_exponential_graph_edges_and_shift_order():
  graph = tp.build('exponential', 8, seed=0)
  expected = {tuple(sorted((i, (i + s) % 8))) for i in range(8)
              for s in (1, 2, 4)}
  assert {tuple(e) for e in graph.edges.tolist()} == expected
  assert len(graph.edges) == 20
  assert graph.neighbours[0].tolist() == [7, 1, 6, 2, 4]
  assert graph.neighbours[3].tolist() == [2, 4, 1, 5, 7]


def test_one_peer_exponential_pairs_of_round_t():
  graph = tp.build('one_peer_exponential', 8, seed=0)
  assert graph.time_varying == 'one_peer_exponential'
  assert graph.neighbours.shape == (8, 3)
  live = jnp.ones(8, bool)
  for t in range(7):
    mixing, count = mw.round_mixing(graph, 'metropolis', t, KEY, live, 0.0)
    shift = 2**(t % 3)
    np.testing.assert_array_equal(mixing.neighbours[:, 0],
                                  (np.arange(8) - shift) % 8)
    np.testing.assert_array_equal(mixing.weights, np.full((8, 1), 0.5))
    np.testing.assert_array_equal(mixing.self_weight, np.full(8, 0.5))
    w, _ = _matrix(graph, round_num=t)
    np.testing.assert_allclose(w.sum(0), 1.0)  # (I + P) / 2.
    assert int(count) == (4 if shift == 4 else 8)
  product = np.eye(8)
  for t in range(3):
    product = _matrix(graph, round_num=t)[0] @ product
  np.testing.assert_allclose(product, np.full((8, 8), 1 / 8), atol=1e-7)


def test_random_matching_pairs_each_node_at_most_once():
  graph = tp.build('random_matching', 7, seed=0)
  assert graph.time_varying == 'random_matching' and len(graph.edges) == 0
  mixing, count = mw.round_mixing(graph, 'metropolis', 0, KEY,
                                  jnp.ones(7, bool), 0.0)
  partner = np.asarray(mixing.neighbours[:, 0])
  np.testing.assert_array_equal(partner[partner], np.arange(7))
  assert (partner == np.arange(7)).sum() == 1  # N odd: one sits out.
  w, _ = _matrix(graph)
  np.testing.assert_array_equal(w, w.T)
  np.testing.assert_allclose(w.sum(1), 1.0)
  assert int(count) == 3
  again, _ = _matrix(graph)
  other, _ = _matrix(graph, key=jax.random.key(1))
  np.testing.assert_array_equal(w, again)
  assert not np.array_equal(w, other)


def test_random_graphs_are_reproducible_from_the_seed():
  first = tp.build('erdos_renyi(0.5)', 12, seed=4)
  again = tp.build('erdos_renyi(0.5)', 12, seed=4)
  other = tp.build('erdos_renyi(0.5)', 12, seed=5)
  np.testing.assert_array_equal(first.edges, again.edges)
  assert not np.array_equal(first.edges, other.edges)
  ba = tp.build('barabasi_albert(2)', 12, seed=4)
  np.testing.assert_array_equal(
      ba.edges, tp.build('barabasi_albert(2)', 12, seed=4).edges)
  assert len(ba.edges) == 2 * (12 - 2)


@pytest.mark.parametrize('rule', ['metropolis', 'uniform'])
def test_a_dead_node_is_cut_out_and_the_rest_renormalized(tmp_path, rule):
  graph = tp.build('erdos_renyi(0.5)', 8, seed=1)
  live = np.ones(8, bool)
  live[3] = False
  w, count = _matrix(graph, rule, live=live)
  np.testing.assert_array_equal(w[3], np.eye(8)[3])
  np.testing.assert_array_equal(np.delete(w[:, 3], 3), 0.0)
  adj = _adjacency(graph)
  adj[3, :] = adj[:, 3] = 0.0
  if rule == 'metropolis':
    expected = _numpy_metropolis(adj)
  else:
    expected = (adj + np.eye(8)) / (adj.sum(1, keepdims=True) + 1.0)
  np.testing.assert_allclose(w, expected, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
  assert count == int(adj.sum()) // 2


def test_a_dead_hub_by_hand(tmp_path):
  graph = tp.build(_edge_file(tmp_path, BRANCH), 5, seed=0)
  w, count = _matrix(graph, live=[True, False, True, True, True])
  expected = np.array([[1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0],
                       [0, 0, 0, 1 / 2, 1 / 2], [0, 0, 0, 1 / 2, 1 / 2]])
  np.testing.assert_allclose(w, expected)
  assert count == 1
  mixing, _ = mw.round_mixing(graph, 'metropolis', 0, KEY,
                              jnp.array([True, False, True, True, True]), 0.0)
  # Dead slots name the node itself, with weight 0.
  assert mixing.neighbours[0].tolist() == [0, 0, 0]


def test_link_failures_all_or_none():
  ring = tp.build('ring', 5, seed=0)
  w, count = _matrix(ring, rate=1.0)
  np.testing.assert_array_equal(w, np.eye(5))
  assert count == 0
  _, count = _matrix(ring, rate=0.0)
  assert count == len(ring.edges) == 5
  matching = tp.build('random_matching', 7, seed=0)
  w, count = _matrix(matching, rate=1.0)
  np.testing.assert_array_equal(w, np.eye(7))
  assert count == 0


def test_failed_links_fail_both_ways_and_the_rest_is_metropolis():
  graph = tp.build('complete', 6, seed=0)
  w, count = _matrix(graph, key=jax.random.key(7), rate=0.5)
  live = (w > 0) & ~np.eye(6, dtype=bool)
  np.testing.assert_array_equal(live, live.T)
  assert 0 < count < 15 and count == live.sum() // 2
  np.testing.assert_allclose(w, _numpy_metropolis(live.astype(float)),
                             rtol=1e-6)


def test_round_mixing_under_jit_matches_eager():
  traces = []
  for spec, rule in [('torus', 'uniform'),
                     ('one_peer_exponential', 'metropolis')]:
    graph = tp.build(spec, 9, seed=0)

    def mix(round_num, key, live, graph=graph, rule=rule):
      traces.append(spec)
      return mw.round_mixing(graph, rule, round_num, key, live, 0.3)

    jitted = jax.jit(mix)
    live = jnp.arange(9) != 4
    for t in range(3):
      key = jax.random.fold_in(KEY, t)
      eager = mw.round_mixing(graph, rule, t, key, live, 0.3)
      jax.tree.map(np.testing.assert_array_equal, jitted(t, key, live),
                   eager)
  assert len(traces) == 2  # One compile per topology, round traced.


def test_spectral_gap_of_ring_from_the_circulant_eigenvalues():
  eigenvalues = 1 / 3 + 2 / 3 * np.cos(2 * np.pi * np.arange(5) / 5)
  expected = 1.0 - np.sort(np.abs(eigenvalues))[-2]
  gap = mw.spectral_gap(tp.build('ring', 5, seed=0), 'metropolis')
  assert gap == pytest.approx(expected, rel=1e-5)


def test_spectral_gaps_of_complete_exponential_and_random_matching():
  complete = tp.build('complete', 6, seed=0)
  assert mw.spectral_gap(complete, 'metropolis') == pytest.approx(1.0)
  assert mw.spectral_gap(complete, 'uniform') == pytest.approx(1.0)
  one_peer = tp.build('one_peer_exponential', 8, seed=0)
  assert mw.spectral_gap(one_peer, 'metropolis') == pytest.approx(1.0)
  assert mw.spectral_gap(tp.build('random_matching', 8, seed=0),
                         'metropolis') is None


def test_describe_is_one_line():
  assert mw.describe(tp.build('ring', 5, seed=0), 'metropolis') == (
      'ring: N=5, 5 edges, max degree 2, spectral gap 0.461 (metropolis)')
  line = mw.describe(tp.build('random_matching', 4, seed=0), 'metropolis')
  assert 'spectral gap n/a' in line and '\n' not in line


@pytest.mark.parametrize('spec', ['torus', 'random_matching',
                                  'erdos_renyi(0.6)'])
def test_draw_writes_a_png(tmp_path, spec):
  path = tmp_path / 'graph.png'
  tp.draw(tp.build(spec, 9, seed=0), str(path))
  data = path.read_bytes()
  assert data.startswith(b'\x89PNG') and len(data) > 1000


def test_disconnected_erdos_renyi_is_refused_with_a_p_that_works():
  with pytest.raises(SettingError, match=r'erdos_renyi\(p=0.05\)') as info:
    tp.build('erdos_renyi(0.05)', 20, seed=0)
  assert info.value.setting == 'topology'
  assert 'N=20' in str(info.value) and 'ln(N)/N' in str(info.value)
  suggested = float(str(info.value).rsplit('p = ', 1)[1].split()[0])
  tp.build(f'erdos_renyi({suggested})', 20, seed=0)  # Connected.


def test_unknown_topology_lists_the_valid_ones():
  with pytest.raises(SettingError) as info:
    tp.build('hypercube', 8, seed=0)
  assert info.value.setting == 'topology'
  for spec in tp.SPECS:
    assert spec in str(info.value)


@pytest.mark.parametrize('spec,num_nodes,match', [
    ('erdos_renyi(0)', 8, r'\(0, 1\]'),
    ('erdos_renyi(1.5)', 8, r'\(0, 1\]'),
    ('erdos_renyi(x)', 8, r'\(0, 1\]'),
    ('erdos_renyi', 8, 'needs its parameter'),
    ('barabasi_albert(0)', 8, r'\[1, 7\]'),
    ('barabasi_albert(8)', 8, r'\[1, 7\]'),
    ('barabasi_albert(1.5)', 8, r'\[1, 7\]'),
    ('ring(3)', 8, 'unknown topology'),
    ('ring', 2, 'at least 3 nodes'),
    ('complete', 1, 'at least 2 nodes'),
])
def test_bad_parameters_name_the_valid_range(spec, num_nodes, match):
  with pytest.raises(SettingError, match=match):
    tp.build(spec, num_nodes, seed=0)


def test_bad_rule_and_failure_rate():
  ring = tp.build('ring', 4, seed=0)
  with pytest.raises(SettingError, match='metropolis, uniform'):
    mw.round_mixing(ring, 'max_degree', 0, KEY, jnp.ones(4, bool), 0.0)
  with pytest.raises(SettingError, match=r'\[0, 1\]') as info:
    mw.round_mixing(ring, 'uniform', 0, KEY, jnp.ones(4, bool), 1.5)
  assert info.value.setting == 'gossip.link_failure_rate'


def test_edge_list_errors(tmp_path):
  missing = tmp_path / 'nope.txt'
  with pytest.raises(SettingError, match=str(missing)):
    tp.build(f'file:{missing}', 5, seed=0)
  with pytest.raises(SettingError, match=r'\[0, 4\]'):
    tp.build(_edge_file(tmp_path, BRANCH + ['4 5']), 5, seed=0)
  with pytest.raises(SettingError, match='5 nodes but N=6') as info:
    tp.build(_edge_file(tmp_path, BRANCH), 6, seed=0)
  assert info.value.setting == 'num_nodes'
  with pytest.raises(SettingError, match='2 connected components'):
    tp.build(_edge_file(tmp_path, ['0 1', '2 3']), 4, seed=0)
  with pytest.raises(SettingError, match='integer node ids'):
    tp.build(_edge_file(tmp_path, ['a b']), 2, seed=0)
