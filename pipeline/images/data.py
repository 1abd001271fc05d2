"""Image data of the jobs: the resumable training sampler, loaders, and seeded evaluation.

Batch semantics: a step draws ``job.train.batch_size`` **unique images** (all processes
together); the rank-1 model sees them tiled K times, a deterministic model or ensemble
member sees them once.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from pipeline.config import ImageJobConfig
from pipeline.metrics import multiclass_metrics
from pipeline.predict import model_ensemble_size, predict_logits
from pipeline.train import dist_info


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A per-epoch shuffle, sharded over data-parallel processes, that restarts exactly.

    The order of epoch e is a permutation seeded by ``(torch.initial_seed(), e)``: the
    trainer seeds torch with the run's (or the ensemble member's) seed before the first
    batch, so each ensemble member sees its own order and a resumed run the same one.
    Each of W processes takes every W-th index of the first ``len // (W * batch) * W *
    batch`` ones, so every process runs the same number of steps.

    Args:
        n: Dataset length.
        batch_size: Unique images per step, all processes together.
        world_size: Data-parallel processes.
        rank: This process.
    """

    def __init__(self, n: int, batch_size: int, world_size: int = 1, rank: int = 0) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch {batch_size} cannot be split over {world_size} processes")
        self.steps = n // batch_size
        if self.steps < 1:
            raise ValueError(f"{n} training images are fewer than one batch of {batch_size}")
        self.n, self.batch_size, self.world_size, self.rank = n, batch_size, world_size, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order :meth:`__iter__` yields (called by the trainer)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps * self.batch_size // self.world_size

    def __iter__(self) -> Iterator[int]:
        seed = (torch.initial_seed() * 1_000_003 + self.epoch) % (2**63)
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed))
        order = order[: self.steps * self.batch_size]
        return iter(order[self.rank :: self.world_size].tolist())


def train_loader(dataset, job: ImageJobConfig, device: torch.device):
    """The shuffled training DataLoader: this process's share of each step's unique images."""
    info = dist_info()
    unique = job.train.batch_size
    sampler = EpochShuffleSampler(len(dataset), unique, info.world_size, info.rank)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=unique // info.world_size,
        sampler=sampler,
        drop_last=True,
        num_workers=job.num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=job.num_workers > 0,
    )


def eval_loader(dataset, job: ImageJobConfig, device: torch.device, num_workers: int | None):
    """An in-order DataLoader of ``eval_batch_size`` images (workers: the job's by default)."""
    workers = job.num_workers if num_workers is None else num_workers
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=job.train.eval_batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )


def load_split(job: ImageJobConfig, split: str, data_dir: str | None = None, augment: bool = False):
    """The job's ``train``, ``val`` or ``test`` images (data folder: the job's by default)."""
    from features.images.datasets import load_image_dataset

    return load_image_dataset(
        job.dataset,
        data_dir if data_dir is not None else job.data_dir,
        split,
        train_augment=augment,
        val_fraction=job.val_fraction,
        seed=job.split_seed,
        image_size=job.image_size,
    )


def has_val_split(job: ImageJobConfig) -> bool:
    """Whether the job holds out validation images (which then select the best epoch)."""
    from features.images.datasets import DEFAULT_VAL_FRACTION

    frac = DEFAULT_VAL_FRACTION[job.dataset] if job.val_fraction is None else job.val_fraction
    return frac > 0


def evaluate_on(
    model: nn.Module,
    dataset,
    job: ImageJobConfig,
    device: torch.device,
    num_workers: int | None = None,
) -> dict[str, float]:
    """``multiclass_metrics`` of a model on a dataset, with the job's seeded evaluation."""
    logits = predict_logits(
        model, eval_loader(dataset, job, device, num_workers), job.train, device
    )
    return multiclass_metrics(logits, dataset.labels, num_members=model_ensemble_size(model))
