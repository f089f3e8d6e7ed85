"""Tests for the bag-of-words logistic regression (`bow_logreg`)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import BagOfWordsLogReg, get_model, head_layers
from models.bow import DEFAULT_INPUT_VOCAB

_VOCAB = 6
_TAGS = 4
_LENGTH = 5
_OOV = _VOCAB


@functools.cache
def _tiny():
  """A tiny model's params, with a random bias, and jitted apply."""
  module = BagOfWordsLogReg(_TAGS, _VOCAB)
  params = jax.jit(module.init)(jax.random.PRNGKey(0),
                                jnp.zeros((1, _LENGTH)))
  params = jax.tree.map(np.asarray, params)
  head = params['params']['head']
  head['bias'] = np.random.default_rng(0).normal(size=_TAGS).astype(
      np.float32)
  return params, jax.jit(module.apply)


def _numpy_bag_of_words(tokens):
  """TFF's features: mean one-hot over vocab + 1 (the OOV bucket), padding
  (-1) left out, the OOV column then dropped."""
  bags = np.zeros((len(tokens), _VOCAB + 1))
  for row, ids in enumerate(tokens):
    words = [min(i, _OOV) for i in ids if i >= 0]
    for word in words:
      bags[row, word] += 1 / len(words)
  return bags[:, :_VOCAB]


def test_equals_dense_on_the_normalized_bag_of_words():
  params, apply = _tiny()
  tokens = np.array([[0, 1, 1, 5, -1],        # Padding is not counted.
                     [2, _OOV, 3, _OOV, 2],   # OOV counts, has no column.
                     [4, 4, 4, 4, 4],
                     [_OOV + 3, 0, -1, -1, -1]])  # Any id >= vocab is OOV.
  head = params['params']['head']
  assert head['kernel'].shape == (_VOCAB, _TAGS)
  expected = _numpy_bag_of_words(tokens) @ head['kernel'] + head['bias']
  got = apply(params, tokens.astype(np.float32))
  assert got.shape == (4, _TAGS) and got.dtype == jnp.float32
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(got, apply(params, tokens.astype(np.int32)))


def test_padding_only_gives_the_bias():
  params, apply = _tiny()
  got = apply(params, np.full((2, _LENGTH), -1, np.float32))
  np.testing.assert_array_equal(
      got, np.broadcast_to(params['params']['head']['bias'], (2, _TAGS)))


def test_registered_model():
  model = get_model('bow_logreg', (_LENGTH,), _TAGS, input_vocab=_VOCAB)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0))
  assert jax.tree.map(lambda leaf: leaf.shape, params) == {
      'params': {'head': {'kernel': (_VOCAB, _TAGS), 'bias': (_TAGS,)}}}
  x = jax.ShapeDtypeStruct((3, _LENGTH), jnp.float32)
  assert jax.eval_shape(model.apply, params, x).shape == (3, _TAGS)
  assert head_layers('bow_logreg', (_LENGTH,), _TAGS,
                     input_vocab=_VOCAB) == '^params/head/'


def test_default_vocabulary_is_tffs():
  params = jax.eval_shape(get_model('bow_logreg', (_LENGTH,), 500).init,
                          jax.random.PRNGKey(0))
  assert params['params']['head']['kernel'].shape == (10_000, 500)
  assert DEFAULT_INPUT_VOCAB == 10_000


@pytest.mark.parametrize('shape', [(2, 3), ()])
def test_needs_sequences(shape):
  with pytest.raises(ValueError, match=r'bow_logreg.*\(length,\)'):
    get_model('bow_logreg', shape, _TAGS)
