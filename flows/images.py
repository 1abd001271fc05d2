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

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import task_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.image_params import ImageBenchmarkParams, ImageTrainParams, ImageValidateParams
from flows.params import validate
from flows.tasks import retried_task, train_each_method

TRAIN_TIMEOUT_S = 72 * 3600
#: Bound of a whole validation. The cells run in worker threads, where Prefect cannot
#: interrupt a task, so the bound is set on the flow (which runs in the calling thread).
VALIDATE_TIMEOUT_S = 24 * 3600
#: Cells evaluated at once. Their seeded predictions (with the loading and on-the-fly
#: corruption inside them) take turns, so that each cell's numbers are those of a
#: sequential run (``pipeline.images.validation._PREDICT_LOCK``); the threads overlap
#: opening each cell's dataset and Prefect's task bookkeeping.
PARALLEL_CELLS = 4


@retried_task(1, 30, task_run_name="train-images-{method}", timeout_seconds=TRAIN_TIMEOUT_S)
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
        job.train.batch_size,
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


# The result is the model itself: never write it to Prefect's result storage.
@retried_task(1, 10, persist_result=False)
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


@retried_task(1, 10, task_run_name="evaluate-{corruption}-{severity}")
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


@retried_task(2, 5)
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
def train_images(params: ImageTrainParams) -> dict[str, str]:
    """Train an image recipe once per method; each run is logged to MLflow.

    Args:
        params: :class:`flows.image_params.ImageTrainParams` (or a mapping of them: a
            deployment's, the Prefect UI's form), checked first.

    Returns:
        ``{method: MLflow run id}``.
    """
    params = validate("train_images", ImageTrainParams, params)
    return train_each_method(train_image_model, params)


@flow(
    name="validate-images",
    validate_parameters=False,
    task_runner=ThreadPoolTaskRunner(max_workers=PARALLEL_CELLS),
    timeout_seconds=VALIDATE_TIMEOUT_S,
)
def validate_images(params: ImageValidateParams) -> dict[str, float]:
    """Evaluate a trained run on clean and corrupted test images; log to that run.

    The model is loaded once (weights and config, nothing unpickled); every (corruption,
    severity) cell then runs as a parallel task sharing it. The summary (for each severity
    the mean over corruptions, then the mean over severities), the clean metrics (the
    run's ``test/*``, logged as ``clean/*``: one evaluation of the clean set) and the
    severity plot are logged once all cells are done.

    Args:
        params: :class:`flows.image_params.ImageValidateParams` (or a mapping of them),
            checked first.

    Returns:
        ``corrupt/mean/<metric>`` and ``clean/<metric>`` for accuracy, NLL and ECE.
    """
    params = validate("validate_images", ImageValidateParams, params)
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
def image_benchmark(params: ImageBenchmarkParams) -> dict[str, Any]:
    """Train a recipe once per method, then validate each run on corrupted images.

    The schedulable form of the image jobs (a deployment cannot know a run id in advance).
    When both ``rank1`` and ``deterministic`` are trained, the rank-1 run's severity plot
    also shows the deterministic twin.

    Args:
        params: :class:`flows.image_params.ImageBenchmarkParams` (or a mapping of them),
            checked first, the validation part too: a bad value fails before training.

    Returns:
        ``{"runs": {method: run id}, "validation": {method: summary metrics}}``.
    """
    params = validate("image_benchmark", ImageBenchmarkParams, params)
    runs = train_images(params.train_params())
    # Validate the deterministic twin first so that its corrupted metrics exist when the
    # rank-1 run's plot draws it for comparison.
    twin = runs.get("deterministic")
    validation = {}
    for method in sorted(runs, key=lambda method: method == "rank1"):
        compare = twin if method == "rank1" else None
        validation[method] = validate_images(params.validate_params(runs[method], compare))
    return {"runs": runs, "validation": validation}
