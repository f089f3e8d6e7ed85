"""Flax models for the federated simulator, looked up by name.

See `models.registry.get_model`. Architectures follow McMahan et al. 2017,
"Communication-Efficient Learning of Deep Networks from Decentralized Data",
plus transformers: Vaswani et al. 2017, "Attention Is All You Need"; the
GPT-2 decoder of Radford et al. 2019; the ViT of Dosovitskiy et al. 2021, "An
Image is Worth 16x16 Words"; and the text models of the federated benchmarks:
the stacked LSTMs of LEAF (Caldas et al. 2018) and Reddi et al. 2021,
"Adaptive Federated Optimization", and its StackOverflow tag-prediction
logistic regression on a bag of words.
"""

from models.attention import TransformerBlock
from models.bow import BagOfWordsDense, BagOfWordsLogReg
from models.cnn import CifarCNN, MnistCNN, build_cnn
from models.logreg import LogisticRegression
from models.lstm import LSTMModel
from models.mlp import MLP
from models.registry import (MODEL_NAMES, PER_POSITION_MODELS, Model,
                             get_model, head_layers)
from models.transformer import CharTransformer, build_transformer
from models.vit import ViT, build_vit

__all__ = [
    'BagOfWordsDense',
    'BagOfWordsLogReg',
    'CharTransformer',
    'CifarCNN',
    'LSTMModel',
    'LogisticRegression',
    'MLP',
    'MODEL_NAMES',
    'MnistCNN',
    'Model',
    'PER_POSITION_MODELS',
    'TransformerBlock',
    'ViT',
    'build_cnn',
    'build_transformer',
    'build_vit',
    'get_model',
    'head_layers',
]
