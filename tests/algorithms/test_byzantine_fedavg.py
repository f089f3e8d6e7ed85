"""Robust aggregation, attacks and compression through the whole engine,
against numpy re-statements of the rules on a five-client problem.

Every client holds one example of the tiny problem, so one local epoch is one
full-batch gradient step and FedAvg's weights are all 1. The engine draws
the Byzantine clients from its round key; the tests do not re-derive that
draw but check that the engine's model equals the numpy rule's for exactly
one choice of the attacker (with one Byzantine client of five, every choice
gives a different model).
"""

import dataclasses
import itertools

import numpy as np
import pytest

from algorithms import build_algorithm
from fedjax_core import FederatedDataset, Simulation, SimulationConfig
from fedjax_core.channel import aggregation
from fedjax_core.channel import attacks
from fedjax_core.channel import privacy
from fedjax_core.data import sampling
from fedjax_core.channel import uplink
import tiny_problem as tiny

LR = 0.5
NUM_CLIENTS = 5
# The tiny problem's inputs, with no two features of one example equal in
# magnitude (top-k must have no ties to choose from).
X = tiny.X.copy()
X[0, 2], X[3] = -1.2, [0.7, 0.3, -0.9]


def _dataset():
  return FederatedDataset(
      name='tiny5', train_x=X, train_y=tiny.Y,
      client_indices=tuple(np.array([i]) for i in range(NUM_CLIENTS)),
      test_x=X, test_y=tiny.Y, num_classes=2)


def _simulation(clients_per_round=NUM_CLIENTS, num_rounds=3, **config):
  algorithm = build_algorithm('fedavg', tiny.model().apply,
                              num_clients=NUM_CLIENTS, client_lr=LR)
  settings = SimulationConfig(num_rounds=num_rounds,
                              clients_per_round=clients_per_round,
                              batch_size=1, local_epochs=1, eval_every=0,
                              progress=False, **config)
  return Simulation(algorithm, tiny.model(), _dataset(), settings)


def _params(sim):
  return tiny.flat(*tiny.as_numpy(sim.server_state.params))


def _delta(theta, client, flip=False):
  """One gradient step of client `client` (one example) from theta."""
  w, b = theta[:6].reshape(3, 2), theta[6:]
  x, y = X[client].astype(np.float64), tiny.Y[client]
  if flip:
    y = 1 - y
  z = x @ w + b
  p = np.exp(z - z.max())
  p /= p.sum()
  d = p - np.eye(2)[y]
  return -LR * np.concatenate([np.outer(x, d).ravel(), d])


def _matching_attackers(sim, next_x):
  """Runs one round; returns the attackers b for which the numpy model
  `next_x(x, b)` equals the engine's."""
  x = _params(sim)
  record = sim.run_round()
  assert record['byzantine_clients'] == 1
  engine = _params(sim)
  return [b for b in range(NUM_CLIENTS)
          if np.allclose(engine, next_x(x, b), rtol=1e-5, atol=1e-6)]


def _top(v, k):
  """Top-k of v in numpy: the k largest magnitudes (stable order on ties),
  zeros elsewhere."""
  out = np.zeros_like(v)
  keep = np.argsort(-np.abs(v), kind='stable')[:k]
  out[keep] = v[keep]
  return out


def _robust_next_x(rule, attack):
  """x -> the numpy rule's next model when client b is the attacker."""
  def next_x(x, b):
    deltas = np.stack([_delta(x, i) for i in range(NUM_CLIENTS)])
    if attack == 'sign_flip':
      deltas[b] = -deltas[b]
    elif attack == 'ipm':
      deltas[b] = -2.0 * np.delete(deltas, b, axis=0).mean(0)
    else:  # Gaussian noise of std 5: far from every honest update.
      deltas[b] = 1e3
    if rule == 'median':
      return x + np.median(deltas, axis=0)
    if rule == 'trimmed_mean':
      return x + np.sort(deltas, axis=0)[1:-1].mean(0)
    dist = ((deltas[:, None] - deltas[None]) ** 2).sum(-1)
    scores = [np.sort(np.delete(row, i))[:NUM_CLIENTS - 3].sum()
              for i, row in enumerate(dist)]
    return x + deltas[int(np.argmin(scores))]
  return next_x


@pytest.mark.parametrize('rule,attack', [
    ('median', 'sign_flip'), ('trimmed_mean', 'ipm')])
def test_robust_rule_under_attack_equals_numpy_for_one_attacker(rule, attack):
  sim = _simulation(robust=aggregation.RobustAggregation(rule,
                                                         num_byzantine=1),
                    attack=attacks.Attack(attack, fraction=0.2,
                                          ipm_epsilon=2.0))
  for _ in range(2):
    assert len(_matching_attackers(sim, _robust_next_x(rule, attack))) == 1


