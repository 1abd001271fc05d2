"""Training an image job: build the model, train it with the shared runner, test it.

:func:`train_images` trains with ``pipeline.jobs.run_training`` and logs one MLflow run:
the job config as params, per-epoch training curves, clean test accuracy / NLL / ECE, the
parameter count, the model and the job config as JSON (``image_job.json``). The clean test
metrics logged here are the only clean evaluation: the validation logs them again as
``clean/*`` from the run, so both names hold one number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from torch import nn

from pipeline import tracking
from pipeline.config import ConfigError, ImageJobConfig
from pipeline.images.data import eval_loader, evaluate_on, has_val_split, load_split, train_loader
from pipeline.jobs import RunSpec, TrainingResult, fit_models, model_tag, run_training
from pipeline.train import dist_info, resolve_device

TASK = "image-classification"
JOB_FILE = "image_job.json"


@dataclass(frozen=True)
class ImageMetrics:
    """The key results of an image run, as printed.

    Attributes:
        num_params: Trainable parameters (all members of a deep ensemble together).
        test_accuracy: Clean test accuracy of the mixture.
        test_nll: Clean test NLL.
        test_ece: Clean test ECE.
    """

    num_params: int
    test_accuracy: float
    test_nll: float
    test_ece: float


def build_model(job: ImageJobConfig, num_classes: int, in_channels: int, bayesian: bool):
    """Create the job's model, rank-1 (``bayesian=True``) or its deterministic twin.

    Args:
        job: The job config (model name, K, posterior, prior scale, sign init).
        num_classes: Output classes.
        in_channels: Image channels.
        bayesian: Rank-1 layers or plain ones.

    Returns:
        An ``nn.Module`` mapping ``(K * B, C, H, W)`` (rank-1) or ``(B, C, H, W)`` images
        to logits.
    """
    from rank1 import Rank1Config
    from rank1.models import (
        ResNet50,
        ResNet50Config,
        SmallCNN,
        SmallCNNConfig,
        WideResNet,
        WideResNetConfig,
    )

    rc = Rank1Config(
        ensemble_size=job.train.ensemble_size,
        posterior=job.train.posterior,
        prior_stddev=job.prior_stddev,
        random_sign_init=job.random_sign_init,
    )
    common = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "bayesian": bayesian,
        "rank1": rc,
    }
    if job.model == "wrn28-10":
        return WideResNet(WideResNetConfig(depth=28, width_multiplier=10, **common))
    if job.model == "resnet50":
        return ResNet50(ResNet50Config(**common))
    if job.model == "small-cnn":
        return SmallCNN(SmallCNNConfig(**common))
    raise ConfigError(f"unknown model {job.model!r}", "model")


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (all members of a deep ensemble together)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_images(
    job: ImageJobConfig,
    *,
    run_name: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> TrainingResult[ImageMetrics] | None:
    """Train and test an image classifier; log one MLflow run.

    Logged: the job config as params (``job.*``, ``train.*``, ``data.*``), tags ``task``,
    ``model`` and ``dataset``; per-epoch training curves (``train/*``, ``val_nll`` when the
    dataset has a validation split, which then selects the best epoch); ``train_seconds``,
    ``best_step``, ``steps``; clean test metrics ``test/accuracy``, ``test/nll``,
    ``test/ece`` (and Brier, per-member metrics); ``num_params``; the model (reload with
    ``pipeline.images.load_image_run``); the job config as ``image_job.json``.

    Args:
        job: The job config (see ``pipeline.recipes.image_preset``).
        run_name: Optional MLflow run name.
        checkpoint_dir: Trainer checkpoints folder (None: none written).
        resume: Continue from the checkpoint in ``checkpoint_dir``.
        progress: Show a progress bar.

    Returns:
        The run id, model, fits and :class:`ImageMetrics`; None on the non-main processes
        of a torchrun job, which train their shard and log nothing.
    """
    device = resolve_device(job.train.device)
    train_ds = load_split(job, "train", augment=job.train_augment)
    val_ds = load_split(job, "val") if has_val_split(job) else None
    test_ds = load_split(job, "test")
    in_channels = int(test_ds[0][0].shape[0])
    num_classes = int(train_ds.num_classes)
    loader = train_loader(train_ds, job, device)
    # Evaluate (and log the training curves) once per epoch.
    config = job.train.replace(eval_every=len(loader))
    val_loader = eval_loader(val_ds, job, device, None) if val_ds is not None else None
    bayesian = config.method == "rank1"

    def new_model() -> nn.Module:
        return build_model(job, num_classes, in_channels, bayesian)

    common = dict(
        likelihood="categorical",
        n_train=len(train_ds),
        config=config,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        progress=progress,
    )
    if not dist_info().is_main:
        fit_models(new_model, loader, val_loader, **common)
        return None
    params = {
        "job": {k: v for k, v in job.to_dict().items() if k != "train"},
        "train": config.to_dict(),
        "data": {
            "n_train": len(train_ds),
            "n_val": 0 if val_ds is None else len(val_ds),
            "n_test": len(test_ds),
            "num_classes": num_classes,
            "in_channels": in_channels,
            "steps_per_epoch": len(loader),
        },
    }
    tags = {"task": TASK, "model": model_tag(config, job.model), "dataset": job.dataset}

    def evaluate(model: nn.Module) -> ImageMetrics:
        test = evaluate_on(model, test_ds, job, device)
        n_params = count_parameters(model)
        tracking.log_metrics({"num_params": n_params})
        tracking.log_metrics(test, prefix="test/")
        tracking.log_dict(job.to_dict() | {"train": config.to_dict()}, JOB_FILE)
        return ImageMetrics(n_params, test["accuracy"], test["nll"], test["ece"])

    return run_training(
        new_model,
        loader,
        val_loader,
        run=RunSpec(job.experiment, params, tags, run_name),
        evaluate=evaluate,
        curves="epoch",
        **common,
    )
