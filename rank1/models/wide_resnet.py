"""WRN-28-10 for CIFAR, rank-1 and deterministic (spec section 4.1)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rank1.config import Rank1Config
from rank1.models.common import batch_norm, conv_layer, dense_layer


@dataclass
class WideResNetConfig:
    """WRN configuration; defaults are the paper's CIFAR-10 WRN-28-10 recipe.

    Attributes:
        depth: 6n + 4 layers (28 gives 4 blocks per group).
        width_multiplier: Widens the 16/32/64 groups (10 gives 160/320/640).
        num_classes: 10 (CIFAR-10) or 100 (CIFAR-100).
        in_channels: Image channels.
        bayesian: Rank-1 layers when True, ordinary ``nn.Conv2d``/``nn.Linear`` when False.
        rank1: Factor settings (prior N(1, 0.1^2), random-sign init 0.5, K=4).
    """

    depth: int = 28
    width_multiplier: int = 10
    num_classes: int = 10
    in_channels: int = 3
    bayesian: bool = True
    rank1: Rank1Config = field(default_factory=Rank1Config)


class _BasicBlock(nn.Module):
    """Pre-activation block; the projection shortcut takes the raw block input."""

    def __init__(self, rc: Rank1Config | None, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.bn1 = batch_norm(c_in)
        self.conv1 = conv_layer(rc, c_in, c_out, 3, stride, 1)
        self.bn2 = batch_norm(c_out)
        self.conv2 = conv_layer(rc, c_out, c_out, 3, 1, 1)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            conv_layer(rc, c_in, c_out, 1, stride, 0) if (c_in != c_out or stride != 1) else None
        )

    def forward(self, x: Tensor) -> Tensor:
        """Map a batch to logits (see the class docstring for shapes)."""
        y = self.conv1(self.relu(self.bn1(x)))
        y = self.conv2(self.relu(self.bn2(y)))
        return y + (x if self.shortcut is None else self.shortcut(x))


class WideResNet(nn.Module):
    """Wide ResNet (Zagoruyko & Komodakis 2016) as in the rank-1 paper's CIFAR experiments.

    Args:
        config: A :class:`WideResNetConfig`.

    Shape:
        - Input: ``(K * B, C, 32, 32)`` member-major tiled images for the rank-1 model,
          ``(B, C, 32, 32)`` for the deterministic one.
        - Output: ``(K * B, num_classes)`` logits (``(B, num_classes)`` deterministic).
    """

    def __init__(self, config: WideResNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or WideResNetConfig()
        if (config.depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {config.depth}")
        rc = config.rank1 if config.bayesian else None
        n = (config.depth - 4) // 6
        widths = [16 * config.width_multiplier * m for m in (1, 2, 4)]
        self.stem = conv_layer(rc, config.in_channels, 16, 3, 1, 1)
        blocks, c_in = [], 16
        for width, stride in zip(widths, (1, 2, 2), strict=True):
            for i in range(n):
                blocks.append(_BasicBlock(rc, c_in, width, stride if i == 0 else 1))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.bn = batch_norm(c_in)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = dense_layer(rc, c_in, config.num_classes, weight_init="he_normal")

    @property
    def ensemble_size(self) -> int:
        """K for the rank-1 model, 1 for the deterministic one."""
        return self.config.rank1.ensemble_size if self.config.bayesian else 1

    def forward(self, x: Tensor) -> Tensor:
        """Map a batch to logits (see the class docstring for shapes)."""
        y = self.blocks(self.stem(x))
        y = self.pool(self.relu(self.bn(y)))
        return self.head(torch.flatten(y, 1))