def test_krum_selects_an_honest_update_under_gaussian_noise():
  """Whichever client sends noise of std 5, Krum (f = 1, n = 5) must pick
  the honest update numpy's Krum picks; several attackers can lead to the
  same pick, so at least one must match."""
  sim = _simulation(robust=aggregation.RobustAggregation('krum',
                                                         num_byzantine=1),
                    attack=attacks.Attack('gaussian', fraction=0.2,
                                          stddev=5.0))
  for _ in range(2):
    assert _matching_attackers(sim, _robust_next_x('krum', 'gaussian'))


def test_label_flipping_poisons_one_clients_local_training():
  sim = _simulation(attack=attacks.Attack('label_flip', fraction=0.2))

  def next_x(x, b):
    return x + np.mean([_delta(x, i, flip=i == b)
                        for i in range(NUM_CLIENTS)], axis=0)

  for _ in range(2):
    assert len(_matching_attackers(sim, next_x)) == 1


def test_alie_uses_only_the_attackers_own_updates():
  """Two attackers of five send mu - z sigma of their own two updates; the
  server takes the mean."""
  sim = _simulation(attack=attacks.Attack('alie', fraction=0.4, alie_z=1.5))
  x = _params(sim)
  sim.run_round()
  engine = _params(sim)
  matches = []
  for pair in itertools.combinations(range(NUM_CLIENTS), 2):
    deltas = np.stack([_delta(x, i) for i in range(NUM_CLIENTS)])
    own = deltas[list(pair)]
    deltas[list(pair)] = own.mean(0) - 1.5 * own.std(0)
    if np.allclose(engine, x + deltas.mean(0), rtol=1e-5, atol=1e-6):
      matches.append(pair)
  assert len(matches) == 1


def test_monna_sends_client_momentum_and_averages_nearest_neighbours():
  """MoNNA: m_i <- beta m_i + (1 - beta) delta_i (m_i = delta_i the first
  time); the server averages the n - f momenta nearest its previous
  aggregate (0 in round 1). Clients 0-4, 4 a round, so some rounds meet a
  client's momentum for the first time and some do not."""
  beta, f = 0.5, 1
  sim = _simulation(clients_per_round=4, robust=aggregation.RobustAggregation(
      'monna', num_byzantine=f, momentum=beta))
  x, center = _params(sim), np.zeros(8)
  momentum = {}
  for t in range(3):
    sent = []
    for i in sampling.sample_clients(0, t, NUM_CLIENTS, 4):
      d = _delta(x, i)
      momentum[i] = d if i not in momentum else beta * momentum[i] + (
          1 - beta) * d
      sent.append(momentum[i])
    sent = np.stack(sent)
    nearest = np.argsort(((sent - center) ** 2).sum(1))[:4 - f]
    center = sent[nearest].mean(0)
    x = x + center
    sim.run_round()
    np.testing.assert_allclose(_params(sim), x, rtol=1e-5, atol=1e-6)
  assert len(momentum) == NUM_CLIENTS  # Every client met, some twice.


def test_centered_clipping_starts_from_the_previous_aggregate():
  radius = 0.05
  sim = _simulation(robust=aggregation.RobustAggregation(
      'centered_clip', num_byzantine=1, clip_radius=radius))
  x, center = _params(sim), np.zeros(8)
  for _ in range(3):
    deltas = np.stack([_delta(x, i) for i in range(NUM_CLIENTS)])
    diffs = deltas - center
    norms = np.linalg.norm(diffs, axis=1)
    center = center + (diffs * np.minimum(1, radius / norms)[:, None]).mean(0)
    x = x + center
    sim.run_round()
    np.testing.assert_allclose(_params(sim), x, rtol=1e-5, atol=1e-6)
    assert np.all(norms > radius)  # Clipping was active.


