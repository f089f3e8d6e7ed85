"""What a dataset's labels are: one class, a class per position, or a set.

Three kinds of target, told apart by the label array alone so that no
setting has to say which:
  * `CLASSES`: `[n]` integer labels, one class per example (images,
    next-character windows, sentiment).
  * `TOKENS`: `[n, T]` integer labels, one class per position of a sequence
    (next-word and next-character language modelling, as in Reddi et al.,
    2021, "Adaptive Federated Optimization", ICLR). `PAD` positions count
    nowhere; a target stored as `unscored(c)` is trained on as class `c` but
    left out of the accuracy (out-of-vocabulary tokens, as the FedOpt
    paper's accuracy leaves them out).
  * `MULTI_LABEL`: `[n, C]` uint8 multi-hot labels, a set of classes per
    example (StackOverflow tag prediction).

Inside a compiled function the kind follows from shapes: labels shaped like
the logits are multi-hot; labels shaped like the logits without their last
axis are integer classes, per example or per position.

Examples:
  >>> kind(np.array([[5, 7, PAD]], np.int32))
  'tokens'
  >>> unscored(3), class_of(unscored(3))
  (-5, 3)
"""

import numpy as np

CLASSES = 'classes'
TOKENS = 'tokens'
MULTI_LABEL = 'multi_label'

PAD = -1


def unscored(label):
  """The stored form of target `label` that trains but is not scored."""
  return -2 - label


def class_of(stored):
  """The class each stored integer target trains on: itself if >= 0, `c`
  for `unscored(c)`, and 0 for `PAD` (mask it out with `is_trained`).
  Works on numpy and JAX arrays alike."""
  return abs(stored + 1) - 1 + (stored == PAD)


def is_trained(stored):
  """Whether each stored integer target counts in the loss (not `PAD`)."""
  return stored != PAD


def is_scored(stored):
  """Whether each stored integer target counts in the accuracy."""
  return stored >= 0


def kind(labels: np.ndarray) -> str:
  """The kind of target of a label array (see the module docstring).

  Raises:
    ValueError: labels of no known kind (e.g. 3-D, or float).
  """
  labels = np.asarray(labels)
  if labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
    return CLASSES
  if labels.ndim == 2 and labels.dtype in (np.uint8, np.bool_):
    return MULTI_LABEL
  if labels.ndim == 2 and np.issubdtype(labels.dtype, np.integer):
    return TOKENS
  raise ValueError(
      f'Labels of shape {labels.shape} and dtype {labels.dtype} are of no '
      'known kind: [n] integer classes, [n, T] integer tokens or [n, C] '
      'uint8 multi-hot sets.')
