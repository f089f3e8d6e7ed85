"""Test helper: interrupting a run (a `Simulation` or `VmappedRuns`) at a
chosen round."""


def fail_at_round(run, round_to_fail, error):
  """Makes `run.run_round` raise `error` when that round would start."""
  run_round = run.run_round

  def failing():
    if run.completed_rounds + 1 == round_to_fail:
      raise error
    return run_round()

  run.run_round = failing
