"""Federated algorithms, each built only from fedjax_core pieces.

Every factory is importable from here by its name (`from algorithms import
fedspeed`); `algorithms.registry.FACTORIES` lists them.
"""

from algorithms import registry as _registry
from algorithms.registry import ALGORITHM_NAMES
from algorithms.registry import DECENTRALIZED_ALGORITHMS
from algorithms.registry import LORA_ALGORITHMS
from algorithms.registry import PERSONAL_ALGORITHMS
from algorithms.registry import SPLIT_MODEL_ALGORITHMS
from algorithms.registry import build_algorithm
from algorithms.registry import default_personal_layers
from algorithms.registry import hyperparameters
from algorithms.registry import hyperparameters_for
from algorithms.registry import parse_hyperparameters

globals().update(_registry.FACTORIES)

__all__ = (
    'ALGORITHM_NAMES',
    'DECENTRALIZED_ALGORITHMS',
    'LORA_ALGORITHMS',
    'PERSONAL_ALGORITHMS',
    'SPLIT_MODEL_ALGORITHMS',
    'build_algorithm',
    'default_personal_layers',
    'hyperparameters',
    'hyperparameters_for',
    'parse_hyperparameters',
    *sorted(_registry.FACTORIES),
)
