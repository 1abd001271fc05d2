"""A small rank-1 CNN for quick image experiments (the built-in digits data, CPU smoke runs)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from rank1.config import Rank1Config
from rank1.models.common import batch_norm, conv_layer, dense_layer


@dataclass
class SmallCNNConfig:
    """Small CNN configuration; defaults suit 16x16 grayscale digits.

    Three 3x3 conv stages (conv, shared BatchNorm, ReLU; 2x2 max-pool after the first two),
    global average pooling and a linear classifier. Global pooling makes the network
    independent of the image size.

    Attributes:
        in_channels: Image channels (1 for digits).
        num_classes: Output classes.
        channels: Output channels of the three conv stages.
        bayesian: Rank-1 layers when True, ordinary ``nn.Conv2d``/``nn.Linear`` when False.
        rank1: Factor settings (the CIFAR defaults: prior N(1, 0.1^2), K=4).
    """

    in_channels: int = 1
    num_classes: int = 10
    channels: tuple[int, int, int] = (16, 32, 64)
    bayesian: bool = True
    rank1: Rank1Config = field(default_factory=Rank1Config)


class SmallCNN(nn.Module):
    """A three-stage CNN, rank-1 (every conv and the head) or deterministic.

    Args:
        config: A :class:`SmallCNNConfig`.

    Shape:
        - Input: ``(K * B, C, H, W)`` member-major tiled images for the rank-1 model,
          ``(B, C, H, W)`` for the deterministic one (H, W >= 4).
        - Output: ``(K * B, num_classes)`` logits (``(B, num_classes)`` deterministic).
    """

    def __init__(self, config: SmallCNNConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SmallCNNConfig()
        if len(config.channels) != 3:
            raise ValueError(f"channels must have 3 entries, got {config.channels}")
        rc = config.rank1 if config.bayesian else None
        layers: list[nn.Module] = []
        c_in = config.in_channels
        for i, c_out in enumerate(config.channels):
            # Convs are bias-free: the BatchNorm that follows has its own shift.
            layers += [conv_layer(rc, c_in, c_out, 3, 1, 1), batch_norm(c_out), nn.ReLU()]
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = dense_layer(rc, c_in, config.num_classes, weight_init="he_normal")

    @property
    def ensemble_size(self) -> int:
        """K for the rank-1 model, 1 for the deterministic one."""
        return self.config.rank1.ensemble_size if self.config.bayesian else 1

    def forward(self, x: Tensor) -> Tensor:
        """Map a batch to logits (see the class docstring for shapes)."""
        y = self.pool(self.features(x))
        return self.head(torch.flatten(y, 1))
