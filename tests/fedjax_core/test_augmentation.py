"""`random_crop_flip` against a numpy re-statement of torchvision's
`RandomCrop(size, padding)` + `RandomHorizontalFlip()`."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.data.augmentation import random_crop_flip


def _draws(key, batch_size, padding):
  """The offsets and flips, re-derived as `random_crop_flip` documents."""
  offset_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(offset_key, (batch_size, 2), 0,
                               2 * padding + 1)
  flips = jax.random.bernoulli(flip_key, 0.5, (batch_size,))
  return np.asarray(offsets), np.asarray(flips)


def _np_crop_flip(images, offsets, flips, padding):
  """Zero-pad, slice at each offset, flip left-right where `flips`."""
  _, h, w, _ = images.shape
  p = padding
  padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
  out = np.stack([x[dy:dy + h, dx:dx + w]
                  for x, (dy, dx) in zip(padded, offsets)])
  return np.where(flips[:, None, None, None], out[:, :, ::-1], out)


def _images(shape, seed=0, dtype=np.float32):
  return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _unique_images(batch_size, h, w):
  """Each pixel of each image distinct and non-zero, so a crop reveals
  its offset and flip."""
  pixels = np.arange(1, h * w + 1, dtype=np.float32).reshape(1, h, w, 1)
  return np.broadcast_to(pixels, (batch_size, h, w, 1))


@pytest.mark.slow
@pytest.mark.parametrize('shape,padding', [((16, 8, 8, 3), 4),
                                           ((16, 7, 9, 2), 2),
                                           ((16, 5, 6, 1), 0),
                                           ((50, 32, 32, 3), 4)])
def test_matches_numpy(shape, padding):
  key = jax.random.key(3)
  images = _images(shape)
  offsets, flips = _draws(key, shape[0], padding)
  got = random_crop_flip(key, jnp.asarray(images), padding)
  np.testing.assert_array_equal(
      np.asarray(got), _np_crop_flip(images, offsets, flips, padding))


@pytest.mark.slow
def test_jit_equals_eager():
  key, images = jax.random.key(7), jnp.asarray(_images((20, 8, 8, 3)))
  jitted = jax.jit(random_crop_flip, static_argnames='padding')
  np.testing.assert_array_equal(np.asarray(jitted(key, images, padding=3)),
                                np.asarray(random_crop_flip(key, images, 3)))


@pytest.mark.slow
def test_vmap_over_clients_equals_each_client():
  keys = jax.random.split(jax.random.key(1), 4)
  images = jnp.asarray(_images((4, 10, 8, 8, 3)))
  got = jax.jit(jax.vmap(random_crop_flip))(keys, images)
  for k, x, g in zip(keys, images, got):
    np.testing.assert_array_equal(np.asarray(g),
                                  np.asarray(random_crop_flip(k, x)))


@pytest.mark.slow
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16, jnp.float16])
def test_shape_and_dtype_kept(dtype):
  images = jnp.ones((5, 8, 6, 3), dtype)
  got = random_crop_flip(jax.random.key(0), images, 2)
  assert got.shape == images.shape and got.dtype == dtype


@pytest.mark.slow
def test_padding_zero_only_flips():
  key = jax.random.key(5)
  images = _images((64, 6, 6, 2))
  got = np.asarray(random_crop_flip(key, jnp.asarray(images), 0))
  flipped = np.all(got == images[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(flipped | np.all(got == images, axis=(1, 2, 3)))
  assert 0 < flipped.sum() < len(images)


@pytest.mark.slow
def test_not_identity():
  images = _images((8, 32, 32, 3))
  got = np.asarray(random_crop_flip(jax.random.key(0), jnp.asarray(images)))
  assert not np.any(np.all(got == images, axis=(1, 2, 3)))


@pytest.mark.slow
def test_flip_rate_and_offset_coverage():
  """Decodes each output's (dy, dx, flip) by matching all candidates."""
  n, h, w, padding = 4000, 5, 5, 2
  images = _unique_images(n, h, w)
  got = np.asarray(random_crop_flip(jax.random.key(11), jnp.asarray(images),
                                    padding))
  span = range(2 * padding + 1)
  params = list(itertools.product(span, span, (False, True)))
  candidates = np.stack([
      _np_crop_flip(images[:1], np.array([[dy, dx]]), np.array([f]),
                    padding)[0] for dy, dx, f in params])
  match = np.all(got[:, None] == candidates[None], axis=(2, 3, 4))
  assert np.all(match.sum(axis=1) == 1)  # Every output is one crop + flip.
  decoded = np.array(params)[match.argmax(axis=1)]
  assert abs(decoded[:, 2].mean() - 0.5) < 0.03  # 4.2 standard deviations.
  for axis in (0, 1):
    np.testing.assert_array_equal(np.unique(decoded[:, axis]), list(span))


def test_negative_padding_raises():
  with pytest.raises(ValueError, match='padding'):
    random_crop_flip(jax.random.key(0), jnp.ones((1, 4, 4, 1)), -1)
