"""Built-in federated datasets; see `registry.load_dataset`."""

from fedjax_core.datasets.digits import load_digits
from fedjax_core.datasets.registry import DATASET_NAMES
from fedjax_core.datasets.registry import default_partition
from fedjax_core.datasets.registry import federate
from fedjax_core.datasets.registry import load_central
from fedjax_core.datasets.registry import load_dataset
from fedjax_core.datasets.synthetic import load_synthetic
from fedjax_core.datasets.tfds_images import DatasetNotPreparedError
from fedjax_core.datasets.tfds_images import TFDS_NAMES
from fedjax_core.datasets.tfds_images import load_tfds

__all__ = ['DATASET_NAMES', 'DatasetNotPreparedError', 'TFDS_NAMES',
           'default_partition', 'federate', 'load_central', 'load_dataset',
           'load_digits', 'load_synthetic', 'load_tfds']
