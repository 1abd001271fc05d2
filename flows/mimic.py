"""Prefect flows of the MIMIC-III in-hospital-mortality job.

* ``extract_mimic``: raw tables -> feature folder, skipped when the inputs are unchanged.
* ``train_mimic``: feature folder -> one calibrated MLflow run per model (rank-1 LSTM,
  deterministic LSTM, deep ensemble), each registered as a new version of
  ``mimic-ihm-<method>`` (``register_as``), promoted to ``champion`` if asked and better.
* ``report_mimic``: MLflow run + feature folder -> per-patient uncertainty report.
* ``clinical_pipeline``: the three above, end to end, as sub-flows.

The flows only compose library functions (``features.mimic.extract``,
``pipeline.ehr.train_ehr`` / ``report_ehr``). Every flow validates its parameters first
(:mod:`flows.params`), so a bad value fails before any task with a message naming it.

Nothing that identifies a patient enters Prefect: parameters are paths and settings, run
names are Prefect's generated ones, and the logs carry cohort-level counts and metrics only.
Per-patient files (feature folder, checkpoints, reports) go under folders made owner-only.

Training checkpoints into ``<checkpoint_dir>/<method>``; a rerun (or a retry) resumes an
unfinished checkpoint of the same training fingerprint (:func:`flows.resume.plan_resume`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import flow, get_run_logger

from features.io import make_private_dir
from features.mimic.manifest import TaskManifest
from flows.params import (
    ClinicalParams,
    ExtractParams,
    ReportParams,
    TrainParams,
    validate,
)
from flows.resume import mark_complete, plan_resume, training_key
from flows.tasks import retried_task, train_each_method

if TYPE_CHECKING:
    from features.mimic.manifest import FeatureManifest

# Bounds per task. Full MIMIC-III extraction takes minutes with polars; the paper's
# 10k-step LSTM takes well under an hour on a CPU; the timeouts only catch hung runs.
EXTRACT_TIMEOUT_S = 4 * 3600
TRAIN_TIMEOUT_S = 12 * 3600
REPORT_TIMEOUT_S = 3600


# --------------------------------------------------------------------------- tasks


def extraction_outdated(
    mimic_dir: Path, out_dir: Path, seed: int, val_fraction: float, test_fraction: float
) -> str | None:
    """Why ``out_dir`` must be (re-)extracted from ``mimic_dir``, or None if it need not.

    The existing folder's manifest decides
    (:meth:`features.mimic.manifest.FeatureManifest.outdated_reason`: split settings, then
    the size and sha256 of every source table). A manifest that does not load (another
    schema version, a missing field) is outdated too; extraction then decides whether the
    folder may be replaced.

    Returns:
        A short reason, or None when re-extracting would write the same feature folder.
    """
    from features.mimic.manifest import MANIFEST_FILE, FeatureFolderError, load_manifest

    if not (out_dir / MANIFEST_FILE).is_file():
        return f"no feature folder at {out_dir} yet"
    try:
        manifest = load_manifest(out_dir)
    except FeatureFolderError as err:
        return f"the existing manifest does not load ({err})"
    return manifest.outdated_reason(
        mimic_dir, seed=seed, val_fraction=val_fraction, test_fraction=test_fraction
    )


@retried_task(2, 5)
def inputs_unchanged(
    mimic_dir: Path, out_dir: Path, seed: int, val_fraction: float, test_fraction: float
) -> bool:
    """Whether ``out_dir`` was extracted from exactly these tables with these settings."""
    reason = extraction_outdated(mimic_dir, out_dir, seed, val_fraction, test_fraction)
    if reason is not None:
        get_run_logger().info("extracting: %s", reason)
    return reason is None


@retried_task(1, 30, timeout_seconds=EXTRACT_TIMEOUT_S)
def extract_features(params: ExtractParams) -> dict[str, Any]:
    """Run ``features.mimic.extract.extract`` and log the cohort counts.

    Returns:
        Cohort-level counts: ``stays``, ``positives`` and the per-split counts.
    """
    from features.mimic.extract import extract

    logger = get_run_logger()
    manifest = extract(
        params.mimic_dir,
        params.out_dir,
        task=params.task,
        seed=params.seed,
        val_fraction=params.val_fraction,
        test_fraction=params.test_fraction,
        progress=False,
    )
    for step in manifest.cohort.steps:
        logger.info("cohort %-26s %8d stays", step.step, step.stays)
    for warning in manifest.warnings:
        logger.warning(warning)  # cohort-level only, e.g. a variable never observed
    logger.info("extracted %s in %.1f s", params.out_dir, manifest.total_seconds)
    return _counts(manifest)


def _counts(manifest: FeatureManifest | TaskManifest) -> dict[str, Any]:
    """The flow's cohort-level counts (plain JSON for Prefect's result)."""
    counts = {
        "stays": manifest.stays,
        "positives": manifest.positives,
        "splits": manifest.split.counts.model_dump(),
    }
    if isinstance(manifest, TaskManifest):
        counts["samples"] = manifest.samples
    return counts


@retried_task(1, 30, task_run_name="train-{method}", timeout_seconds=TRAIN_TIMEOUT_S)
def train_model(params: TrainParams, method: str, run_name: str | None) -> str:
    """Train, calibrate and log one model with ``pipeline.ehr.train_ehr``.

    With a checkpoint folder, an interrupted training of the same config and feature
    folder resumes from its last checkpoint (see :func:`plan_resume`), and runs of that
    training left RUNNING in MLflow by a dead process are marked FAILED first.

    Returns:
        The MLflow run id.
    """
    from pipeline import tracking
    from pipeline.ehr import train_ehr
    from pipeline.jobs import describe_length
    from pipeline.tasks.job import train_task_folder

    logger = get_run_logger()
    config = params.train_config(method)
    model_config = params.model.ehr_config()
    logger.info(
        "training %s: %s, batch %d, device %s",
        method,
        describe_length(config),
        config.batch_size,
        config.device,
    )
    folder, plan = None, None
    if params.checkpoint_dir is not None:
        # Owner-only (the weights are fitted to patient data); an existing folder of the
        # user's keeps its mode. save_checkpoint makes an ensemble's m<k> folders alike.
        folder = make_private_dir(params.checkpoint_dir / method)
        experiment = _task_experiment(params) or params.experiment
        key = training_key(config, model_config, params.features_dir, experiment)
        for run_id in tracking.fail_stale_runs(experiment, key):
            logger.info("MLflow run %s was left RUNNING by a dead process: marked FAILED", run_id)
        plan = plan_resume(folder, key)
        logger.info("%s: %s (%s)", method, plan.reason, folder)
    resume = plan is not None and plan.resume
    if _whole_stay_task(params.features_dir) is not None:
        result = train_task_folder(
            params.features_dir,
            config,
            experiment=_task_experiment(params),
            model_config=model_config,
            run_name=run_name,
            checkpoint_dir=folder,
            resume=resume,
            progress=params.progress,
        )
        if plan is not None:
            mark_complete(folder, plan.key, result.run_id)
        shown = {k: round(v, 4) for k, v in vars(result.metrics).items() if v is not None}
        logger.info("%s: %s (MLflow run %s)", method, shown, result.run_id)
        return result.run_id
    result = train_ehr(
        params.features_dir,
        config,
        experiment=params.experiment,
        model_config=model_config,
        run_name=run_name,
        checkpoint_dir=folder,
        resume=resume,
        progress=params.progress,
        resume_key=plan.key if plan is not None else None,
        register_as=params.register_as,
        promote_if_better=params.promote_if_better,
    )
    if plan is not None:
        mark_complete(folder, plan.key, result.run_id)
    if result.registered is not None:
        logger.info("%s: registered as %s", method, result.registered.describe())
    metrics = result.metrics
    logger.info(
        "%s: test AUROC %.3f, NLL %.4f -> %.4f calibrated, ECE %.4f -> %.4f, T=%.3f "
        "(MLflow run %s)",
        method,
        metrics.test_auroc,
        metrics.test_nll,
        metrics.test_calibrated_nll,
        metrics.test_ece,
        metrics.test_calibrated_ece,
        metrics.temperature,
        result.run_id,
    )
    return result.run_id


def _whole_stay_task(features_dir: Path) -> str | None:
    """The task of a whole-stay feature folder, or None for in-hospital mortality."""
    from features.mimic.manifest import TASK, read_manifest_header

    header = read_manifest_header(features_dir)
    return None if header is None or header.task == TASK else header.task


def _task_experiment(params: TrainParams) -> str | None:
    """A whole-stay task's experiment: ``mimic-<task>`` unless another one was chosen."""
    from pipeline.config import EHR_EXPERIMENT
    from pipeline.tasks import task_spec

    task = _whole_stay_task(params.features_dir)
    if task is None:
        return None
    return task_spec(task).experiment if params.experiment == EHR_EXPERIMENT else params.experiment


