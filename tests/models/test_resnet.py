"""Tests for `ResNet18GN`, FL-Simulator's GroupNorm ResNet-18."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from models import get_model
from models.resnet import ResNet18GN

_CIFAR = (32, 32, 3)
_NUM_CLASSES = 10
_BATCH = 2


def _hand_count(in_channels, num_classes):
  """ResNet-18's parameter count from its layer shapes, worked out by hand.

  Bias-free convolutions (k * k * cin * cout), a GroupNorm scale and bias
  (2 * channels) after each, and a linear layer with bias.
  """
  def conv(k, cin, cout):
    return k * k * cin * cout

  def norm(channels):
    return 2 * channels

  total = conv(7, in_channels, 64) + norm(64)  # Stem.
  cin = 64
  for cout in (64, 128, 256, 512):
    for block in range(2):
      total += conv(3, cin, cout) + norm(cout)
      total += conv(3, cout, cout) + norm(cout)
      if block == 0 and cin != cout:  # Projection shortcut.
        total += conv(1, cin, cout) + norm(cout)
      cin = cout
  return total + 512 * num_classes + num_classes


def _abstract_params(shape, num_classes=_NUM_CLASSES):
  """The model's variables as shapes, without running `init`."""
  return jax.eval_shape(get_model('resnet18_gn', shape, num_classes).init,
                        jax.random.PRNGKey(0))


