"""Batches of whole stays: padded to the longest of the batch, with all their samples.

A batch is a set of stays (bucketed by length, so padding stays small) run in one causal
pass, and every sample of those stays is read from that one pass (``rank1.models.StayBatch``
gathers the model output at each sample's step). Each stay is padded only up to the last row
its samples read. The trainer takes a :class:`StayBatches` like a DataLoader: it has a
length, yields ``(StayBatch, target)`` and orders each epoch by ``(seed, epoch)`` alone, so a
resumed run sees the same batches.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from pipeline.tasks.data import TaskData, TaskSpec
from rank1.models import StayBatch

#: Batches whose stays are drawn together and sorted by length before they are cut.
DEFAULT_CHUNK_BATCHES = 50


class StayBatches:
    """``(StayBatch, target)`` batches of ``batch_size`` stays over one split.

    Training order (``shuffle=True``): each epoch permutes the stays that have samples
    (seeded by ``seed * 1_000_003 + epoch``), sorts each chunk of ``chunk_batches`` batches
    by length, cuts it into batches and shuffles the batches. Evaluation order
    (``shuffle=False``): all stays sorted by length; :attr:`sample_order` says which sample
    of the split each output row is.

    Args:
        data: The split.
        spec: The task (target dtype: int64 classes for a categorical loss, else float32).
        batch_size: Stays per batch.
        shuffle: Training order (else the fixed evaluation order).
        seed: The run's seed (the trainer sets it with :meth:`set_seed`).
        chunk_batches: Batches per length-sorted chunk (training order).
    """

    def __init__(
        self,
        data: TaskData,
        spec: TaskSpec,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        chunk_batches: int = DEFAULT_CHUNK_BATCHES,
    ) -> None:
        if batch_size < 1 or chunk_batches < 1:
            raise ValueError("batch_size and chunk_batches must be >= 1")
        self.data, self.batch_size, self.shuffle = data, batch_size, shuffle
        self.seed, self.chunk_batches, self.epoch = seed, chunk_batches, 0
        stay, step, target = data.samples()
        dtype = np.int64 if spec.likelihood == "categorical" else np.float32
        # Samples grouped by stay: stay i's are by_stay[start[i]:start[i + 1]].
        self._by_stay = np.argsort(stay, kind="stable")
        self._start = np.searchsorted(stay[self._by_stay], np.arange(data.n_stays + 1))
        self._step, self._target = step, target.astype(dtype)
        counts = np.diff(self._start)
        self._stays = np.flatnonzero(counts > 0)  # stays with at least one sample
        # Rows a stay's samples read: up to its latest sample step.
        self._rows = np.zeros(data.n_stays, dtype=np.int64)
        np.maximum.at(self._rows, stay, step + 1)
        self._offsets = np.asarray(data.offsets, dtype=np.int64)
        self._values = np.asarray(data.values, dtype=np.float32)
        if not len(self._stays):
            raise ValueError("the split has no samples")

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order iteration yields (called by the trainer)."""
        self.epoch = epoch

    def set_seed(self, seed: int) -> None:
        """Select the run's seed (called by the trainer)."""
        self.seed = seed

    def __len__(self) -> int:
        return -(-len(self._stays) // self.batch_size)

    def batch_stays(self, epoch: int | None = None) -> list[np.ndarray]:
        """The stays of each batch of an epoch, in order."""
        stays = self._stays
        size = self.batch_size
        if not self.shuffle:
            order = stays[np.argsort(self._rows[stays], kind="stable")]
            return [order[i : i + size] for i in range(0, len(order), size)]
        epoch = self.epoch if epoch is None else epoch
        rng = np.random.default_rng((self.seed * 1_000_003 + epoch) % 2**64)
        order = rng.permutation(stays)
        chunk = size * self.chunk_batches
        batches: list[np.ndarray] = []
        for lo in range(0, len(order), chunk):
            part = order[lo : lo + chunk]
            part = part[np.argsort(self._rows[part], kind="stable")]
            batches.extend(part[i : i + size] for i in range(0, len(part), size))
        return [batches[i] for i in rng.permutation(len(batches))]

    @property
    def sample_order(self) -> np.ndarray:
        """``(n,)`` the split's sample index of each output row, in evaluation order."""
        parts = [self._samples_of(stays) for stays in self.batch_stays()]
        return np.concatenate(parts)

    def _samples_of(self, stays: np.ndarray) -> np.ndarray:
        return np.concatenate([self._by_stay[self._start[i] : self._start[i + 1]] for i in stays])

    def batch(self, stays: np.ndarray) -> tuple[StayBatch, Tensor]:
        """The padded :class:`StayBatch` of ``stays`` and the targets of their samples."""
        rows = self._rows[stays]
        steps = int(rows.max())
        values = np.zeros((len(stays), steps, self._values.shape[1]), dtype=np.float32)
        counts = np.diff(self._start)[stays]
        for b, (i, n) in enumerate(zip(stays, rows, strict=True)):
            values[b, :n] = self._values[self._offsets[i] : self._offsets[i] + n]
        samples = self._samples_of(stays)
        batch = StayBatch(
            torch.from_numpy(values),
            torch.from_numpy(rows),
            torch.from_numpy(np.repeat(np.arange(len(stays), dtype=np.int64), counts)),
            torch.from_numpy(self._step[samples]),
        )
        return batch, torch.from_numpy(self._target[samples])

    def __iter__(self) -> Iterator[tuple[StayBatch, Tensor]]:
        for stays in self.batch_stays():
            yield self.batch(stays)
