"""Where this process runs: the torchrun environment, the device and the process group."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pipeline.config import check_device


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a data-parallel job (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process logs, shows progress and writes checkpoints."""
        return self.rank == 0


def dist_info() -> DistInfo:
    """Read the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    """``"auto"`` -> CUDA when present (this process's local GPU), else CPU.

    Raises:
        pipeline.config.DeviceUnavailableError: For a CUDA device this machine lacks (a
            ValueError, so the flows do not retry it).
    """
    info = info or dist_info()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(name)
    device = torch.device(name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return device


def init_distributed(device: torch.device, info: DistInfo) -> bool:
    """Join the process group when launched by torchrun; return whether this call joined."""
    if info.world_size <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True
