"""Federated algorithms, each built only from fedjax_core pieces."""

from algorithms.fedavg import fedavg
from algorithms.registry import ALGORITHM_NAMES
from algorithms.registry import build_algorithm
from algorithms.registry import default_server_lr

__all__ = ('ALGORITHM_NAMES', 'build_algorithm', 'default_server_lr', 'fedavg')
