"""Training batches that resume by step: shuffled tensors or a DataLoader; validation data."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from pipeline.train.distributed import DistInfo

#: ``(x, y)`` tensors of unique examples, or an iterable (a DataLoader) of ``(x, y)`` batches.
Data = tuple[Tensor, Tensor] | Iterable


def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class TensorBatches:
    """Shuffled unique batches of tensors, sharded over processes, resumable by step."""

    def __init__(self, x: Tensor, y: Tensor, batch: int, seed: int, info: DistInfo) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        if batch % info.world_size:
            raise ValueError(
                f"{batch} unique examples per step cannot be split over {info.world_size} processes"
            )
        self.x, self.y, self.batch, self.seed, self.info = x, y, batch, seed, info
        self.steps_per_epoch = x.shape[0] // batch  # the last partial batch is dropped
        if self.steps_per_epoch < 1:
            raise ValueError(f"{x.shape[0]} training examples are fewer than one batch of {batch}")

    def from_step(self, step: int) -> Iterator[tuple[Tensor, Tensor]]:
        """This process's ``(x, y)`` share of every batch from ``step`` on, endlessly."""
        epoch, position = divmod(step, self.steps_per_epoch)
        while True:
            order = _epoch_order(self.x.shape[0], self.seed, epoch)
            for i in range(position, self.steps_per_epoch):
                rows = order[i * self.batch : (i + 1) * self.batch]
                rows = rows[self.info.rank :: self.info.world_size]
                yield self.x[rows], self.y[rows]
            epoch, position = epoch + 1, 0


class LoaderBatches:
    """Batches from a DataLoader; resuming skips the batches already seen this epoch.

    Exact only if the loader's order depends on nothing but the epoch (a sampler with
    ``set_epoch``, e.g. ``DistributedSampler``, or a seeded generator re-seeded per epoch).
    """

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self.steps_per_epoch = len(loader)  # type: ignore[arg-type]

    def from_step(self, step: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The loader's batches from ``step`` on, endlessly."""
        epoch, position = divmod(step, self.steps_per_epoch)
        while True:
            sampler = getattr(self.loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            for i, (x, y) in enumerate(self.loader):
                if i >= position:
                    yield x, y
            epoch, position = epoch + 1, 0


def training_batches(
    train: Data, unique: int, seed: int, info: DistInfo
) -> TensorBatches | LoaderBatches:
    """Resumable batches of ``train``: ``unique`` examples per step when given tensors."""
    if isinstance(train, tuple) and len(train) == 2 and isinstance(train[0], Tensor):
        return TensorBatches(train[0], train[1], unique, seed, info)
    return LoaderBatches(train)


def val_arrays(val: Data) -> tuple[Tensor | Iterable, Tensor]:
    """The validation inputs (tensor or loader, as given) and all their labels ``(N,)``."""
    if isinstance(val, tuple) and len(val) == 2 and isinstance(val[0], Tensor):
        return val[0], val[1]
    labels = torch.cat([torch.as_tensor(b[1]) for b in val])
    return val, labels
