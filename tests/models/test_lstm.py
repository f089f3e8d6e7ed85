"""Tests for `LSTMModel` and the registered `lstm_*` models."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import LSTMModel, PER_POSITION_MODELS, get_model, head_layers

_VOCAB = 7
_CLASSES = 5
_LENGTH = 6
# Two layers and a projection, so the numpy statement covers stacking.
_TINY = {'num_classes': _CLASSES, 'input_vocab': _VOCAB, 'embed_dim': 3,
         'hidden_sizes': (4, 6), 'projection_dim': 2}


@functools.cache
def _params():
  """Random params of the tiny `LSTMModel` (biases too), drawn with numpy
  from shapes alone: its jitted init takes seconds to compile on CPU."""
  shapes = jax.eval_shape(LSTMModel(**_TINY).init, jax.random.PRNGKey(0),
                          jnp.zeros((1, _LENGTH)))
  rng = np.random.default_rng(0)
  return jax.tree.map(
      lambda leaf: rng.normal(size=leaf.shape).astype(np.float32), shapes)


@functools.cache
def _tiny(per_position):
  """The tiny model's params (shared by both modes) and jitted apply."""
  module = LSTMModel(**_TINY, per_position=per_position)
  return _params(), jax.jit(module.apply)


def _num_params(name, shape, num_classes, **kwargs):
  """Counts parameters from shapes alone, without running `init`."""
  params = jax.eval_shape(
      get_model(name, shape, num_classes, **kwargs).init,
      jax.random.PRNGKey(0))
  return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


def _numpy_lstm(cell, xs):
  """The LSTM cell equations, gates in flax's (i, f, g, o) order, run over
  `[batch, length, in]` xs from a zero state; returns every h."""
  def gate(name, x, h):
    return (x @ cell[f'i{name}']['kernel'] + h @ cell[f'h{name}']['kernel']
            + cell[f'h{name}']['bias'])

  batch, length, _ = xs.shape
  width = cell['hi']['bias'].shape[0]
  c = h = np.zeros((batch, width))
  outputs = []
  for t in range(length):
    x = xs[:, t]
    i, f = _sigmoid(gate('i', x, h)), _sigmoid(gate('f', x, h))
    g, o = np.tanh(gate('g', x, h)), _sigmoid(gate('o', x, h))
    c = f * c + i * g
    h = o * np.tanh(c)
    outputs.append(h)
  return np.stack(outputs, axis=1)


def _numpy_model(params, tokens):
  """`LSTMModel`'s per-position logits, restated in numpy."""
  p = params['params']
  h = p['embed']['embedding'][np.maximum(tokens, 0)]
  h = np.where((tokens >= 0)[..., None], h, 0.0)  # Padding embeds as zero.
  for i in range(len(_TINY['hidden_sizes'])):
    h = _numpy_lstm(p[f'lstm_{i}'], h)
  h = h @ p['projection']['kernel'] + p['projection']['bias']
  return h @ p['head']['kernel'] + p['head']['bias']


def _tokens(seed, batch=3):
  return np.random.default_rng(seed).integers(0, _VOCAB, (batch, _LENGTH))


@pytest.mark.parametrize('per_position', [True, False])
def test_matches_numpy_lstm_equations(per_position):
  params, apply = _tiny(per_position)
  tokens = _tokens(0)
  tokens[0, -2:] = -1  # Trailing padding.
  expected = _numpy_model(params, tokens)
  if not per_position:
    expected = expected[:, -1]
  got = apply(params, tokens.astype(np.float32))
  assert got.shape == expected.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_float_and_int_tokens_agree():
  params, apply = _tiny(False)
  tokens = _tokens(1)
  np.testing.assert_array_equal(apply(params, tokens.astype(np.int32)),
                                apply(params, tokens.astype(np.float32)))


