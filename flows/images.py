"""Prefect flows of the image benchmarks.

* ``train_images``: train a recipe of ``pipeline.recipes`` (rank-1 model, deterministic
  twin, deep ensemble) into one MLflow run per method.
* ``validate_images``: load a run's model once, evaluate it on every (corruption,
  severity) cell as parallel tasks sharing it, then log the cells, the spec section 7
  summary, the clean metrics (the run's test metrics: the clean set is evaluated once, at
  training) and the severity plot to that run.

Multi-GPU training does not go through Prefect's task runner: launch ``torchrun
--nproc-per-node N -m flows.cli train-images ...`` (see the README); the trainer reads the
torchrun environment variables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run, task_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.mimic import retry_transient
from flows.params import ImageTrainParams, ImageValidateParams, validate

TRAIN_TIMEOUT_S = 72 * 3600
#: Bound of a whole validation. The cells run in worker threads, where Prefect cannot
#: interrupt a task, so the bound is set on the flow (which runs in the calling thread).
VALIDATE_TIMEOUT_S = 24 * 3600
#: Cells evaluated at once. Their seeded predictions (with the loading and on-the-fly
#: corruption inside them) take turns, so that each cell's numbers are those of a
#: sequential run (``pipeline.images.validation._PREDICT_LOCK``); the threads overlap
#: opening each cell's dataset and Prefect's task bookkeeping.
PARALLEL_CELLS = 4


@task(
    task_run_name="train-images-{method}",
    retries=1,
    retry_delay_seconds=30,
    retry_condition_fn=retry_transient,
    timeout_seconds=TRAIN_TIMEOUT_S,
    cache_policy=NO_CACHE,
)
def train_image_model(params: ImageTrainParams, method: str, run_name: str | None) -> str:
    """Train and log one image model with ``pipeline.images.train_images``.

    Returns:
        The MLflow run id.
    """
    from pipeline.images import train_images as train_job
    from pipeline.jobs import describe_length

    logger = get_run_logger()
    job = params.job(method)
    checkpoint_dir = params.checkpoint_dir / method if params.checkpoint_dir else None
    logger.info(
        "training %s %s on %s: %s, %d unique images per step, device %s",
        method,
        job.model,
        job.dataset,
        describe_length(job.train),
        job.unique_batch_size,
        job.train.device,
    )
    result = train_job(
        job,
        run_name=run_name,
        checkpoint_dir=checkpoint_dir,
        # Only a retry resumes; a new run starts afresh.
        resume=checkpoint_dir is not None and task_run.get_run_count() > 1,
        progress=params.progress,
    )
    if result is None:
        # A non-main torchrun process: the flow is not the way to train on several GPUs.
        raise RuntimeError("the train-images flow runs in one process; use torchrun with the CLI")
    logger.info(
        "%s: test accuracy %.4f, NLL %.4f, ECE %.4f, %.0f s (MLflow run %s)",
        method,
        result.metrics.test_accuracy,
        result.metrics.test_nll,
        result.metrics.test_ece,
        result.seconds,
        result.run_id,
    )
    return result.run_id


@task(
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,
    # The result is the model itself: never write it to Prefect's result storage.
    persist_result=False,
)
def load_model(params: ImageValidateParams) -> tuple[Any, Any]:
    """The run's model, on the evaluation device in eval mode, and its job config.

    Loaded once per flow and shared by every cell: evaluation only reads the model (the
    tasks' threads never move it or switch its mode), and reading the weights is the slow
    part of a small cell.
    """
    from pipeline.images import load_image_run
    from pipeline.train import resolve_device

    model, job = load_image_run(params.run_id)
    return model.to(resolve_device(params.device)), job


@task(
    task_run_name="evaluate-{corruption}-{severity}",
    retries=1,
    retry_delay_seconds=10,
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,
)
def evaluate_cell(
    params: ImageValidateParams, model: Any, job: Any, corruption: str, severity: int
) -> dict[str, float]:
    """Metrics of one (corruption, severity) cell; logs nothing itself."""
    from pipeline.images import evaluate_corruption

    metrics = evaluate_corruption(
        model,
        job,
        corruption,
        severity,
        data_dir=params.data_dir,
        corrupted_dir=params.corrupted_dir,
        device=params.device,
    )
    return _scalars(metrics)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    # Per-member lists are not needed downstream; plain floats keep task results small.
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}


@task(retries=2, retry_delay_seconds=5, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def log_summary(
    params: ImageValidateParams,
    cells: list[tuple[str, int, dict[str, float]]],
) -> dict[str, float]:
    """Log every cell, the summary, the run's clean metrics and the severity plot to the run."""
    from pipeline.images import log_validation

    return log_validation(
        params.run_id,
        {(corruption, severity): metrics for corruption, severity, metrics in cells},
        compare_run_id=params.compare_run_id,
    )


@flow(name="train-images", validate_parameters=False)
def train_images(
    preset: str = "cnn-digits",
    methods: list[str] | None = None,
    dataset: str | None = None,
    data_dir: Path | None = None,
    epochs: float | None = None,
    batch_size: int | None = None,
    ensemble_size: int | None = None,
    posterior: str | None = None,
    seed: int | None = None,
    device: str | None = None,
    num_workers: int | None = None,
    experiment: str | None = None,
    checkpoint_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, str]:
    """Train an image recipe once per method; each run is logged to MLflow.

    Args:
        preset: ``cnn-digits`` (CPU-sized, built-in data), ``wrn28-10-cifar10``,
            ``wrn28-10-cifar100`` or ``resnet50-imagenet``.
        methods: Any of ``rank1``, ``deterministic``, ``ensemble`` (default: ``rank1``).
        dataset: Train the preset's model on another dataset (default: the preset's).
        data_dir: Clean data folder (not needed for digits).
        epochs: Training length; the recipe's schedule scales with it.
        batch_size: Unique images per step; the learning rate scales linearly.
        ensemble_size: K.
        posterior: ``normal`` or ``cauchy``.
        seed: Training seed.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        num_workers: DataLoader workers.
        experiment: MLflow experiment name.
        checkpoint_dir: Checkpoint folder (a retried task resumes from it), or None.
        progress: Show training progress bars on the terminal.

    Returns:
        ``{method: MLflow run id}``.
    """
    arguments = {name: value for name, value in locals().items() if value is not None}
    params = validate("train_images", ImageTrainParams, arguments)
    prefix = flow_run.get_name()
    return {
        method: train_image_model(params, method, f"{method}-{prefix}" if prefix else method)
        for method in params.methods
    }


@flow(
    name="validate-images",
    validate_parameters=False,
    task_runner=ThreadPoolTaskRunner(max_workers=PARALLEL_CELLS),
    timeout_seconds=VALIDATE_TIMEOUT_S,
)
def validate_images(
    run_id: str,
    corruptions: list[str] | None = None,
    severities: list[int] | None = None,
    data_dir: Path | None = None,
    corrupted_dir: Path | None = None,
    compare_run_id: str | None = None,
    device: str = "auto",
) -> dict[str, float]:
    """Evaluate a trained run on clean and corrupted test images; log to that run.

    The model is loaded once (weights and config, nothing unpickled); every (corruption,
    severity) cell then runs as a parallel task sharing it. The summary (for each severity
    the mean over corruptions, then the mean over severities), the clean metrics (the
    run's ``test/*``, logged as ``clean/*``: one evaluation of the clean set) and the
    severity plot are logged once all cells are done.

    Args:
        run_id: MLflow run written by ``train_images``.
        corruptions: Corruption names (default: every generated corruption).
        severities: Severities 1 to 5 (default: all five).
        data_dir: Clean data folder (default: the run's).
        corrupted_dir: Official CIFAR-C / ImageNet-C release (default: generate).
        compare_run_id: Another run drawn beside this one in the severity plot.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

    Returns:
        ``corrupt/mean/<metric>`` and ``clean/<metric>`` for accuracy, NLL and ECE.
    """
    arguments = {name: value for name, value in locals().items() if value is not None}
    params = validate("validate_images", ImageValidateParams, arguments)
    model, job = load_model(params)
    grid = [(c, s) for c in params.names() for s in params.severities]
    futures = [evaluate_cell.submit(params, model, job, c, s) for c, s in grid]
    cells = [(c, s, future.result()) for (c, s), future in zip(grid, futures, strict=True)]
    logged = log_summary(params, cells)
    summary = {
        key: value
        for key, value in logged.items()
        if key.startswith("clean/") or (key.startswith("corrupt/mean/") and key.count("/") == 2)
    }
    get_run_logger().info(
        "clean accuracy %.4f -> mean corrupted %.4f over %d cells (MLflow run %s)",
        summary["clean/accuracy"],
        summary["corrupt/mean/accuracy"],
        len(grid),
        params.run_id,
    )
    return summary


@flow(name="image-benchmark", validate_parameters=False)
def image_benchmark(
    preset: str = "cnn-digits",
    methods: list[str] | None = None,
    epochs: float | None = None,
    data_dir: Path | None = None,
    corruptions: list[str] | None = None,
    severities: list[int] | None = None,
    corrupted_dir: Path | None = None,
    device: str | None = None,
    experiment: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train a recipe once per method, then validate each run on corrupted images.

    The schedulable form of the image jobs (a deployment cannot know a run id in advance).
    When both ``rank1`` and ``deterministic`` are trained, the rank-1 run's severity plot
    also shows the deterministic twin.

    Args:
        preset: See :func:`train_images`.
        methods: See :func:`train_images` (default: ``rank1`` and ``deterministic``).
        epochs: See :func:`train_images`.
        data_dir: Clean data folder (not needed for digits).
        corruptions: See :func:`validate_images`.
        severities: See :func:`validate_images`.
        corrupted_dir: See :func:`validate_images`.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        experiment: MLflow experiment name.
        progress: Show training progress bars on the terminal.

    Returns:
        ``{"runs": {method: run id}, "validation": {method: summary metrics}}``.
    """
    methods = methods or ["rank1", "deterministic"]
    # Check the validation parameters too before training starts; the run id is not known
    # yet, so a well-formed placeholder stands in for it.
    check = {"corruptions": corruptions, "severities": severities, "device": device}
    check |= {"data_dir": data_dir, "corrupted_dir": corrupted_dir}
    given = {name: value for name, value in check.items() if value is not None}
    validate("image_benchmark", ImageValidateParams, {"run_id": "0" * 32, **given})
    runs = train_images(
        preset,
        methods=methods,
        data_dir=data_dir,
        epochs=epochs,
        device=device,
        experiment=experiment,
        progress=progress,
    )
    # Validate the deterministic twin first so that its corrupted metrics exist when the
    # rank-1 run's plot draws it for comparison.
    order = sorted(runs, key=lambda method: method == "rank1")
    twin = runs.get("deterministic")
    validation = {}
    for method in order:
        validation[method] = validate_images(
            runs[method],
            compare_run_id=twin if method == "rank1" else None,
            **{k: v for k, v in given.items() if k != "device"},
            device=device or "auto",
        )
    return {"runs": runs, "validation": validation}
