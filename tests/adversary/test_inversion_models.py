"""Inverting Gradients against the convolutional and the attention model
(the MLP and logistic regression: test_gradient_inversion.py)."""

import jax
import numpy as np
import pytest

from fedjax_core.adversary import gradient_inversion
from fedjax_core.adversary import image_metrics
from fedjax_core.adversary import inversion_objectives
from fedjax_core.data import datasets
import models


@pytest.fixture(scope='module')
def digit():
  """One digits training image whose label is not 0."""
  central = datasets.load_digits(0)
  row = int(np.flatnonzero(central.train_y == 7)[0])
  return (central.train_x[row:row + 1].astype(np.float32),
          central.train_y[row:row + 1])


def _attack(name, digit, iterations):
  x, y = digit
  model = models.get_model(name, (8, 8, 1), 10)
  params = model.init(jax.random.key(0))
  observed = inversion_objectives.observed_gradient(model.apply, params, x, y)
  config = gradient_inversion.InversionConfig(
      method='ig', iterations=iterations, num_restarts=2)
  result = gradient_inversion.invert(
      model.apply, params, observed, input_shape=(8, 8, 1), num_classes=10,
      config=config, key=jax.random.key(1))
  return result, float(image_metrics.psnr(x, np.asarray(result.images))[0])


def test_inverting_gradients_recovers_a_digit_through_the_cnn(digit):
  # Measured: 32 dB after 100 iterations, 64 dB after 300 (from 6.9 dB).
  result, psnr = _attack('cnn', digit, 150)
  assert psnr > 30
  assert np.asarray(result.labels).tolist() == [7]


def test_inverting_gradients_runs_against_the_vit(digit):
  # The ViT is far harder to invert (9 dB after 300 iterations, as
  # Geiping et al. need tens of thousands for ViTs); the attack still lowers
  # its objective and recovers the label from the head.
  start, _ = _attack('vit', digit, 1)
  result, psnr = _attack('vit', digit, 20)
  assert np.all(np.asarray(result.losses) < np.asarray(start.losses))
  assert np.asarray(result.labels).tolist() == [7]
  assert np.isfinite(psnr)
