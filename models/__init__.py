"""Flax models for the federated simulator, looked up by name.

See `models.registry.get_model`. Architectures follow McMahan et al. 2017,
"Communication-Efficient Learning of Deep Networks from Decentralized Data",
plus transformers: Vaswani et al. 2017, "Attention Is All You Need"; the
GPT-2 decoder of Radford et al. 2019; the ViT of Dosovitskiy et al. 2021, "An
Image is Worth 16x16 Words".
"""

from models.attention import TransformerBlock
from models.cnn import CifarCNN, MnistCNN, build_cnn
from models.logreg import LogisticRegression
from models.mlp import MLP
from models.registry import MODEL_NAMES, Model, get_model, head_layers
from models.transformer import CharTransformer, build_transformer
from models.vit import ViT, build_vit

__all__ = [
    'CharTransformer',
    'CifarCNN',
    'LogisticRegression',
    'MLP',
    'MODEL_NAMES',
    'MnistCNN',
    'Model',
    'TransformerBlock',
    'ViT',
    'build_cnn',
    'build_transformer',
    'build_vit',
    'get_model',
    'head_layers',
]
