"""Built-in datasets by name.

'digits': scikit-learn's UCI digits with an IID or Dirichlet label-skew
partition (Hsu et al., 2019, arXiv:1909.06335). 'synthetic': Synthetic(alpha,
beta) of FedProx (Li et al., 2020, "Federated Optimization in Heterogeneous
Networks", arXiv:1812.06127).
"""

from fedjax_core.data import FederatedDataset
from fedjax_core.datasets.digits import load_digits
from fedjax_core.datasets.synthetic import load_synthetic

DATASET_NAMES = ('digits', 'synthetic')


def load_dataset(name: str,
                 *,
                 num_clients: int | None = None,
                 seed: int = 0,
                 partition: str = 'dirichlet',
                 dirichlet_alpha: float = 0.5,
                 synthetic_alpha: float = 1.0,
                 synthetic_beta: float = 1.0) -> FederatedDataset:
  """Loads a built-in federated dataset.

  Args:
    name: one of `DATASET_NAMES`.
    num_clients: number of clients; None keeps the loader's default (20 for
      digits, 30 for synthetic).
    seed: seed of every random choice of the loader.
    partition: digits only: 'dirichlet' or 'iid'.
    dirichlet_alpha: digits only: Dirichlet concentration of the partition.
    synthetic_alpha: synthetic only: spread of the devices' models.
    synthetic_beta: synthetic only: spread of the devices' inputs.

  Returns:
    The `FederatedDataset`.

  Raises:
    ValueError: on an unknown `name` or invalid loader arguments.
  """
  client_kwargs = {} if num_clients is None else {'num_clients': num_clients}
  if name == 'digits':
    return load_digits(partition=partition, dirichlet_alpha=dirichlet_alpha,
                       seed=seed, **client_kwargs)
  if name == 'synthetic':
    return load_synthetic(alpha=synthetic_alpha, beta=synthetic_beta,
                          seed=seed, **client_kwargs)
  raise ValueError(
      f"Unknown dataset '{name}'; valid datasets: {', '.join(DATASET_NAMES)}.")
