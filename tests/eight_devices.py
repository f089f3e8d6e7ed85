"""Test helper: running a script in a subprocess on 8 forced CPU devices
(`XLA_FLAGS=--xla_force_host_platform_device_count=8`), as the sharding
tests do."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
  """`python *args` in the repository root with 8 CPU devices and the repo
  and `tests/fedjax_core/` on the path; returns the finished process."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      ' --xla_force_host_platform_device_count=8').strip()
  env['PYTHONPATH'] = os.pathsep.join(
      [REPO, os.path.join(REPO, 'tests', 'fedjax_core'),
       env.get('PYTHONPATH', '')])
  return subprocess.run([sys.executable, *args], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)
