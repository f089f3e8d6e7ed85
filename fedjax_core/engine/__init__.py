"""The engine: the compiled round (`rounds`), its placement on devices
(`placement`, `state_store`, `batching`, `local_training`), the run
(`simulation`, `vmapped_runs`) and the one run loop that does its I/O
(`driver`, `checkpointing`, `metrics_writer`, `evaluation`,
`distributed`)."""