@pytest.mark.parametrize('t', [0, 2, _LENGTH - 2])
def test_later_positions_and_padding_leave_earlier_outputs(t):
  params, apply = _tiny(True)
  tokens = _tokens(2)
  padded, changed = tokens.copy(), tokens.copy()
  padded[:, t + 1:] = -1
  changed[:, t + 1:] = (tokens[:, t + 1:] + 1) % _VOCAB
  y = np.asarray(apply(params, tokens.astype(np.float32)))
  for other in (padded, changed):
    y_other = np.asarray(apply(params, other.astype(np.float32)))
    np.testing.assert_array_equal(y[:, :t + 1], y_other[:, :t + 1])
    assert not np.allclose(y[:, t + 1:], y_other[:, t + 1:], atol=1e-6)


def test_first_token_reaches_the_last_position():
  params, apply = _tiny(False)
  tokens = _tokens(3)
  changed = tokens.copy()
  changed[:, 0] = (tokens[:, 0] + 1) % _VOCAB
  assert not np.allclose(apply(params, tokens.astype(np.float32)),
                         apply(params, changed.astype(np.float32)), atol=1e-6)


def test_param_counts_of_the_papers_models():
  # The counts fedjax's tests assert for the same architectures
  # (fedjax/models/{shakespeare,stackoverflow}_test.py).
  assert _num_params('lstm_shakespeare', (80,), 90) == 820_522
  assert _num_params('lstm_stackoverflow', (20,), 10_004) == 4_050_748

  def lstm(inputs, width):
    return 4 * (inputs * width + width * width + width)

  vocab = 1_000
  expected = (vocab * 300 + lstm(300, 100) + lstm(100, 100) + 100 * 128
              + 128 + 128 * 2 + 2)
  assert _num_params('lstm_sent140', (25,), 2, input_vocab=vocab) == expected
  # input_vocab sizes the embedding only.
  assert (_num_params('lstm_shakespeare', (80,), 90, input_vocab=100)
          == 820_522 + 10 * 8)


@pytest.mark.parametrize('name', ['lstm_shakespeare', 'lstm_stackoverflow',
                                  'lstm_sent140', 'transformer'])
@pytest.mark.parametrize('per_position', [False, True])
def test_registered_output_shapes(name, per_position):
  model = get_model(name, (_LENGTH,), _CLASSES, input_vocab=11,
                    per_position=per_position)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  x = jax.ShapeDtypeStruct((2, _LENGTH), jnp.float32)
  expected = (2, _LENGTH, _CLASSES) if per_position else (2, _CLASSES)
  assert jax.eval_shape(model.apply, params, x).shape == expected


@pytest.mark.parametrize('name,kwargs', [
    ('lstm_shakespeare', {}), ('lstm_stackoverflow', {'per_position': True}),
    ('lstm_sent140', {'input_vocab': 50})])
def test_head_layers_finds_the_head(name, kwargs):
  assert head_layers(name, (_LENGTH,), 9, **kwargs) == '^params/head/'


def test_per_position_models():
  assert PER_POSITION_MODELS == ('lstm_sent140', 'lstm_shakespeare',
                                 'lstm_stackoverflow', 'transformer')


@pytest.mark.parametrize('name,shape,kwargs,match', [
    ('cnn', (28, 28, 1), {'per_position': True},
     r'cnn.*per position.*lstm_sent140, lstm_shakespeare, '
     r'lstm_stackoverflow, transformer'),
    ('bow_logreg', (8,), {'per_position': True}, r'bow_logreg.*transformer'),
    ('lstm_sent140', (25,), {}, r'lstm_sent140.*input_vocab'),
    ('lstm_shakespeare', (28, 28, 1), {},
     r'lstm_shakespeare.*\(length,\).*\(28, 28, 1\)'),
])
def test_bad_requests_raise(name, shape, kwargs, match):
  with pytest.raises(ValueError, match=match):
    get_model(name, shape, 10, **kwargs)


def test_models_are_cached_per_argument_set():
  model = get_model('lstm_shakespeare', (_LENGTH,), _CLASSES)
  assert get_model('lstm_shakespeare', [_LENGTH], _CLASSES) is model
  assert get_model('lstm_shakespeare', (_LENGTH,), _CLASSES,
                   per_position=True) is not model
  # Models that embed no tokens ignore input_vocab.
  assert (_num_params('mlp', (_LENGTH,), _CLASSES, input_vocab=99)
          == _num_params('mlp', (_LENGTH,), _CLASSES))
