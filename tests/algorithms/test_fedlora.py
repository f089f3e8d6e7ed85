"""FedLoRA and FFA-LoRA through the whole engine against numpy.

The tiny problem's logistic regression (kernel W [3, 2], bias b) is the
frozen base; its kernel is adapted as W + s (B A)^T with A [r, 3], B [2, r].
Batch size 3 covers each client, so every local step is a full-batch step:
with G = dL/dW' at the adapted kernel W', dL/dA = s (G B)^T and
dL/dB = s G^T A^T (Hu et al. 2022). FedLoRA averages A and B separately;
FFA-LoRA (Sun et al. 2024) keeps A at its initialization and averages B.
"""

import dataclasses

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from algorithms import build_algorithm
from fedjax_core import ClientDPSettings, FederatedDataset
from fedjax_core import SecureAggregation
from fedjax_core import Simulation, SimulationConfig
from fedjax_core.toolkit import lora
from fedjax_core.toolkit.dp_sgd import DPSGDConfig
import interruptions
import models
import tiny_problem as tiny

RANK = 2
ALPHA = 3.0
SCALE = ALPHA / RANK
CLIENT_LR = 0.8
EPOCHS = 3
TARGET = ('params', 'Dense_0', 'kernel')


def _config():
  return lora.LoRAConfig(rank=RANK, alpha=ALPHA, targets='Dense_0/kernel')


def _factor(tree, name):
  return np.asarray(tree[name]['params']['Dense_0']['kernel'], np.float64)


def _simulation(name, num_rounds, server_optimizer=None):
  algorithm = build_algorithm(
      name, tiny.model().apply, num_clients=tiny.NUM_CLIENTS,
      client_lr=CLIENT_LR, server_optimizer=server_optimizer,
      server_lr=None if server_optimizer is None else 0.5, lora=_config())
  config = SimulationConfig(num_rounds=num_rounds, clients_per_round=2,
                            batch_size=3, local_epochs=EPOCHS, eval_every=0,
                            loop='scan', progress=False)
  return algorithm, Simulation(algorithm, tiny.model(), tiny.dataset(),
                               config)


def _adapters(state):
  """The server's A and B (FFA-LoRA's A from the frozen part), float64."""
  factors = {**state.frozen.value, **state.model.params}
  return _factor(factors, 'a'), _factor(factors, 'b')


def _np_client(w, bias, a, b, client, train_a):
  """EPOCHS full-batch local SGD steps of one client's factors."""
  for _ in range(EPOCHS):
    g, _ = tiny.grad(w + SCALE * (b @ a).T, bias, client)
    grad_a, grad_b = SCALE * (g @ b).T, SCALE * g.T @ a.T
    a, b = (a - CLIENT_LR * grad_a if train_a else a), b - CLIENT_LR * grad_b
  return a, b


def _np_round(w, bias, a, b, train_a):
  """One round of both clients: their factors and example weights."""
  clients = [_np_client(w, bias, a, b, i, train_a)
             for i in tiny.cohort(0, 2)]
  weights = np.array([len(tiny.CLIENTS[i]) for i in tiny.cohort(0, 2)],
                     np.float64)
  return clients, weights / weights.sum()


def _np_run(w, bias, a, b, train_a, rounds, server='sgd'):
  """`rounds` rounds; the server applies -mean delta to SGD (lr 1) or to
  SGD with momentum 0.9 (lr 0.5), for the trained factors."""
  momentum = [np.zeros_like(a), np.zeros_like(b)]
  for _ in range(rounds):
    clients, weights = _np_round(w, bias, a, b, train_a)
    deltas = [sum(wt * (c[k] - (a, b)[k]) for wt, c in zip(weights, clients))
              for k in range(2)]
    if server == 'sgd':
      a, b = a + deltas[0], b + deltas[1]
    else:  # optax trace: m <- g + 0.9 m with g = -delta; x <- x - lr m.
      momentum = [-d + 0.9 * m for d, m in zip(deltas, momentum)]
      a, b = a - 0.5 * momentum[0], b - 0.5 * momentum[1]
  return a, b


@pytest.mark.parametrize('name, train_a', [('fedlora', True),
                                           ('ffa_lora', False)])
