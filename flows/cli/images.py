"""``rank1`` commands of the image benchmarks: train-images, validate-images.

Both call :mod:`pipeline.images` directly (no Prefect flow: see :mod:`flows.images` for the
schedulable forms).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli import error_line, fail, options
from flows.cli.running import print_uis
from flows.image_params import ImageValidateParams
from flows.params import defaults
from pipeline.recipes import DATASET_PRESETS

_VALIDATE = defaults(ImageValidateParams)
_SEVERITIES = ",".join(str(level) for level in _VALIDATE.severities)


def train_images_command(
    dataset: Annotated[
        str, typer.Option("--dataset", help="digits | cifar10 | cifar100 | imagenet.")
    ] = "digits",
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Clean data folder (not for digits).")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="cnn-digits | wrn28-10-cifar10 | wrn28-10-cifar100 | resnet50-imagenet "
            "(default: the dataset's).",
        ),
    ] = None,
    method: options.Method = None,
    posterior: options.Posterior = None,
    epochs: Annotated[
        float | None, typer.Option("--epochs", min=0.01, help="Epochs (schedule scales).")
    ] = None,
    batch_size: options.ImageBatchSize = None,
    ensemble_size: options.EnsembleSize = None,
    seed: options.TrainingSeed = None,
    device: options.Device = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=0, help="DataLoader workers.")
    ] = None,
    experiment: options.ExperimentOrDefault = None,
    run_name: options.RunName = None,
    checkpoint_dir: options.CheckpointDir = None,
    resume: options.Resume = False,
) -> None:
    """Train an image classifier (rank-1, deterministic or deep ensemble); log it to MLflow."""
    from pipeline.config import ConfigError
    from pipeline.images import image_preset, train_images

    if dataset not in DATASET_PRESETS:
        fail(f"unknown dataset {dataset!r}; choose from {', '.join(DATASET_PRESETS)}")
    try:
        job = image_preset(
            preset or DATASET_PRESETS[dataset],
            dataset=dataset,
            data_dir=data_dir,
            method=method,
            posterior=posterior,
            epochs=epochs,
            batch_size=batch_size,
            ensemble_size=ensemble_size,
            seed=seed,
            device=device,
            num_workers=workers,
            experiment=experiment,
        )
    except ConfigError as err:
        fail(str(err))
    try:
        result = train_images(job, run_name=run_name, checkpoint_dir=checkpoint_dir, resume=resume)
    except (OSError, ValueError, RuntimeError) as err:
        fail(error_line(err))
    if result is None:  # a non-main torchrun process: the main one logs and prints
        return
    typer.echo(f"run_id {result.run_id}")
    for key, value in result.rows().items():
        typer.echo(f"  {key:<20} {value:.4f}")
    print_uis([job.experiment], prefect_runs=False)


def validate_images_command(
    run: Annotated[str, typer.Option("--run", help="Run id of a `rank1 train-images` run.")],
    corruptions: Annotated[
        str | None,
        typer.Option("--corruptions", help="Comma-separated names (default: all generated)."),
    ] = None,
    severities: options.Severities = _SEVERITIES,
    compare: Annotated[
        str | None, typer.Option("--compare", help="Run id drawn beside this one in the plot.")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Clean data folder (default: the run's).")
    ] = None,
    corrupted_dir: Annotated[
        Path | None,
        typer.Option("--corrupted-dir", help="Official CIFAR-C / ImageNet-C (else generated)."),
    ] = None,
    device: options.DeviceName = _VALIDATE.device,
) -> None:
    """Evaluate a run on clean and corrupted test images; log the metrics and plot to it."""
    from pipeline.config import ConfigError, check_device
    from pipeline.images import validate_images

    names = None if corruptions is None else [c.strip() for c in corruptions.split(",")]
    levels = options.severity_levels(severities)
    try:
        check_device(device, "--device")  # before the run's model is fetched
    except ConfigError as err:
        fail(f"{err.field}: {err.reason}")
    try:
        metrics = validate_images(
            run,
            names,
            levels,
            data_dir=data_dir,
            corrupted_dir=corrupted_dir,
            compare_run_id=compare,
            device=device,
        )
    except (OSError, ValueError, RuntimeError) as err:
        fail(error_line(err))
    typer.echo(f"run_id {run}")
    for key in sorted(k for k in metrics if k.startswith(("clean/", "corrupt/mean/"))):
        typer.echo(f"  {key:<28} {metrics[key]:.4f}")
