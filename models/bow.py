"""Logistic regression on a normalized bag of words, as an embedding bag.

StackOverflow tag prediction of Reddi et al. 2021, "Adaptive Federated
Optimization": each post is the mean of the one-hot vectors of its words
over a vocabulary of `input_vocab` words plus one out-of-vocabulary bucket,
the bucket's column then dropped (TensorFlow Federated's
`stackoverflow_tag_prediction` preprocessing, `reduce_mean(one_hot(ids,
vocab + 1))[:vocab]`, so out-of-vocabulary words count in the mean's
denominator), and a Dense layer maps it to one logit per tag
(google-research/federated `utils/models/stackoverflow_lr_models.py`, which
puts the sigmoid in the model; here it is in the loss).

The bag is never built: the logits are the kernel rows of the post's words,
summed and divided by the number of words, plus the bias, which equals the
Dense layer on the normalized bag of words. Memory grows as batch x length x
classes (the gathered rows) instead of batch x vocabulary.

Deviation: TFF's later versions divide by the number of in-vocabulary words
only; this follows the version of the paper's experiments.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp


class BagOfWordsDense(nn.Module):
  """A Dense layer applied to the normalized bag of words of token ids.

  Attributes:
    features: number of outputs.
    input_vocab: number of in-vocabulary ids, `[0, input_vocab)`, each a
      kernel row; ids `>= input_vocab` are out-of-vocabulary words (counted,
      no row) and negative ids are padding (not counted).
  """

  features: int
  input_vocab: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns `[batch, features]` for `[batch, length]` ids (int or float).

    A row of padding only gives the bias.
    """
    kernel = self.param('kernel', nn.initializers.glorot_normal(),
                        (self.input_vocab, self.features))
    bias = self.param('bias', nn.initializers.zeros_init(), (self.features,))
    tokens = x.astype(jnp.int32)
    in_vocab = (tokens >= 0) & (tokens < self.input_vocab)
    rows = jnp.take(kernel, jnp.where(in_vocab, tokens, 0), axis=0)
    summed = jnp.sum(jnp.where(in_vocab[..., None], rows, 0.0), axis=1)
    num_words = jnp.sum(tokens >= 0, axis=1, keepdims=True)
    return summed / jnp.maximum(num_words, 1) + bias


class BagOfWordsLogReg(nn.Module):
  """Tag logits (sigmoid in the loss) of a post's normalized bag of words.

  Attributes:
    num_classes: number of tags.
    input_vocab: size of the word vocabulary (see `BagOfWordsDense`).
  """

  num_classes: int
  input_vocab: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Returns `[batch, num_classes]` logits for `[batch, length]` ids."""
    return BagOfWordsDense(self.num_classes, self.input_vocab,
                           name='head')(x)


# TFF's DEFAULT_WORD_VOCAB_SIZE for StackOverflow tag prediction.
DEFAULT_INPUT_VOCAB = 10_000


def build_bow_logreg(example_shape: tuple[int, ...], num_classes: int,
                     input_vocab: int | None,
                     per_position: bool) -> BagOfWordsLogReg:
  """Returns a `BagOfWordsLogReg` for posts of `example_shape[0]` ids.

  Args:
    example_shape: shape of one example, `(length,)` token ids.
    num_classes: number of tags.
    input_vocab: word vocabulary size; None means `DEFAULT_INPUT_VOCAB`.
    per_position: must be False (the registry checks it).

  Raises:
    ValueError: if `example_shape` is not `(length,)`.
  """
  del per_position
  if len(example_shape) != 1:
    raise ValueError(
        'The bow_logreg model needs posts of token ids, example shape '
        f'(length,), got example shape {tuple(example_shape)}; use logreg '
        'for feature vectors.')
  if input_vocab is None:
    input_vocab = DEFAULT_INPUT_VOCAB
  return BagOfWordsLogReg(num_classes, input_vocab)
