"""Building blocks shared by the models: each is rank-1 or plain from one switch.

``rank1_config`` set gives the rank-1 layer with those factor settings; ``None`` gives the
ordinary torch layer with the same initialisation, so a deterministic twin differs from
its rank-1 model only in the factors.
"""

from __future__ import annotations

from torch import nn

from rank1.config import Rank1Config
from rank1.layers import Rank1Conv2d, Rank1Linear, he_normal_, init_dense_weight_


def conv_layer(
    rank1_config: Rank1Config | None, c_in: int, c_out: int, k: int, stride=1, padding=0
) -> nn.Module:
    """A bias-free conv with Keras ``he_normal`` init (every conv of the paper's models)."""
    if rank1_config is not None:
        return Rank1Conv2d(c_in, c_out, k, stride, padding, bias=False, rank1=rank1_config)
    conv = nn.Conv2d(c_in, c_out, k, stride, padding, bias=False)
    he_normal_(conv.weight, c_in * k * k)
    return conv


def dense_layer(
    rank1_config: Rank1Config | None,
    d_in: int,
    d_out: int,
    weight_init: str | float = "glorot_uniform",
) -> nn.Module:
    """A dense layer with a (per-member) zero bias; ``weight_init`` as in ``Rank1Linear``."""
    if rank1_config is not None:
        return Rank1Linear(d_in, d_out, rank1=rank1_config, weight_init=weight_init)
    layer = nn.Linear(d_in, d_out)
    init_dense_weight_(layer.weight, weight_init)
    nn.init.zeros_(layer.bias)
    return layer


def batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm shared by all members (eps 1e-5, Keras momentum 0.9 = torch 0.1)."""
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.1)
