"""SettingError keeps its setting, also across a process boundary."""

import pickle

from fedjax_core.channel.secagg_protocol import SecAggThresholdError
from fedjax_core.errors import SettingError


def test_setting_errors_pickle_with_their_setting_and_type():
  for error in (SettingError('batch_size', 'must be positive, got 0'),
                SecAggThresholdError('secure_aggregation.threshold', 'x')):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and isinstance(copy, ValueError)
    assert (copy.setting, str(copy)) == (error.setting, str(error))
