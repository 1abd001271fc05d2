"""Rank-1 models and their deterministic twins, with dataclass configs of the paper's recipes."""

from rank1.models.ehr import EHRConfig, EHRModel
from rank1.models.resnet import ResNet50, ResNet50Config
from rank1.models.small_cnn import SmallCNN, SmallCNNConfig
from rank1.models.wide_resnet import WideResNet, WideResNetConfig

__all__ = [
    "EHRConfig",
    "EHRModel",
    "ResNet50",
    "ResNet50Config",
    "SmallCNN",
    "SmallCNNConfig",
    "WideResNet",
    "WideResNetConfig",
]
