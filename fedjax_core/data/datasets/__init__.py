"""Built-in federated datasets; see `registry.load_dataset`."""

from fedjax_core.data.datasets.digits import load_digits
from fedjax_core.data.datasets.huggingface import HFSource
from fedjax_core.data.datasets.registry import DATA_PARTS
from fedjax_core.data.datasets.registry import LOCAL_TESTS
from fedjax_core.data.datasets.registry import DATASET_NAMES
from fedjax_core.data.datasets.registry import check_holdout_clients
from fedjax_core.data.datasets.registry import check_local_test_fraction
from fedjax_core.data.datasets.registry import default_num_clients
from fedjax_core.data.datasets.registry import default_partition
from fedjax_core.data.datasets.registry import federate
from fedjax_core.data.datasets.registry import has_local_tests
from fedjax_core.data.datasets.registry import load_central
from fedjax_core.data.datasets.registry import load_dataset
from fedjax_core.data.datasets.registry import select_part
from fedjax_core.data.datasets.registry import subsample_test
from fedjax_core.data.datasets.synthetic import load_synthetic
from fedjax_core.data.datasets.text import TEXT_NAMES
from fedjax_core.data.datasets.text import VOCAB_SIZE
from fedjax_core.data.datasets.text import decode
from fedjax_core.data.datasets.text import encode
from fedjax_core.data.datasets.text import load_pydoc_topics
from fedjax_core.data.datasets.text import load_tfds_text
from fedjax_core.data.datasets.tfds_images import DatasetNotPreparedError
from fedjax_core.data.datasets.tfds_images import TFDS_NAMES
from fedjax_core.data.datasets.tfds_images import load_tfds

__all__ = ['DATASET_NAMES', 'DATA_PARTS', 'DatasetNotPreparedError',
           'HFSource', 'LOCAL_TESTS', 'has_local_tests',
           'TEXT_NAMES', 'TFDS_NAMES', 'VOCAB_SIZE',
           'check_holdout_clients', 'check_local_test_fraction', 'decode',
           'default_num_clients', 'default_partition', 'encode', 'federate',
           'load_central', 'load_dataset', 'load_digits',
           'load_pydoc_topics', 'load_synthetic', 'load_tfds',
           'load_tfds_text', 'select_part', 'subsample_test']