def _paths(params):
  """Maps 'params/layer1_0/conv1/kernel'-style paths to leaves."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {'/'.join(key.key for key in path): leaf for path, leaf in flat}


@functools.cache
def _cifar_model():
  """The CIFAR-10 model and its initialised variables (init compiles)."""
  model = get_model('resnet18_gn', _CIFAR, _NUM_CLASSES)
  return model, model.init(jax.random.PRNGKey(0))


@pytest.mark.parametrize('shape,num_classes', [
    (_CIFAR, 10), (_CIFAR, 100), ((28, 28, 1), 10), ((8, 8, 1), 3)])
def test_logits_shape_and_dtype(shape, num_classes):
  model = get_model('resnet18_gn', shape, num_classes)
  params = _abstract_params(shape, num_classes)
  x = jax.ShapeDtypeStruct((_BATCH, *shape), jnp.float32)
  logits = jax.eval_shape(model.apply, params, x)
  assert logits.shape == (_BATCH, num_classes)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize('shape,num_classes', [
    (_CIFAR, 10), (_CIFAR, 100), ((28, 28, 1), 62)])
def test_param_count_matches_hand_count(shape, num_classes):
  params = _abstract_params(shape, num_classes)
  count = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
  assert count == _hand_count(shape[-1], num_classes)


def test_cifar10_param_count():
  # torchvision's resnet18() with a 10-way fc: 11,689,512 - 513,000 + 5,130.
  assert _hand_count(3, 10) == 11_181_642
  params = _abstract_params(_CIFAR)
  assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == 11_181_642


def test_layer_shapes():
  paths = _paths(_abstract_params(_CIFAR))
  expected = {
      'params/conv1/kernel': (7, 7, 3, 64),
      'params/norm1/scale': (64,),
      'params/layer1_0/conv1/kernel': (3, 3, 64, 64),
      'params/layer2_0/conv1/kernel': (3, 3, 64, 128),
      'params/layer2_0/downsample_conv/kernel': (1, 1, 64, 128),
      'params/layer2_0/downsample_norm/bias': (128,),
      'params/layer4_1/conv2/kernel': (3, 3, 512, 512),
      'params/fc/kernel': (512, 10),
      'params/fc/bias': (10,),
  }
  for path, shape in expected.items():
    assert paths[path].shape == shape, path
  # No convolution has a bias; only layer1 keeps identity shortcuts.
  assert not [p for p in paths if 'conv' in p and p.endswith('bias')]
  shortcuts = sorted({p.split('/')[1] for p in paths if 'downsample' in p})
  assert shortcuts == ['layer2_0', 'layer3_0', 'layer4_0']


def test_feature_map_sizes():
  # 32 -conv1 stride 2-> 16 -max pool-> 8, then 8, 4, 2, 1 over the stages.
  module = ResNet18GN(_NUM_CLASSES)
  x = jax.ShapeDtypeStruct((_BATCH, *_CIFAR), jnp.float32)
  _, state = jax.eval_shape(
      functools.partial(module.apply, capture_intermediates=True,
                        mutable=['intermediates']),
      _abstract_params(_CIFAR), x)
  inter = state['intermediates']
  assert inter['conv1']['__call__'][0].shape == (_BATCH, 16, 16, 64)
  for layer, (side, width) in enumerate(
      [(8, 64), (4, 128), (2, 256), (1, 512)]):
    for block in range(2):
      out = inter[f'layer{layer + 1}_{block}']['__call__'][0]
      assert out.shape == (_BATCH, side, side, width)


def test_every_norm_is_groupnorm_without_batch_stats():
  params = _abstract_params(_CIFAR)
  assert set(params) == {'params'}
  norms = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == '__call__':
      norms.append(context.module)
    return next_fun(*args, **kwargs)

  x = jax.ShapeDtypeStruct((_BATCH, *_CIFAR), jnp.float32)
  with nn.intercept_methods(record):
    _, mutated = jax.eval_shape(
        functools.partial(ResNet18GN(_NUM_CLASSES).apply, mutable=True),
        params, x)
  assert set(mutated) == {'params'}  # No 'batch_stats' or other state.
  norms = [m for m in norms if 'norm' in type(m).__name__.lower()]
  assert not [m for m in norms if not isinstance(m, nn.GroupNorm)]
  # Stem + 2 per block * 8 blocks + 3 projection shortcuts.
  assert len(norms) == 20
  assert {(m.num_groups, m.epsilon) for m in norms} == {(2, 1e-5)}


@pytest.mark.slow
def test_logits_do_not_depend_on_the_batch():
  # GroupNorm uses no batch statistics: an example's logits are the same
  # alone or in a batch. 8x8 images (the CIFAR params fit any 3-channel
  # size) keep it quick.
  model, params = _cifar_model()
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 3))
  batch, alone = jax.jit(
      lambda p, x: (model.apply(p, x), model.apply(p, x[:1])))(params, x)
  np.testing.assert_allclose(batch[:1], alone, rtol=1e-4, atol=1e-5)
  assert not np.allclose(batch[0], batch[1])


@pytest.mark.slow
def test_vmapped_sgd_step_lowers_each_clients_loss():
  # Two clients, each with its own params and batch, trained in lockstep
  # under vmap, as the simulator trains a cohort.
  model, params = _cifar_model()
  other = model.init(jax.random.PRNGKey(1))
  params = jax.tree.map(lambda a, b: jnp.stack([a, b]), params, other)
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 4, *_CIFAR))
  y = jnp.stack([jnp.arange(4), jnp.arange(4, 8)])
  # Small, since the logits of a fresh ResNet are large (loss about 2.8
  # against log(10) = 2.3); at 1e-2 the loss already jumps about.
  optimizer = optax.sgd(1e-3)

  def step(p, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply(p, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                             y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), opt_state, loss

  step = jax.jit(jax.vmap(step))
  opt_state = jax.vmap(optimizer.init)(params)
  losses = []
  for _ in range(4):
    params, opt_state, loss = step(params, opt_state, x, y)
    losses.append(np.asarray(loss))
  losses = np.stack(losses, axis=1)  # [client, step]
  assert np.all(np.diff(losses, axis=1) < 0), losses
  assert np.all(losses[:, -1] < 0.6 * losses[:, 0]), losses


def test_rejects_flat_inputs():
  with pytest.raises(ValueError, match=r'resnet18_gn.*height, width.*\(60,\)'):
    get_model('resnet18_gn', (60,), _NUM_CLASSES)
