"""How close a reconstruction is to the data it came from.

PSNR and SSIM (Wang, Bovik, Sheikh, Simoncelli, IEEE TIP 2004, "Image
Quality Assessment: From Error Visibility to Structural Similarity") by
dm-pix, over `[n, height, width, channels]` batches; the pairing of a
reconstructed batch with the original one by the Hungarian assignment on
PSNR, as the breaching library scores gradient inversion (Geiping,
Bauermeister, Droege, Moeller, NeurIPS 2020, "Inverting Gradients - How easy
is it to break privacy in federated learning?"), since an attack recovers a
batch in no particular order; and the label-recovery accuracy as a multiset
match (Zhao, Mopuri, Bilen 2020, "iDLG: Improved Deep Leakage from
Gradients").
"""

from typing import NamedTuple

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize

# dm-pix's default SSIM window (Wang et al. 2004): 11x11, sigma 1.5.
_SSIM_FILTER_SIZE = 11


def psnr(original: jax.Array, reconstructed: jax.Array,
         max_value: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio of each image, `10 log10(max^2 / mse)`, dB.

  Args:
    original: `[n, height, width, channels]` images.
    reconstructed: the same shape.
    max_value: the data range (images in `[0, max_value]`).

  Returns:
    `[n]` PSNR in dB (inf for identical images).

  Examples:
    >>> psnr(jnp.zeros((1, 8, 8, 1)), jnp.full((1, 8, 8, 1), 0.1))  # [20.]
  """
  return pix.psnr(original / max_value, reconstructed / max_value)


def ssim_filter_size(height: int, width: int) -> int:
  """The SSIM window used for `height x width` images: dm-pix's 11x11 when
  it fits, else the largest odd size that does (7 for 8x8 digits, since
  dm-pix filters 'VALID' and an 11x11 window has no place in 8x8)."""
  size = min(_SSIM_FILTER_SIZE, height, width)
  return size if size % 2 else size - 1


def ssim(original: jax.Array, reconstructed: jax.Array,
         max_value: float = 1.0, filter_size: int | None = None) -> jax.Array:
  """Structural similarity of each image (dm-pix, Gaussian window, sigma 1.5).

  Args:
    original: `[n, height, width, channels]` images.
    reconstructed: the same shape.
    max_value: the data range.
    filter_size: the Gaussian window's size; None picks
      `ssim_filter_size(height, width)` (7 for 8x8 digits).

  Returns:
    `[n]` SSIM in [-1, 1]; 1 for identical images.

  Examples:
    >>> x = jnp.ones((2, 8, 8, 1)) * 0.5
    >>> ssim(x, x)  # [1., 1.]
  """
  if filter_size is None:
    filter_size = ssim_filter_size(*original.shape[-3:-1])
  return pix.ssim(original, reconstructed, max_val=max_value,
                  filter_size=filter_size)


class MatchedMetrics(NamedTuple):
  """Per-image scores of a reconstructed batch against the original.

  Attributes:
    psnr: `[n]` PSNR of original image i against its matched reconstruction.
    ssim: `[n]` SSIM of the same pairs.
    assignment: `[n]` index of the reconstruction matched to original i.
  """

  psnr: np.ndarray
  ssim: np.ndarray
  assignment: np.ndarray


def match_reconstructions(original: jax.Array, reconstructed: jax.Array,
                          max_value: float = 1.0) -> MatchedMetrics:
  """Pairs each original image with one reconstruction, one to one, so that
  the summed PSNR is largest (scipy's Hungarian assignment on -PSNR), and
  scores each pair. Runs on the host (not jittable).

  Args:
    original: `[n, height, width, channels]` images.
    reconstructed: `[n, height, width, channels]`, in any order.
    max_value: the data range.

  Returns:
    `MatchedMetrics` with the pairs' PSNR, SSIM and the assignment.

  Examples:
    >>> m = match_reconstructions(x, x[::-1])
    >>> m.assignment  # [n-1, ..., 0]
  """
  if original.shape != reconstructed.shape or original.ndim != 4:
    raise ValueError(
        'match_reconstructions needs two [n, height, width, channels] '
        f'batches of one shape, got {original.shape} and '
        f'{reconstructed.shape}.')
  n = original.shape[0]
  rows = jnp.repeat(original, n, axis=0)
  cols = jnp.tile(reconstructed, (n, 1, 1, 1))
  table = np.asarray(psnr(rows, cols, max_value)).reshape(n, n)
  # inf (an exact match) would make the assignment's costs meaningless.
  table = np.nan_to_num(table, posinf=1e6)
  _, assignment = optimize.linear_sum_assignment(-table)
  matched = reconstructed[assignment]
  return MatchedMetrics(
      psnr=np.asarray(psnr(original, matched, max_value)),
      ssim=np.asarray(ssim(original, matched, max_value)),
      assignment=assignment)


def label_accuracy(true_labels: jax.Array,
                   recovered_labels: jax.Array) -> float:
  """Share of the true labels found among the recovered ones, counted as
  multisets (order-free): `sum_c min(#true c, #recovered c) / n`.

  Examples:
    >>> label_accuracy(jnp.array([1, 1, 2]), jnp.array([2, 1, 3]))  # 2/3
  """
  true_labels = np.asarray(true_labels).ravel()
  recovered_labels = np.asarray(recovered_labels).ravel()
  if true_labels.size == 0:
    raise ValueError('label_accuracy needs at least one true label.')
  size = int(max(true_labels.max(), recovered_labels.max(initial=0))) + 1
  hits = np.minimum(np.bincount(true_labels, minlength=size),
                    np.bincount(recovered_labels, minlength=size))
  return float(hits.sum() / true_labels.size)