@pytest.mark.parametrize('server', ['sgd', 'momentum'])
def test_matches_numpy(name, train_a, server):
  _, sim = _simulation(name, 3, None if server == 'sgd' else 'momentum')
  w, bias = tiny.as_numpy(sim.server_state.frozen.value['base'])
  a0, b0 = _adapters(sim.server_state)
  np.testing.assert_array_equal(b0, 0.0)
  sim.run()
  a, b = _adapters(sim.server_state)
  want_a, want_b = _np_run(w, bias, a0, b0, train_a, 3, server)
  np.testing.assert_allclose(a, want_a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(b, want_b, rtol=1e-5, atol=1e-6)
  assert np.abs(b).max() > 0.05  # B moved, so the comparison means something.
  if train_a:
    assert np.abs(a - a0).max() > 1e-3
  else:
    np.testing.assert_array_equal(a, a0)  # Bit for bit.


@pytest.mark.parametrize('name', ['fedlora', 'ffa_lora'])
def test_base_never_changes_and_is_evaluated_merged(name):
  algorithm, sim = _simulation(name, 2)
  base = jax.tree.map(np.array, sim.server_state.frozen.value['base'])
  sim.run()
  jax.tree.map(np.testing.assert_array_equal,
               sim.server_state.frozen.value['base'], base)
  a, b = _adapters(sim.server_state)
  full = algorithm.evaluated_params(sim.server_state)['params']['Dense_0']
  np.testing.assert_allclose(full['kernel'],
                             base['params']['Dense_0']['kernel']
                             + SCALE * (b @ a).T, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(full['bias'],
                                base['params']['Dense_0']['bias'])


def _merged_kernels_after_one_round(name):
  """The engine's adapted kernel after round 1, numpy's weighted mean of
  the clients' adapted kernels, and numpy's mean(B) mean(A) - mean(BA)."""
  algorithm, sim = _simulation(name, 1)
  w, bias = tiny.as_numpy(sim.server_state.frozen.value['base'])
  a0, b0 = _adapters(sim.server_state)
  record = sim.run_round()
  kernel = algorithm.evaluated_params(sim.server_state)['params'][
      'Dense_0']['kernel']
  clients, weights = _np_round(w, bias, a0, b0, train_a=name == 'fedlora')
  client_kernels = [w + SCALE * (cb @ ca).T for ca, cb in clients]
  mean_kernel = sum(wt * k for wt, k in zip(weights, client_kernels))
  mean_a = sum(wt * ca for wt, (ca, _) in zip(weights, clients))
  mean_b = sum(wt * cb for wt, (_, cb) in zip(weights, clients))
  mean_ba = sum(wt * cb @ ca for wt, (ca, cb) in zip(weights, clients))
  return np.asarray(kernel, np.float64), mean_kernel, (
      mean_b @ mean_a - mean_ba), mean_ba - b0 @ a0, record


def test_ffa_lora_aggregation_is_the_mean_of_the_clients_models():
  kernel, mean_kernel, _, change, record = _merged_kernels_after_one_round(
      'ffa_lora')
  assert np.abs(change).max() > 1e-2  # The clients moved.
  np.testing.assert_allclose(kernel, mean_kernel, rtol=0, atol=1e-6)
  assert 'lora_aggregation_error' not in record


def test_fedlora_aggregation_misses_the_mean_by_its_reported_error():
  kernel, mean_kernel, error, change, record = (
      _merged_kernels_after_one_round('fedlora'))
  # mean(B) mean(A) differs from mean(BA) by far more than float rounding,
  # and the server's model misses the clients' mean by exactly that.
  assert np.linalg.norm(error) > 1e-3
  np.testing.assert_allclose(kernel - mean_kernel, SCALE * error.T,
                             rtol=1e-3, atol=1e-6)
  np.testing.assert_allclose(record['lora_aggregation_error'],
                             SCALE * np.linalg.norm(error), rtol=1e-4)
  np.testing.assert_allclose(record['lora_aggregation_error_rel'],
                             np.linalg.norm(error) / np.linalg.norm(change),
                             rtol=1e-4)


@pytest.mark.parametrize('name, trainable', [
    ('fedlora', RANK * 3 + 2 * RANK), ('ffa_lora', 2 * RANK)])
def test_metrics_count_trainable_parameters_and_bytes(name, trainable):
  _, sim = _simulation(name, 1)
  record = sim.run_round()
  assert record['trainable_params'] == trainable
  # The frozen base (3 x 2 + 2), and FFA-LoRA's A.
  frozen = 8 + (RANK * 3 if name == 'ffa_lora' else 0)
  assert record['frozen_params'] == frozen
  assert record['bytes_up'] == 4 * trainable
  assert record['bytes_down'] == 4 * trainable


# The engine's handling of the frozen base.


def _run_with_workdir(name, workdir, num_rounds, **config):
  algorithm, sim = _simulation(name, num_rounds)
  sim = Simulation(algorithm, tiny.model(), tiny.dataset(),
                   dataclasses.replace(sim.config, workdir=str(workdir),
                                       checkpoint_every=1, **config))
  return sim


@pytest.mark.parametrize('name', ['fedlora', 'ffa_lora'])
def test_checkpoints_hold_the_adapters_only(name, tmp_path):
  sim = _run_with_workdir(name, tmp_path, 2)
  sim.run()
  manager = ocp.CheckpointManager(str(tmp_path / 'checkpoints'))
  saved = manager.restore(2, args=ocp.args.StandardRestore())['server']
  manager.close()
  assert jax.tree.leaves(saved['frozen']) == []
  jax.tree.map(np.testing.assert_array_equal, saved['model']['params'],
               sim.server_state.model.params)
  assert sum(np.size(x) for x in jax.tree.leaves(saved)) == (
      optax.tree.size(sim.server_state.model.params) + 1)  # + round.


@pytest.mark.slow
@pytest.mark.parametrize('name', ['fedlora', 'ffa_lora'])
def test_resume_from_adapter_checkpoints_is_bit_identical(name, tmp_path):
  whole = _run_with_workdir(name, tmp_path / 'whole', 4)
  whole.run()
  interrupted = _run_with_workdir(name, tmp_path / 'resumed', 4)
  interruptions.fail_at_round(interrupted, 3, KeyboardInterrupt())
  with pytest.raises(KeyboardInterrupt):
    interrupted.run()
  resumed = _run_with_workdir(name, tmp_path / 'resumed', 4)
  resumed.run()
  assert resumed.completed_rounds == 4
  jax.tree.map(np.testing.assert_array_equal, resumed.server_state,
               whole.server_state)


def _output_shapes(jaxpr):
  """The shapes of every value a jaxpr and its sub-jaxprs compute."""
  for eqn in jaxpr.eqns:
    for var in eqn.outvars:
      yield tuple(getattr(var.aval, 'shape', ()))
    for param in eqn.params.values():
      for sub in param if isinstance(param, (list, tuple)) else [param]:
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          yield from _output_shapes(inner)


@pytest.mark.slow
def test_the_frozen_base_is_never_copied_per_client():
  """Only the adapted kernel is merged per client; the untargeted layer
  [7, 2] never gets a client axis, even through the step guard that keeps
  the local state of padding-only steps."""
  model = models.Model(*(lambda m: (
      lambda key: m.init(key, np.zeros((1, 3), np.float32)), m.apply))(
          models.MLP(num_classes=2, hidden_sizes=(7,))))
  algorithm = build_algorithm('fedlora', model.apply, num_clients=2,
                              lora=lora.LoRAConfig(rank=1,
                                                   targets='Dense_0'))
  config = SimulationConfig(num_rounds=1, clients_per_round=2, batch_size=2,
                            local_epochs=1, eval_every=0, progress=False,
                            loop='scan')
  sim = Simulation(algorithm, model, tiny.dataset(), config)
  prepared = sim.prepare_round()
  jaxpr = jax.make_jaxpr(sim.round_fn.body)(
      sim.server_state, prepared.cohort_state, sim.aggregator_state,
      sim.dataset.train_x, sim.dataset.train_y, prepared.inputs,
      jax.random.key(0))
  shapes = set(_output_shapes(jaxpr.jaxpr))
  assert (2, 3, 7) in shapes  # The merged kernel, per client.
  assert (2, 7, 2) not in shapes


@pytest.mark.slow
def test_ffa_lora_composes_with_secure_aggregation():
  """Secure aggregation's masked fixed-point sum gives plain FFA-LoRA's
  adapters to its quantization step."""
  _, plain = _simulation('ffa_lora', 2)
  plain.run()
  algorithm, sim = _simulation('ffa_lora', 2)
  secure = Simulation(algorithm, tiny.model(), tiny.dataset(),
                      dataclasses.replace(
                          sim.config, secure_aggregation=SecureAggregation(
                              clip=4.0)))
  secure.run()
  _, b = _adapters(secure.server_state)
  _, want = _adapters(plain.server_state)
  np.testing.assert_allclose(b, want, atol=1e-5)
  assert not np.array_equal(b, want)  # It did go through the masked sum.


def test_fedlora_composes_with_client_level_dp():
  """DP-FedAvg without noise and with a clip no update reaches is the
  uniform mean of the clients' factors (fixed denominator = cohort)."""
  algorithm, sim = _simulation('fedlora', 2)
  private = Simulation(
      algorithm, tiny.model(), tiny.dataset(), dataclasses.replace(
          sim.config, client_dp=ClientDPSettings(clip_norm=100.0,
                                                 noise_multiplier=0.0)))
  w, bias = tiny.as_numpy(private.server_state.frozen.value['base'])
  a, b = _adapters(private.server_state)
  for _ in range(2):
    clients, _ = _np_round(w, bias, a, b, train_a=True)
    a = np.mean([c[0] for c in clients], axis=0)
    b = np.mean([c[1] for c in clients], axis=0)
  summary = private.run()
  got_a, got_b = _adapters(private.server_state)
  np.testing.assert_allclose(got_a, a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_b, b, rtol=1e-5, atol=1e-6)
  assert summary['epsilon'] == float('inf')


@pytest.mark.slow
def test_ffa_lora_fine_tunes_the_vit_attention_only():
  """On the ViT, only the query and value kernels of each block change."""
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(8, 8, 8, 1)).astype(np.float32)
  labels = np.array([0, 1] * 4, np.int32)
  data = FederatedDataset(name='images', train_x=images,
                               train_y=labels,
                               client_indices=(np.arange(4),
                                               np.arange(4, 8)),
                               test_x=images, test_y=labels, num_classes=2)
  vit = models.ViT(num_classes=2, patch_size=4, d_model=16, num_layers=2,
                   num_heads=2, mlp_dim=16)
  model = models.Model(lambda key: vit.init(key, images[:1]), vit.apply)
  algorithm = build_algorithm('ffa_lora', model.apply, num_clients=2,
                              client_lr=0.5, lora=lora.LoRAConfig(rank=2))
  sim = Simulation(algorithm, model, data, SimulationConfig(
      num_rounds=1, clients_per_round=2, batch_size=4, local_epochs=1,
      eval_every=0, progress=False))
  base = jax.tree.map(np.array, sim.server_state.frozen.value['base'])
  sim.run()
  tuned = algorithm.evaluated_params(sim.server_state)
  changed = {'/'.join(k.key for k in p) for p, leaf in
             jax.tree_util.tree_flatten_with_path(tuned)[0]
             if not np.array_equal(leaf, _leaf(base, p))}
  assert changed == {f'params/block_{i}/attention/{name}/kernel'
                     for i in range(2) for name in ('query', 'value')}


def _leaf(tree, path):
  for key in path:
    tree = tree[key.key]
  return tree


@pytest.mark.slow
def test_ffa_lora_composes_with_dp_sgd():
  """Local DP-SGD (noise 0, an active clip) on B against numpy: each
  example's gradient of B, s G_e^T A^T with G_e = x_e (p_e - y_e)^T, is
  clipped to C, and the sum is divided by the padded batch size 3."""
  clip = 0.05
  algorithm = build_algorithm(
      'ffa_lora', tiny.model().apply, num_clients=2, client_lr=CLIENT_LR,
      lora=_config(), dp_sgd=DPSGDConfig(clip, 0.0))
  sim = Simulation(algorithm, tiny.model(), tiny.dataset(), SimulationConfig(
      num_rounds=1, clients_per_round=2, batch_size=3, local_epochs=EPOCHS,
      eval_every=0, progress=False))
  w, bias = tiny.as_numpy(sim.server_state.frozen.value['base'])
  a, b0 = _adapters(sim.server_state)
  sim.run()
  clients, weights = [], []
  for i in tiny.cohort(0, 2):
    b = b0.copy()
    for _ in range(EPOCHS):
      total = np.zeros_like(b)
      for row in tiny.CLIENTS[i]:
        x = tiny.X[row].astype(np.float64)
        z = x @ (w + SCALE * (b @ a).T) + bias
        p = np.exp(z - z.max())
        p /= p.sum()
        grad_b = SCALE * np.outer(x, p - np.eye(2)[tiny.Y[row]]).T @ a.T
        total += grad_b * min(1.0, clip / np.linalg.norm(grad_b))
      b = b - CLIENT_LR * total / 3
    clients.append(b)
    weights.append(len(tiny.CLIENTS[i]))
  want = sum(wt * c for wt, c in zip(weights, clients)) / sum(weights)
  _, got = _adapters(sim.server_state)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  # The clip was active: plain FFA-LoRA moves B elsewhere.
  _, plain = _simulation('ffa_lora', 1)
  plain.run()
  assert np.abs(_adapters(plain.server_state)[1] - want).max() > 1e-3
