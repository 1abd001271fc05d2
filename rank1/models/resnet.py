"""ResNet-50 (v1.5) for ImageNet, rank-1 and deterministic (spec section 4.2)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rank1.config import Rank1Config
from rank1.models.common import batch_norm, conv_layer, dense_layer


def _imagenet_rank1() -> Rank1Config:
    return Rank1Config(prior_stddev=0.05, random_sign_init=0.75)


@dataclass
class ResNet50Config:
    """ResNet-50 configuration; defaults are the paper's ImageNet recipe.

    Attributes:
        num_classes: 1000 for ImageNet.
        in_channels: Image channels.
        layers: Bottleneck blocks per stage.
        bayesian: Rank-1 layers when True, ordinary layers when False.
        rank1: Factor settings (prior N(1, 0.05^2), random-sign init 0.75, K=4).
    """

    num_classes: int = 1000
    in_channels: int = 3
    layers: tuple[int, int, int, int] = (3, 4, 6, 3)
    bayesian: bool = True
    rank1: Rank1Config = field(default_factory=_imagenet_rank1)


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, rc: Rank1Config | None, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = conv_layer(rc, c_in, width, 1)
        self.bn1 = batch_norm(width)
        # v1.5: the stride sits on the 3x3 conv, not the first 1x1.
        self.conv2 = conv_layer(rc, width, width, 3, stride, 1)
        self.bn2 = batch_norm(width)
        self.conv3 = conv_layer(rc, width, c_out, 1)
        self.bn3 = batch_norm(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                conv_layer(rc, c_in, c_out, 1, stride), batch_norm(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        """Map a batch to logits (see the class docstring for shapes)."""
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    """ResNet-50 v1.5 with every conv and the classifier rank-1 (BatchNorm shared).

    Args:
        config: A :class:`ResNet50Config`.

    Shape:
        - Input: ``(K * B, 3, 224, 224)`` tiled (rank-1) or ``(B, 3, 224, 224)``.
        - Output: ``(K * B, num_classes)`` or ``(B, num_classes)`` logits.
    """

    def __init__(self, config: ResNet50Config | None = None) -> None:
        super().__init__()
        self.config = config = config or ResNet50Config()
        rc = config.rank1 if config.bayesian else None
        # Keras pads 3 then runs a valid 7x7/2 conv: the same as padding=3.
        self.stem = nn.Sequential(
            conv_layer(rc, config.in_channels, 64, 7, 2, 3),
            batch_norm(64),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, padding=1),
        )
        stages, c_in = [], 64
        for i, blocks in enumerate(config.layers):
            width = 64 * 2**i
            for j in range(blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                stages.append(_Bottleneck(rc, c_in, width, stride))
                c_in = width * _Bottleneck.expansion
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        # The reference initialises the fc1000 kernel from N(0, 0.01^2).
        self.head = dense_layer(rc, c_in, config.num_classes, weight_init=0.01)

    @property
    def ensemble_size(self) -> int:
        """K for the rank-1 model, 1 for the deterministic one."""
        return self.config.rank1.ensemble_size if self.config.bayesian else 1

    def forward(self, x: Tensor) -> Tensor:
        """Map a batch to logits (see the class docstring for shapes)."""
        y = self.pool(self.stages(self.stem(x)))
        return self.head(torch.flatten(y, 1))
