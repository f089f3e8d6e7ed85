"""Federated algorithms, each built only from fedjax_core pieces."""

from algorithms.fedamd import fedamd
from algorithms.fedavg import fedavg
from algorithms.fedcm import fedcm
from algorithms.fedcm import mofedsam
from algorithms.feddyn import feddyn
from algorithms.fedlora import fedlora
from algorithms.fedlora import ffa_lora
from algorithms.fedprox import fedprox
from algorithms.fedsam import fedasam
from algorithms.fedsam import fedsam
from algorithms.fedsmoo import fedsmoo
from algorithms.fedspeed import fedspeed
from algorithms.registry import ALGORITHM_NAMES
from algorithms.registry import LORA_ALGORITHMS
from algorithms.registry import build_algorithm
from algorithms.registry import hyperparameters
from algorithms.registry import hyperparameters_for
from algorithms.registry import parse_hyperparameters
from algorithms.scaffold import fedgamma
from algorithms.scaffold import scaffold
from algorithms.scaffold import scaffold_m

__all__ = (
    'ALGORITHM_NAMES',
    'LORA_ALGORITHMS',
    'build_algorithm',
    'fedamd',
    'fedasam',
    'fedavg',
    'fedcm',
    'feddyn',
    'fedgamma',
    'fedlora',
    'fedprox',
    'fedsam',
    'fedsmoo',
    'fedspeed',
    'ffa_lora',
    'hyperparameters',
    'hyperparameters_for',
    'mofedsam',
    'parse_hyperparameters',
    'scaffold',
    'scaffold_m',
)