def test_topk_error_feedback_through_the_engine():
  """Top-k of each layer (k = ceil(0.6 d): 4 of the kernel's 6, both
  biases) with a residual per client kept across rounds in the store. The
  two-class gradients come in +- pairs of equal magnitude, so k keeps whole
  pairs for the choice to be well defined."""
  settings = uplink.Uplink('topk', fraction=0.6)
  sim = _simulation(clients_per_round=NUM_CLIENTS, uplink=settings)
  x = _params(sim)
  residual = np.zeros((NUM_CLIENTS, 8))

  for _ in range(3):
    sent = []
    for i in range(NUM_CLIENTS):
      corrected = _delta(x, i) + residual[i]
      decoded = np.concatenate([_top(corrected[:6], 4), _top(corrected[6:], 2)])
      residual[i] = corrected - decoded
      sent.append(decoded)
    x = x + np.mean(sent, axis=0)
    record = sim.run_round()
    np.testing.assert_allclose(_params(sim), x, rtol=1e-5, atol=1e-6)
  stored = sim.store.stacked.channel[0]['params']['Dense_0']
  np.testing.assert_allclose(stored['kernel'].reshape(NUM_CLIENTS, 6),
                             residual[:, :6], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(stored['bias'], residual[:, 6:], rtol=1e-5,
                             atol=1e-6)
  assert record['bytes_down'] == 4 * 8  # The float32 model.
  assert record['bytes_up'] < 4 * 8
  assert record['compression_ratio'] == 32 / record['bytes_up']


def test_compressed_broadcast_feeds_the_clients_and_carries_the_rest():
  """The clients hold b (from the initial model); each round the server
  sends top-k(x - b) per layer, b += it, the clients train from b, and the
  server adds their mean update to its own x."""
  sim = _simulation(downlink=uplink.Uplink('topk', fraction=0.6))
  x = _params(sim)
  broadcast = x.copy()

  for _ in range(3):
    change = x - broadcast
    broadcast = broadcast + np.concatenate([_top(change[:6], 4),
                                            _top(change[6:], 2)])
    x = x + np.mean([_delta(broadcast, i) for i in range(NUM_CLIENTS)], 0)
    record = sim.run_round()
    np.testing.assert_allclose(_params(sim), x, rtol=1e-5, atol=1e-6)
  assert not np.allclose(broadcast, x)  # The clients lag the server.
  # Kernel: 4 values of 32 bits and 4 indices of 3 bits; bias: 2 and 2 x 1.
  assert record['bytes_down'] == 18 + 9


def test_uncompressed_bytes_are_the_float32_message():
  record = _simulation().run_round()
  assert record['bytes_up'] == record['bytes_down'] == 32
  assert record['compression_ratio'] == 1.0
  assert 'byzantine_clients' not in record


@pytest.mark.slow
def test_secure_aggregation_uploads_its_masked_words():
  """8 message words and the weight's word of 16 bits each."""
  record = _simulation(secure_aggregation=aggregation.SecureAggregation(
      bits=16, clip=1.0)).run_round()
  assert record['bytes_up'] == (8 + 1) * 16 / 8
  assert record['compression_ratio'] == 32 / 18


@pytest.mark.slow
def test_compressed_run_resumes_bit_identically(tmp_path):
  """Both the clients' residuals and the broadcast model resume."""
  settings = dict(uplink=uplink.Uplink('sign'),
                  downlink=uplink.Uplink('qsgd', levels=2))
  straight = _simulation(**settings)
  straight.run()
  _simulation(num_rounds=2, workdir=str(tmp_path), checkpoint_every=1,
              **settings).run()
  resumed = _simulation(workdir=str(tmp_path), checkpoint_every=1,
                        **settings)
  resumed.run()
  assert resumed.completed_rounds == 3
  np.testing.assert_array_equal(_params(resumed), _params(straight))
  np.testing.assert_array_equal(
      resumed.store.stacked.channel[0]['params']['Dense_0']['kernel'],
      straight.store.stacked.channel[0]['params']['Dense_0']['kernel'])


@pytest.mark.parametrize('config,setting,message', [
    (dict(robust=aggregation.RobustAggregation('krum', num_byzantine=1),
          clients_per_round=4), 'robust.num_byzantine',
     'needs at least 5 clients a round, got 4'),
    (dict(robust=aggregation.RobustAggregation('multi_krum', num_byzantine=1,
                                               num_selected=6)),
     'robust.num_selected', r'num_selected .* must be in \[1, 5\].*got 6'),
    (dict(robust=aggregation.RobustAggregation('median'),
              client_dp=privacy.ClientDPSettings(clip_norm=1.0,
                                                 noise_multiplier=1.0)),
     'robust.rule', 'bounded sensitivity'),
    (dict(robust=aggregation.RobustAggregation('median'),
          secure_aggregation=aggregation.SecureAggregation()),
     'robust', 'in the clear'),
])
def test_bad_combinations_are_refused_before_running(config, setting,
                                                     message):
  with pytest.raises(ValueError, match=message) as error:
    _simulation(**config)
  assert error.value.setting == setting


@pytest.mark.parametrize('make,setting,message', [
    (lambda: aggregation.RobustAggregation('centered_clip', clip_radius=0.0),
     'robust.clip_radius', 'clip_radius must be positive, got 0.0'),
    (lambda: aggregation.RobustAggregation('centered_clip', clip_iters=0),
     'robust.clip_iters', 'clip_iters must be >= 1, got 0'),
    (lambda: aggregation.RobustAggregation('median', num_byzantine=-1),
     'robust.num_byzantine', 'num_byzantine .* must be >= 0, got -1'),
    (lambda: aggregation.RobustAggregation('geometric_median', rfa_iters=0),
     'robust.rfa_iters', 'rfa_iters must be >= 1, got 0'),
    (lambda: aggregation.RobustAggregation('mean'), 'robust.nnm',
     'not a robust rule; turn on nnm'),
    (lambda: dataclasses.replace(aggregation.RobustAggregation('median'),
                                 rule='mode'),
     'robust.rule', "Unknown robust rule 'mode'; valid"),
    (lambda: aggregation.SecureAggregation(bits=40),
     'secure_aggregation.bits', r'bits must be in \[2, 32\]'),
    (lambda: aggregation.SecureAggregation(dropout_fraction=1.0),
     'secure_aggregation.dropout_fraction',
     r'dropout_fraction must be in \[0, 1\)'),
])
def test_robust_settings_name_the_bad_value(make, setting, message):
  with pytest.raises(ValueError, match=message) as error:
    make()
  assert error.value.setting == setting
  assert '--' not in str(error.value)
