"""Recovering the labels of a client's batch from its message's last layer.

For softmax cross-entropy, the gradient of one example's loss with respect to
the logits is `softmax(z) - onehot(y)`: negative at the true class only. So
the last layer's bias gradient (or, without a bias, the sum over inputs of
its kernel gradient, whose rows are scaled by non-negative ReLU features) is
negative exactly at the label: Zhao, Mopuri, Bilen 2020, "iDLG: Improved
Deep Leakage from Gradients". For a batch of known size, this module follows
the "simple" estimator of Wainakh, Ventola, Muessig, Keim, Garcia Cordero,
Zimmer, Grube, Kersting, Muehlhaeuser, PETS 2022, "User-Level Label Leakage
from Gradients in Federated Learning" (LLG), as breaching implements it
(`wainakh-simple`): every class with a negative entry is taken once (most
negative first); each such entry is then raised by the mean impact
`m = sum(negative entries) / n`, and the remaining slots go, one by one, to
the most negative entry, raised by `m` after each pick.

A FedAvg message is `delta = params_after - params_before`, about
`-lr * sum of gradients`, so its signs are flipped: `kind='fedavg'`.
"""

import re
from typing import Any

from flax import traverse_util
import jax
import jax.numpy as jnp

from fedjax_core import errors

PyTree = Any
# The sign that turns each kind of message into a gradient's direction.
MESSAGE_SIGNS = {'gradient': 1.0, 'fedavg': -1.0}


def dense_layers(tree: PyTree) -> dict[str, tuple[jax.Array,
                                                   jax.Array | None]]:
  """The Dense layers of a params-shaped tree: `'a/b/layer' -> (kernel,
  bias or None)` for every 2-D leaf named `kernel` (flax kernels are
  `[in, out]`), in the tree's (sorted) key order.

  Examples:
    >>> dense_layers(params)  # {'params/Dense_0': (kernel, bias), ...}
  """
  flat = traverse_util.flatten_dict(tree)
  return {'/'.join(map(str, path[:-1])): (leaf, flat.get((*path[:-1],
                                                          'bias')))
          for path, leaf in flat.items()
          if path[-1] == 'kernel' and jnp.ndim(leaf) == 2}


def find_dense_layer(tree: PyTree, *, layer: str | None = None,
                     in_size: int | None = None, out_size: int | None = None
                     ) -> tuple[jax.Array, jax.Array | None]:
  """The one Dense layer of `tree` that matches every criterion given.

  Args:
    tree: a params-shaped pytree (params, a gradient or a delta).
    layer: a regex searched in the layer's path plus '/', e.g.
      `'^params/head/'`, as `models.registry.head_layers` writes them.
    in_size: the kernel's input width.
    out_size: the kernel's output width (the class count for a head).

  Returns:
    `(kernel, bias or None)`.

  Raises:
    ValueError: no layer or several match; the message lists the layers.

  Examples:
    >>> kernel, bias = find_dense_layer(grads, out_size=10)
  """
  layers = dense_layers(tree)
  found = [name for name, (kernel, _) in layers.items()
           if (layer is None or re.search(layer, name + '/'))
           and (in_size is None or kernel.shape[0] == in_size)
           and (out_size is None or kernel.shape[1] == out_size)]
  if len(found) != 1:
    shapes = ', '.join(f'{name} {layers[name][0].shape}' for name in layers)
    raise ValueError(
        f'{len(found)} Dense layers match layer={layer!r}, in_size='
        f'{in_size}, out_size={out_size}; name one by its path regex. The '
        f'Dense layers: {shapes or "none"}.')
  return layers[found[0]]


def label_signal(observed: PyTree, num_classes: int, *,
                 kind: str = 'gradient', head: str | None = None
                 ) -> jax.Array:
  """`[num_classes]` scores, negative at the labels present: the head's
  bias gradient, or without a bias its kernel gradient summed over inputs;
  sign-corrected for a FedAvg delta.

  Args:
    observed: the message, a params-shaped gradient or FedAvg delta.
    num_classes: the head's output width.
    kind: 'gradient' or 'fedavg' (a delta, `-lr * gradients`).
    head: a path regex naming the head when its width is ambiguous.

  Examples:
    >>> label_signal(grads, 10)  # negative at the true class
  """
  if kind not in MESSAGE_SIGNS:
    raise errors.SettingError(
        'observed', f'The observed message must be one of '
        f'{sorted(MESSAGE_SIGNS)}, got {kind!r}.')
  kernel, bias = find_dense_layer(observed, layer=head, out_size=num_classes)
  signal = kernel.sum(axis=0) if bias is None else bias
  return MESSAGE_SIGNS[kind] * signal


def recover_labels(observed: PyTree, num_classes: int,
                   num_examples: int = 1, *, kind: str = 'gradient',
                   head: str | None = None) -> jax.Array:
  """The labels of the `num_examples` examples behind a message (jittable).

  One example: iDLG's argmin of `label_signal` (its one negative entry).
  Several: LLG's simple estimator (module docstring), which is exact when
  the labels are distinct and present classes are all negative.

  Args:
    observed: the message, a params-shaped gradient or FedAvg delta.
    num_classes: the head's output width.
    num_examples: the batch size behind the message.
    kind: 'gradient' or 'fedavg'.
    head: a path regex naming the head when its width is ambiguous.

  Returns:
    `[num_examples]` int32 labels, the classes with negative entries first.

  Examples:
    >>> recover_labels(grads, 10)          # one example: [label]
    >>> recover_labels(delta, 10, 4, kind='fedavg')
  """
  errors.check_count('num_examples', num_examples, least=1)
  signal = label_signal(observed, num_classes, kind=kind, head=head)
  negative = signal < 0
  impact = jnp.where(negative, signal, 0.0).sum() / num_examples
  order = jnp.argsort(signal)  # The negative entries first.
  num_negative = negative.sum()

  def pick(adjusted, slot):
    greedy = jnp.argmin(adjusted)
    label = jnp.where(slot < num_negative, order[slot], greedy)
    raised = adjusted.at[greedy].add(-impact)
    return jnp.where(slot < num_negative, adjusted, raised), label

  _, labels = jax.lax.scan(pick, signal - impact * negative,
                           jnp.arange(num_examples))
  return labels.astype(jnp.int32)
