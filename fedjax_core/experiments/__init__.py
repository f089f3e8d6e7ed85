"""Experiment tooling above the engine: hyperparameter grids and the
reports and plots of finished runs."""
