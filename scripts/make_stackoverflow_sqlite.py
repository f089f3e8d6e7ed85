r"""Writes a generated StackOverflow file in TFF's schema (not real data).

The three files `fedjax_core.data.datasets.tff_stackoverflow` reads, with the
real file's layout and population but made-up text
(`scripts.benchmarks.stackoverflow_files`), for the `stackoverflow_shape`
benchmark and for trying the loader where the real data (tens of GB) cannot
be fetched.

Examples:
  python -m scripts.make_stackoverflow_sqlite --clients=342477 \
      --examples_per_client=2 --out=/tmp/so
"""

import os

from absl import app
from absl import flags

from fedjax_core.data.datasets import tff_stackoverflow as so
from scripts.benchmarks import stackoverflow_files

_CLIENTS = flags.DEFINE_integer('clients', 342_477,
                                'Training clients (the real file: 342,477).')
_EXAMPLES = flags.DEFINE_integer('examples_per_client', 2,
                                 'Training examples per client.')
_TEST_FRACTION = flags.DEFINE_float(
    'test_fraction', 0.6, 'Share of the training clients with a test '
    'example (the real file: 204,088 of 342,477).')
_HELDOUT = flags.DEFINE_integer(
    'heldout_clients', None, 'Held-out clients; default clients // 9.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the generated text.')
_OUT = flags.DEFINE_string('out', None, 'Folder to write the files into.')


def main(argv):
  del argv
  if not _OUT.value:
    raise app.UsageError('--out is required.')
  existing = os.path.join(_OUT.value, so.SQLITE_FILE)
  if os.path.exists(existing):
    raise app.UsageError(f'{existing} exists; delete it or choose another '
                         '--out.')
  stackoverflow_files.make_files(_OUT.value, _CLIENTS.value,
                                 _EXAMPLES.value, _TEST_FRACTION.value,
                                 _HELDOUT.value, _SEED.value)
  print(f'Wrote {so.SQLITE_FILE}, {so.WORD_COUNT_FILE} and '
        f'{so.TAG_COUNT_FILE} into {_OUT.value}.')


if __name__ == '__main__':
  app.run(main)
