"""The workloads of `scripts.benchmark`, one module each, and the harness
and setups they share."""
