"""Built-in federated datasets; see `registry.load_dataset`."""

from fedjax_core.datasets.digits import load_digits
from fedjax_core.datasets.registry import DATASET_NAMES
from fedjax_core.datasets.registry import load_dataset
from fedjax_core.datasets.synthetic import load_synthetic

__all__ = ['DATASET_NAMES', 'load_dataset', 'load_digits', 'load_synthetic']
