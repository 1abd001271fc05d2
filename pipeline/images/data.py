"""Image data of the jobs: the training loader (on the trainer's sampler), and seeded evaluation.

Batch semantics: a step draws ``job.train.batch_size`` **unique images** (all processes
together); the rank-1 model sees them tiled K times, a deterministic model or ensemble
member sees them once.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.config import ImageJobConfig
from pipeline.metrics import multiclass_metrics
from pipeline.predict import model_ensemble_size, predict_logits
from pipeline.train import EpochShuffleSampler, dist_info

__all__ = [
    "EpochShuffleSampler",
    "eval_loader",
    "evaluate_on",
    "has_val_split",
    "load_split",
    "train_loader",
]


def train_loader(dataset, job: ImageJobConfig, device: torch.device):
    """The shuffled training DataLoader: this process's share of each step's unique images.

    Its sampler is the trainer's :class:`~pipeline.train.EpochShuffleSampler`, the same
    seeded, resumable order as tensor data; :func:`~pipeline.train.fit` gives it the run's
    (or ensemble member's) seed.
    """
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
