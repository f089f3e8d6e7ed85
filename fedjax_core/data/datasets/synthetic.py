"""Synthetic(alpha, beta) federated data of the FedProx paper.

Li, Sahu, Zaheer, Sanjabi, Talwalkar and Smith, 2020, "Federated Optimization
in Heterogeneous Networks" (MLSys; arXiv:1812.06127), Section 5.1. The
generator follows the authors' `generate_synthetic` in
litian96/FedProx `data/synthetic_*/generate_niid.py`, drawing from
`np.random.default_rng(seed)` instead of numpy's global random state.
"""

import numpy as np

from fedjax_core.data.federated import CentralDataset

_DIMENSION = 60
_NUM_CLASSES = 10
_MIN_SAMPLES = 50
_TRAIN_SHARE = 0.9


def load_synthetic(alpha: float = 1.0,
                   beta: float = 1.0,
                   num_devices: int = 30,
                   seed: int = 0) -> CentralDataset:
  """Generates FedProx's Synthetic(alpha, beta) as a federated dataset.

  Device `k` gets `n_k = int(lognormal(4, 2)) + 50` examples. Its softmax
  model is `W_k ~ N(u_k, 1)` (60 x 10) and `b_k ~ N(u_k, 1)` with
  `u_k ~ N(0, alpha)`; its inputs are `x ~ N(v_k, Sigma)` with
  `Sigma = diag(j^-1.2)`, `v_k ~ N(B_k, 1)` and `B_k ~ N(0, beta)`; labels are
  `argmax(x @ W_k + b_k)`. As in the authors' code (and unlike the paper's
  notation, which reads as variances), alpha and beta are passed to numpy as
  standard deviations. The device sizes are heavy-tailed: a device can hold
  tens of thousands of rows.

  Each device's first `int(0.9 * n_k)` rows are training data, marked with
  the device as their natural group key, and the rest go to the test split,
  which concatenates every device's test rows. (The authors' code shuffles a
  device's rows before this split; the rows are drawn i.i.d., so skipping
  the shuffle leaves the split's distribution unchanged.)

  Args:
    alpha: standard deviation of the per-device model means `u_k` (how much
      devices' models differ), >= 0.
    beta: standard deviation of the per-device input means `B_k` (how much
      devices' inputs differ), >= 0.
    num_devices: number of devices, >= 1.
    seed: seed of every draw.

  Returns:
    A `CentralDataset` named 'synthetic' with float32 `[n, 60]` inputs,
    int32 labels in [0, 10) and the device of each training row as
    `train_groups`.

  Raises:
    ValueError: if alpha or beta is negative or num_devices < 1.
  """
  if alpha < 0 or beta < 0:
    raise ValueError(
        f'alpha and beta must be >= 0, got alpha={alpha}, beta={beta}.')
  if num_devices < 1:
    raise ValueError(f'num_devices must be >= 1, got {num_devices}.')
  rng = np.random.default_rng(seed)
  sizes = rng.lognormal(4, 2, num_devices).astype(int) + _MIN_SAMPLES
  mean_w = rng.normal(0, alpha, num_devices)
  mean_b = mean_w
  mean_x_center = rng.normal(0, beta, num_devices)
  cov_x = np.diag(np.arange(1, _DIMENSION + 1, dtype=np.float64)**-1.2)
  mean_x = np.stack(
      [rng.normal(center, 1, _DIMENSION) for center in mean_x_center])
  train_x, train_y, test_x, test_y = [], [], [], []
  for k in range(num_devices):
    w = rng.normal(mean_w[k], 1, (_DIMENSION, _NUM_CLASSES))
    b = rng.normal(mean_b[k], 1, _NUM_CLASSES)
    x = rng.multivariate_normal(mean_x[k], cov_x, sizes[k])
    y = np.argmax(x @ w + b, axis=1)
    split = int(_TRAIN_SHARE * sizes[k])
    train_x.append(x[:split])
    train_y.append(y[:split])
    test_x.append(x[split:])
    test_y.append(y[split:])
  num_train = [len(y) for y in train_y]
  return CentralDataset(
      name='synthetic',
      train_x=np.concatenate(train_x).astype(np.float32),
      train_y=np.concatenate(train_y).astype(np.int32),
      test_x=np.concatenate(test_x).astype(np.float32),
      test_y=np.concatenate(test_y).astype(np.int32),
      num_classes=_NUM_CLASSES,
      train_groups=np.repeat(np.arange(num_devices), num_train))
