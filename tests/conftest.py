"""pytest configuration: puts tests/ on sys.path, so tests in any folder can
import the shared helpers here (`tfds_fakes`, `interruptions`,
`eight_devices`, `train_in_process`); and makes the suite compile less.

Most of the suite's time is XLA compiling small programs, many of them
the same program again (each command-line test's subprocess, each run of a
test). Before JAX is imported, this sets, for this process and the
subprocesses it starts:
- a compilation cache in a temporary directory for the session, so a
  program compiled once is read back, not compiled again;
- XLA's backend optimization level 0, which compiles faster and runs these
  small shapes about as fast.
Neither changes what a test computes or checks (BUILD_NOTES.md, "Test
suite"). A variable already set in the environment is left as it is.
"""

import atexit
import os
import shutil
import tempfile

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='fedjax_tests_jax_cache_')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')
if '--xla_backend_optimization_level' not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_backend_optimization_level=0').strip()
