"""Rank-1 models and their deterministic twins, with dataclass configs of the paper's recipes.

Every model here (and a :class:`DeepEnsemble` of them) is described by a :class:`ModelSpec`
(:func:`model_spec`) and rebuilt from it with :func:`build`: a stored model is its weights
plus that spec as JSON, never a pickled object.
"""

from rank1.models.deep_ensemble import DeepEnsemble
from rank1.models.ehr import EHRConfig, EHRModel, StayBatch
from rank1.models.resnet import ResNet50, ResNet50Config
from rank1.models.small_cnn import SmallCNN, SmallCNNConfig
from rank1.models.spec import (
    DEEP_ENSEMBLE,
    KINDS,
    DeepEnsembleConfig,
    ModelSpec,
    ModelSpecError,
    build,
    model_spec,
)
from rank1.models.wide_resnet import WideResNet, WideResNetConfig

__all__ = [
    "DEEP_ENSEMBLE",
    "KINDS",
    "DeepEnsemble",
    "DeepEnsembleConfig",
    "EHRConfig",
    "EHRModel",
    "ModelSpec",
    "ModelSpecError",
    "ResNet50",
    "ResNet50Config",
    "SmallCNN",
    "SmallCNNConfig",
    "StayBatch",
    "WideResNet",
    "WideResNetConfig",
    "build",
    "model_spec",
]
