"""UCI handwritten digits (shipped with scikit-learn) split across clients.

The 1797 8x8 grey-scale digit images of Alpaydin and Kaynak, 1998, "Optical
Recognition of Handwritten Digits" (UCI Machine Learning Repository), loaded
with `sklearn.datasets.load_digits`, so nothing is downloaded. A stratified
held-out split is set aside; the rest is the training split.
"""

import numpy as np
from sklearn import datasets as sk_datasets

from fedjax_core.data.federated import CentralDataset

_NUM_CLASSES = 10
_MAX_PIXEL = 16.0


def _stratified_test_mask(labels: np.ndarray, test_fraction: float,
                          seed: int) -> np.ndarray:
  """Marks `round(test_fraction * class_size)` random rows of each class."""
  rng = np.random.default_rng(seed)
  is_test = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    indices = rng.permutation(np.flatnonzero(labels == c))
    is_test[indices[:int(round(test_fraction * len(indices)))]] = True
  return is_test


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> CentralDataset:
  """Loads scikit-learn's digits with a stratified held-out split.

  Args:
    seed: seed of the held-out split.
    test_fraction: share of each class held out as the test split, in
      (0, 1).

  Returns:
    A `CentralDataset` named 'digits' with float32 `[n, 8, 8, 1]` inputs in
    [0, 1] and int32 labels in [0, 10), without a natural group key.

  Raises:
    ValueError: on a `test_fraction` outside (0, 1).
  """
  if not 0 < test_fraction < 1:
    raise ValueError(f'test_fraction must be in (0, 1), got {test_fraction}.')
  digits = sk_datasets.load_digits()
  x = (digits.images / _MAX_PIXEL).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  is_test = _stratified_test_mask(y, test_fraction, seed)
  return CentralDataset(name='digits', train_x=x[~is_test], train_y=y[~is_test],
                        test_x=x[is_test], test_y=y[is_test],
                        num_classes=_NUM_CLASSES)
