"""Training batches that resume by step: shuffled tensors or a DataLoader; validation data."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import Tensor

from pipeline.train.distributed import DistInfo

#: ``(x, y)`` tensors of unique examples, or an iterable (a DataLoader) of ``(x, y)`` batches.
Data = tuple[Tensor, Tensor] | Iterable


#: The tensor batches passed ``seed * 1_000_003 + epoch`` to the generator as is (torch
#: reduces it modulo 2**64, a negative one too) and the image sampler reduced it modulo
#: 2**63: the two agree for seeds below 9.2e12. Modulo 2**64 keeps the tensor order of
#: every seed, and the image order of every seed below that bound.
_SEED_MODULUS = 2**64


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """The trainer's one epoch order: seeded, sharded over processes, resumable by step.

    The order of epoch e is ``randperm(n)`` drawn from a generator seeded with
    ``seed * 1_000_003 + e``; its first ``steps_per_epoch * batch_size`` indices make the
    epoch's batches (the last partial batch is dropped) and each of W processes takes
    every W-th index of each batch, so the W shares of a step are disjoint, every process
    runs the same number of steps, and the averaged gradient is the single-process one.
    A position in the run is just the step counter. Both data paths use it: the tensor
    batches directly (:meth:`batches_from`) and an image DataLoader as its ``sampler``
    (``__iter__``, after :meth:`set_epoch`).

    Args:
        n: Number of training examples.
        batch_size: Unique examples per step, all processes together.
        world_size: Data-parallel processes.
        rank: This process.
        seed: The run's seed. None: the trainer sets it (:meth:`set_seed`) from the config
            (each ensemble member's own); standing alone, ``torch.initial_seed()``.

    Raises:
        ValueError: When the batch cannot be split evenly over the processes, or there is
            less than one batch of data.
    """

    def __init__(
        self, n: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int | None = None
    ) -> None:
        if batch_size % world_size:
            raise ValueError(
                f"{batch_size} unique examples per step cannot be split over {world_size} processes"
            )
        self.steps_per_epoch = n // batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"{n} training examples are fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.world_size, self.rank = n, batch_size, world_size, rank
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order ``__iter__`` yields (called by the trainer)."""
        self.epoch = epoch

    def set_seed(self, seed: int) -> None:
        """Select the run's seed (called by the trainer before the first epoch)."""
        self.seed = seed

    def permutation(self, epoch: int) -> Tensor:
        """The ``(n,)`` order of all examples in ``epoch``."""
        seed = torch.initial_seed() if self.seed is None else self.seed
        generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % _SEED_MODULUS)
        return torch.randperm(self.n, generator=generator)

    def shards(self, epoch: int) -> Tensor:
        """``(steps_per_epoch, batch_size // world_size)``: this process's rows per step."""
        order = self.permutation(epoch)[: self.steps_per_epoch * self.batch_size]
        batches = order.view(self.steps_per_epoch, self.batch_size)
        return batches[:, self.rank :: self.world_size]

    def batches_from(self, step: int) -> Iterator[Tensor]:
        """This process's rows ``(batch_size // world_size,)`` of every step from ``step`` on."""
        epoch, position = divmod(step, self.steps_per_epoch)
        while True:
            rows = self.shards(epoch)
            for i in range(position, self.steps_per_epoch):
                yield rows[i]
            epoch, position = epoch + 1, 0

    def __len__(self) -> int:
        return self.steps_per_epoch * self.batch_size // self.world_size

    def __iter__(self) -> Iterator[int]:
        # A DataLoader of batch_size // world_size then cuts exactly the rows of shards().
        return iter(self.shards(self.epoch).reshape(-1).tolist())


class TensorBatches:
    """Shuffled unique batches of tensors in the :class:`EpochShuffleSampler` order.

    Args:
        x: ``(N, ...)`` inputs of the unique training examples.
        y: ``(N,)`` labels.
        batch: Unique examples per step, all processes together.
        seed: The run's seed.
        info: This process's place in the job.
    """

    def __init__(self, x: Tensor, y: Tensor, batch: int, seed: int, info: DistInfo) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        self.order = EpochShuffleSampler(x.shape[0], batch, info.world_size, info.rank, seed)
        self.x, self.y = x, y
        self.steps_per_epoch = self.order.steps_per_epoch

    def from_step(self, step: int) -> Iterator[tuple[Tensor, Tensor]]:
        """This process's ``(x, y)`` share of every batch from ``step`` on, endlessly."""
        for rows in self.order.batches_from(step):
            yield self.x[rows], self.y[rows]


class LoaderBatches:
    """Batches from a DataLoader; resuming skips the batches already seen this epoch.

    Exact only if the loader's order depends on nothing but the epoch (a sampler with
    ``set_epoch``, e.g. :class:`EpochShuffleSampler` or ``DistributedSampler``, or a seeded
    generator re-seeded per epoch). An :class:`EpochShuffleSampler` gets the run's seed.
    An iterable that orders its own batches (``pipeline.tasks.StayBatches``) is treated as
    its own sampler: its ``set_seed`` and ``set_epoch`` are called the same way.

    Args:
        loader: A DataLoader (anything with ``len``) of this process's ``(x, y)`` batches.
        seed: The run's seed.
    """

    def __init__(self, loader: Iterable, seed: int) -> None:
        self.loader = loader
        self.steps_per_epoch = len(loader)  # type: ignore[arg-type]
        sampler = _sampler_of(loader)
        if isinstance(sampler, EpochShuffleSampler) or sampler is loader:
            # The config's seed, the same on every process: torch.initial_seed() there is
            # offset by the rank (per-process noise), which would give each process its
            # own permutation and overlapping shares.
            sampler.set_seed(seed)

    def from_step(self, step: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The loader's batches from ``step`` on, endlessly."""
        epoch, position = divmod(step, self.steps_per_epoch)
        while True:
            sampler = _sampler_of(self.loader)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            for i, (x, y) in enumerate(self.loader):
                if i >= position:
                    yield x, y
            epoch, position = epoch + 1, 0


def _sampler_of(loader: Iterable) -> object:
    """A DataLoader's sampler, or the iterable itself when it seeds its own order."""
    sampler = getattr(loader, "sampler", None)
    if sampler is None and hasattr(loader, "set_epoch") and hasattr(loader, "set_seed"):
        return loader
    return sampler


def training_batches(
    train: Data, unique: int, seed: int, info: DistInfo
) -> TensorBatches | LoaderBatches:
    """Resumable batches of ``train``: ``unique`` examples per step when given tensors."""
    if isinstance(train, tuple) and len(train) == 2 and isinstance(train[0], Tensor):
        return TensorBatches(train[0], train[1], unique, seed, info)
    return LoaderBatches(train, seed)


def val_arrays(val: Data) -> tuple[Tensor | Iterable, Tensor]:
    """The validation inputs (tensor or loader, as given) and all their labels ``(N,)``."""
    if isinstance(val, tuple) and len(val) == 2 and isinstance(val[0], Tensor):
        return val[0], val[1]
    labels = torch.cat([torch.as_tensor(b[1]) for b in val])
    return val, labels
