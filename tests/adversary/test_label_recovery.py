"""Tests of label recovery from the last layer (iDLG and LLG-simple)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core import errors
from fedjax_core.adversary import inversion_objectives as objectives
from fedjax_core.adversary import label_recovery
from models import registry

_SHAPE = (8, 8, 1)


def _model(name):
  model = registry.get_model(name, _SHAPE, 10)
  return model, model.init(jax.random.key(0))


def _images(n, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, *_SHAPE))


@pytest.mark.parametrize('name', ['logreg', 'mlp'])
def test_single_example_label_from_gradient(name):
  model, params = _model(name)
  for label in (0, 3, 9):
    grads = objectives.observed_gradient(model.apply, params, _images(1),
                                         jnp.array([label]))
    assert label_recovery.recover_labels(grads, 10).tolist() == [label]


def test_single_example_label_from_fedavg_delta_flips_the_sign():
  model, params = _model('mlp')
  delta = objectives.fedavg_delta(model.apply, params, _images(1),
                                  jnp.array([6]), local_steps=3,
                                  local_lr=0.1, batch_size=1)
  assert label_recovery.recover_labels(delta, 10,
                                       kind='fedavg').tolist() == [6]
  # Read as a gradient, the delta's signs point at the wrong class.
  assert label_recovery.recover_labels(delta, 10).tolist() != [6]


def test_without_bias_the_kernel_row_sum_gives_the_label():
  model, params = _model('mlp')
  grads = objectives.observed_gradient(model.apply, params, _images(1),
                                       jnp.array([4]))
  del grads['params']['Dense_2']['bias']
  signal = label_recovery.label_signal(grads, 10)
  # Only the true class's entry is negative (ReLU features are >= 0).
  assert np.flatnonzero(np.asarray(signal) < 0).tolist() == [4]


def test_batch_of_distinct_labels_is_recovered():
  model, params = _model('mlp')
  labels = jnp.array([7, 2, 5, 0])
  grads = objectives.observed_gradient(model.apply, params, _images(4),
                                       labels)
  found = label_recovery.recover_labels(grads, 10, 4)
  assert sorted(found.tolist()) == [0, 2, 5, 7]


def test_batch_estimator_matches_hand_worked_signal():
  # Signal [-3, -1, 2, 0] for n = 5: classes 0 and 1 first; impact m =
  # -4 / 5 = -0.8; adjusted [-2.2, -0.2, 2, 0]; then greedy: 0 (-> -1.4),
  # 0 (-> -0.6), 0 (-> 0.2).
  observed = {'params': {'head': {'kernel': jnp.zeros((3, 4)),
                                  'bias': jnp.array([-3.0, -1.0, 2.0, 0.0])}}}
  found = label_recovery.recover_labels(observed, 4, 5)
  assert found.tolist() == [0, 1, 0, 0, 0]
  jitted = jax.jit(lambda o: label_recovery.recover_labels(o, 4, 2))
  assert jitted(observed).tolist() == [0, 1]


def test_head_is_found_by_width_or_named_by_regex():
  observed = {'params': {'a': {'kernel': jnp.zeros((3, 4)),
                               'bias': jnp.array([1.0, -1.0, 1.0, 1.0])},
                         'b': {'kernel': jnp.zeros((4, 4)),
                               'bias': jnp.array([-1.0, 1.0, 1.0, 1.0])}}}
  with pytest.raises(ValueError, match='2 Dense layers match'):
    label_recovery.recover_labels(observed, 4)
  assert label_recovery.recover_labels(
      observed, 4, head='^params/b/').tolist() == [0]
  head = registry.head_layers('mlp', _SHAPE, 10)
  _, params = _model('mlp')
  kernel, _ = label_recovery.find_dense_layer(params, layer=head)
  assert kernel.shape == (200, 10)


def test_unknown_message_kind_is_a_setting_error():
  _, params = _model('logreg')
  with pytest.raises(errors.SettingError, match='gradient'):
    label_recovery.recover_labels(params, 10, kind='delta')
