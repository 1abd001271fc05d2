"""A deep ensemble behind the rank-1 tiled-batch interface."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rank1.ensemble import untile


class DeepEnsemble(nn.Module):
    """K independently trained models behind the rank-1 tiled-batch interface.

    It takes the same tiled batch as a rank-1 model (member k reads rows
    ``[k*B, (k+1)*B)``), so it is predicted, logged and reloaded exactly like one.

    Args:
        members: The K trained models; each maps ``(B, ...)`` to ``(B, ...)`` outputs.

    Shape:
        - x: ``(K * B, ...)`` member-major tiled batch.
        - Output: ``(K * B, ...)``; rows ``[k*B, (k+1)*B)`` come from member k.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("a deep ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    @property
    def ensemble_size(self) -> int:
        """K, the number of members."""
        return len(self.members)

    def forward(self, x: Tensor) -> Tensor:
        """Run member k on its slice of the tiled batch (see the class docstring)."""
        chunks = untile(x, self.ensemble_size)
        return torch.cat([m(chunk) for m, chunk in zip(self.members, chunks, strict=True)], 0)
