"""Tests of the reconstruction metrics against plain numpy re-statements."""

import jax
import numpy as np
import pytest

from fedjax_core.adversary import image_metrics


def _images(n=4, seed=0):
  return np.random.default_rng(seed).uniform(size=(n, 8, 8, 1)).astype(
      np.float32)


def test_psnr_matches_numpy_restatement():
  a, b = _images(3, 0), _images(3, 1)
  mse = ((a - b) ** 2).reshape(3, -1).mean(axis=1)
  np.testing.assert_allclose(image_metrics.psnr(a, b),
                             10 * np.log10(1.0 / mse), rtol=1e-5)
  # max_value scales the peak: 10 log10(max^2 / mse) on unscaled images.
  np.testing.assert_allclose(image_metrics.psnr(4 * a, 4 * b, 4.0),
                             10 * np.log10(16.0 / (16 * mse)), rtol=1e-5)


def test_psnr_of_a_hand_case():
  # mse = 0.01 -> 10 log10(1 / 0.01) = 20 dB.
  a = np.zeros((1, 8, 8, 1), np.float32)
  np.testing.assert_allclose(image_metrics.psnr(a, a + 0.1), [20.0],
                             rtol=1e-5)


def test_ssim_of_identical_images_is_one_and_lower_otherwise():
  a = _images(2)
  np.testing.assert_allclose(image_metrics.ssim(a, a), [1.0, 1.0],
                             atol=1e-5)
  assert np.all(np.asarray(image_metrics.ssim(a, _images(2, 5))) < 0.5)


def test_ssim_window_fits_small_images():
  assert image_metrics.ssim_filter_size(8, 8) == 7
  assert image_metrics.ssim_filter_size(32, 32) == 11
  assert image_metrics.ssim_filter_size(6, 9) == 5


def test_matching_pairs_a_permuted_batch():
  a = _images(5)
  perm = np.array([3, 0, 4, 1, 2])
  noisy = a[perm] + 0.01 * np.random.default_rng(2).normal(
      size=a.shape).astype(np.float32)
  matched = image_metrics.match_reconstructions(a, noisy)
  # Original i is reconstruction j where perm[j] == i.
  np.testing.assert_array_equal(matched.assignment, np.argsort(perm))
  assert np.all(matched.psnr > 35) and np.all(matched.ssim > 0.95)


def test_matching_identical_batch_is_identity_with_infinite_psnr():
  a = _images(3)
  matched = image_metrics.match_reconstructions(jax.numpy.asarray(a), a)
  np.testing.assert_array_equal(matched.assignment, [0, 1, 2])
  assert np.all(np.isinf(matched.psnr))


def test_matching_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match='one shape'):
    image_metrics.match_reconstructions(_images(3), _images(2))


def test_label_accuracy_is_a_multiset_match():
  assert image_metrics.label_accuracy([1, 1, 2], [2, 1, 3]) == pytest.approx(
      2 / 3)
  assert image_metrics.label_accuracy([4, 0, 7], [7, 4, 0]) == 1.0
  assert image_metrics.label_accuracy([5, 5], [5, 6]) == 0.5
