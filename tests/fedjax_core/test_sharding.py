"""The same run on 1 and on 8 devices (forced CPU devices) gives the same
model and client state, whatever the placement of the cohort and of the
client-state store."""

import os

import numpy as np
import pytest

import eight_devices
import sharded_runs


@pytest.mark.slow
def test_one_and_eight_devices_give_the_same_model(tmp_path):
  """SCAFFOLD, 13 clients, cohorts of 5 (padded to 8 on 8 devices): the
  final server parameters and every client's control variate agree to
  float tolerance across one device; 8 devices with the cohort vmapped and
  the store sharded; a 4x2 mesh whose devices train their 2 clients one by
  one as straight-line code, with the store on every device; and a 2x4 mesh
  whose devices run their 3 clients in `lax.map` chunks of 2, with the
  store sharded."""
  out = str(tmp_path / 'runs.npz')
  proc = eight_devices.run(
      os.path.join(os.path.dirname(__file__), 'sharded_runs.py'), out)
  assert proc.returncode == 0, proc.stderr[-3000:]
  runs = np.load(out)
  names = list(sharded_runs.PLACEMENTS)
  reference = {k.split('/')[1]: runs[k] for k in runs.files
               if k.startswith(names[0] + '/')}
  assert len(reference) == 12  # 6 MLP parameters, 6 control variates.
  controls = [v for v in reference.values() if v.shape[:1] == (13,)]
  assert len(controls) == 6 and all(np.any(v != 0) for v in controls)
  for name in names[1:]:
    for i, want in reference.items():
      np.testing.assert_allclose(runs[f'{name}/{i}'], want, rtol=1e-5,
                                 atol=1e-6, err_msg=f'{name} leaf {i}')