@retried_task(2, 10, timeout_seconds=REPORT_TIMEOUT_S)
def write_report(params: ReportParams) -> dict[str, str]:
    """Write the per-patient report of a run (owner-only files).

    ``pipeline.ehr.report_ehr``, or ``pipeline.tasks.job.report_task`` for a whole-stay task.

    Returns:
        Paths of the report's files by kind (``html`` among them).
    """
    from pipeline.ehr import report_ehr
    from pipeline.tasks.job import report_task

    writer = report_ehr if _whole_stay_task(params.features_dir) is None else report_task
    paths = writer(
        params.run_id,
        params.features_dir,
        params.out_dir,
        split=params.split,
        coverage=params.coverage,
    )
    get_run_logger().info("report written to %s", paths["html"])
    return {kind: str(path) for kind, path in paths.items()}


# --------------------------------------------------------------------------- flows


@flow(name="extract-mimic", validate_parameters=False)
def extract_mimic(params: ExtractParams) -> dict[str, Any]:
    """Extract one benchmark task's feature folder from raw MIMIC-III tables.

    Skipped when ``out_dir`` already holds a feature folder extracted from tables with the
    same sizes and sha256 hashes and the same split settings (unless ``force``).

    Args:
        params: :class:`flows.params.ExtractParams` (or a mapping of them: a deployment's,
            the Prefect UI's form), checked first.

    Returns:
        ``{"features_dir", "extracted" (False when skipped), "stays", "positives",
        "splits"}``.
    """
    params = validate("extract_mimic", ExtractParams, params)
    logger = get_run_logger()
    if not params.force and inputs_unchanged(
        params.mimic_dir, params.out_dir, params.seed, params.val_fraction, params.test_fraction
    ):
        from features.mimic.manifest import load_manifest

        logger.info("inputs unchanged since the last extraction: keeping %s", params.out_dir)
        counts = _counts(load_manifest(params.out_dir))
        return {"features_dir": str(params.out_dir), "extracted": False, **counts}
    counts = extract_features(params)
    return {"features_dir": str(params.out_dir), "extracted": True, **counts}


