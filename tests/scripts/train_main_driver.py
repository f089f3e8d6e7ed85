"""Runs scripts/train.py's `main` on several flag sets in one process.

Usage: python train_main_driver.py CASES_JSON. CASES_JSON is a list of
argument lists. The last line printed is a JSON list with, for each case,
{"exit": MESSAGE} for a clean exit (sys.exit, or a flag error as absl
reports it), {"exit": null} for a run that finished, or {"traceback": TEXT}
for anything that escaped `main`, and "wrote": whether the case's --workdir
exists afterwards. One process serves every case, so the tests of train's
errors pay for jax's import once.
"""

import json
import os
import sys
import traceback

from absl import app
from absl import flags

from scripts import train


def _run(argv: list[str]) -> dict:
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS(['train', *argv])
    train.main(['train'])
  except SystemExit as e:
    return {'exit': None if e.code in (None, 0) else str(e.code)}
  except (flags.Error, app.UsageError) as e:
    return {'exit': str(e)}
  except Exception:  # pylint: disable=broad-except
    return {'traceback': traceback.format_exc()}
  return {'exit': None}


def _outcome(argv: list[str]) -> dict:
  workdirs = [a.split('=', 1)[1] for a in argv if a.startswith('--workdir=')]
  outcome = _run(argv)
  outcome['wrote'] = any(os.path.exists(w) for w in workdirs)
  return outcome


if __name__ == '__main__':
  print(json.dumps([_outcome(argv) for argv in json.loads(sys.argv[1])]))
