"""A pre-trained base on disk: saved, loaded, and refused when it does not
fit the run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_core.toolkit import pretrained

INFO = {'model': 'mlp', 'example_shape': [4], 'num_classes': 3,
        'dataset': 'digits', 'step': 7}


def _params(offset=0.0):
  return {'params': {'dense': {'kernel': jnp.arange(12.0).reshape(4, 3)
                               + offset, 'bias': jnp.ones(3) + offset}}}


def test_round_trip(tmp_path):
  pretrained.save_base(str(tmp_path / 'base'), _params(), INFO)
  params, info = pretrained.load_base(
      str(tmp_path / 'base'), _params(offset=5.0),
      {'model': 'mlp', 'example_shape': (4,), 'num_classes': 3})
  jax.tree.map(np.testing.assert_array_equal, params, _params())
  assert info == INFO


@pytest.mark.parametrize('key, value', [('model', 'cnn'),
                                        ('example_shape', (5,)),
                                        ('num_classes', 4)])
def test_a_base_for_another_run_is_refused(tmp_path, key, value):
  pretrained.save_base(str(tmp_path / 'base'), _params(), INFO)
  expected = {'model': 'mlp', 'example_shape': (4,), 'num_classes': 3,
              key: value}
  with pytest.raises(ValueError, match=f'holds a base for {key}='):
    pretrained.load_base(str(tmp_path / 'base'), _params(), expected)


def test_a_directory_without_a_base_says_how_to_make_one(tmp_path):
  with pytest.raises(ValueError, match='scripts.pretrain'):
    pretrained.load_base(str(tmp_path), _params(), INFO)


def test_the_info_must_name_what_a_loader_checks(tmp_path):
  with pytest.raises(ValueError, match='num_classes'):
    pretrained.save_base(str(tmp_path / 'base'), _params(),
                         {'model': 'mlp', 'example_shape': [4]})