@flow(name="train-mimic", validate_parameters=False)
def train_mimic(params: TrainParams) -> dict[str, str]:
    """Train, calibrate and log each chosen model to its own MLflow run.

    With a ``checkpoint_dir``, a rerun (or a retried task) resumes an unfinished training of
    the same config and feature folder from ``<checkpoint_dir>/<method>``; see
    :func:`flows.resume.plan_resume`.

    Args:
        params: :class:`flows.params.TrainParams` (or a mapping of them), checked first.

    Returns:
        ``{method: MLflow run id}``.
    """
    params = validate("train_mimic", TrainParams, params)
    return train_each_method(train_model, params)


@flow(name="report-mimic", validate_parameters=False)
def report_mimic(params: ReportParams) -> dict[str, str]:
    """Write the per-patient uncertainty report of one trained run.

    Args:
        params: :class:`flows.params.ReportParams` (or a mapping of them), checked first.

    Returns:
        Paths of the report's ``parquet``, ``csv`` and ``html`` files.
    """
    params = validate("report_mimic", ReportParams, params)
    return write_report(params)


@flow(name="clinical-pipeline", validate_parameters=False)
def clinical_pipeline(params: ClinicalParams) -> dict[str, Any]:
    """Raw MIMIC-III tables to trained, calibrated models and per-patient reports.

    Runs ``extract_mimic`` into ``out_dir/features``, ``train_mimic`` for each method
    (checkpoints in ``out_dir/checkpoints/<method>``) and ``report_mimic`` for each trained
    run into ``out_dir/reports/<method>``. ``out_dir`` is made owner-only because the
    feature folder, the checkpoints and the reports are per-patient data.

    Rerunning the same call after a crash (even ``kill -9``) skips the unchanged
    extraction and resumes each unfinished training from its last checkpoint, ending with
    the same weights as an uninterrupted run; a finished training is trained afresh.

    Args:
        params: :class:`flows.params.ClinicalParams` (or a mapping of them), checked first:
            a bad value fails before extraction starts.

    Returns:
        ``{"features_dir", "extracted", "runs": {method: run id},
        "reports": {method: html path}}``.
    """
    params = validate("clinical_pipeline", ClinicalParams, params)
    make_private_dir(params.out_dir)
    extracted = extract_mimic(params.extract_params())
    runs = train_mimic(params.train_params())
    reports = {
        method: report_mimic(params.report_params(method, run_id))["html"]
        for method, run_id in runs.items()
    }
    logger = get_run_logger()
    for method, html in reports.items():
        logger.info("%s: MLflow run %s, report %s", method, runs[method], html)
    return {
        "features_dir": str(params.features_dir),
        "extracted": extracted["extracted"],
        "runs": runs,
        "reports": reports,
    }
