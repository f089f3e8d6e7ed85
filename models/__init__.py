"""Flax models for the federated simulator, looked up by name.

See `models.registry.get_model`. Architectures follow McMahan et al. 2017,
"Communication-Efficient Learning of Deep Networks from Decentralized Data".
"""

from models.cnn import CifarCNN, MnistCNN, build_cnn
from models.logreg import LogisticRegression
from models.mlp import MLP
from models.registry import MODEL_NAMES, Model, get_model

__all__ = [
    'CifarCNN',
    'LogisticRegression',
    'MLP',
    'MODEL_NAMES',
    'MnistCNN',
    'Model',
    'build_cnn',
    'get_model',
]
