"""The training job of the sequence tasks: train, select, calibrate, evaluate, log.

:func:`train_task` mirrors ``pipeline.ehr.train_ehr`` on the shared runner
(``pipeline.jobs.run_training``): a rank-1 EHR LSTM with the task's head, its
deterministic twin or a deep ensemble, trained with the paper's objective
(``pipeline.objective``) on batches of whole stays (:class:`~pipeline.tasks.StayBatches`),
the weights with the best validation NLL kept, a temperature fitted on validation (one per
label for phenotyping), and one MLflow run in the task's experiment (``mimic-<task>``)
holding the config, training curves, validation and test metrics (raw and calibrated), the
test uncertainty means, the temperature and the model. Only cohort-level numbers are logged.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch

from pipeline import tracking
from pipeline.calibration import TemperatureScaler
from pipeline.config import TrainConfig
from pipeline.ehr import model_config_for, run_provenance
from pipeline.jobs import RunSpec, TrainingResult, model_tag, run_training
from pipeline.predict import model_ensemble_size, predict_logits
from pipeline.report.table import DEFAULT_COVERAGE
from pipeline.tasks.batching import StayBatches
from pipeline.tasks.data import TaskData, TaskSpec, load_task_split, task_data, task_spec
from pipeline.tasks.evaluate import (
    LabelTemperatures,
    Scaler,
    fit_scaler,
    sample_uncertainty,
    task_metrics,
    task_referral,
)
from pipeline.train import dist_info, resolve_device

if TYPE_CHECKING:
    from features.mimic.manifest import TaskManifest

CALIBRATION_FILE = "calibration/temperature.json"
#: Most stays in one evaluation pass (the whole stays of long-stay tasks are large).
EVAL_STAYS = 64

#: The benchmark metrics of each task, as :class:`TaskMetrics` reports them from the test
#: metrics (the rest of the metrics are logged to MLflow).
_BENCHMARK = {
    "decompensation": ("auroc", "auprc"),
    "length-of-stay": ("kappa", "mad"),
    "phenotyping": ("macro_auroc", "micro_auroc"),
}


@dataclass(frozen=True)
class TaskMetrics:
    """The key results of a task run (raw unless named calibrated), as printed.

    Attributes:
        val_nll: Validation mixture NLL (label mean for phenotyping).
        test_nll: Test NLL.
        test_brier: Test Brier score.
        test_ece: Test ECE (top-label for length of stay; label mean for phenotyping).
        test_calibrated_nll: Test NLL after temperature scaling.
        test_calibrated_ece: Test ECE after temperature scaling.
        temperature: The fitted temperature (the mean of the 25 for phenotyping).
        test_mean_total: Mean total uncertainty of the calibrated test predictions, nats.
        test_mean_aleatoric: Its aleatoric part.
        test_mean_epistemic: Its epistemic part.
        test_referral_gain_80: Mean test NLL minus the NLL of the 80% least uncertain
            samples (epistemic ranking; total for a deterministic model): > 0 when referring
            the most uncertain 20% helps more than referring at random.
        test_auroc: Decompensation AUROC.
        test_auprc: Decompensation AUPRC.
        test_kappa: Length-of-stay linear-weighted Cohen's kappa.
        test_mad: Length-of-stay MAD in hours.
        test_macro_auroc: Phenotyping macro AUROC.
        test_micro_auroc: Phenotyping micro AUROC.
    """

    val_nll: float
    test_nll: float
    test_brier: float
    test_ece: float
    test_calibrated_nll: float
    test_calibrated_ece: float
    temperature: float
    test_mean_total: float
    test_mean_aleatoric: float
    test_mean_epistemic: float
    test_referral_gain_80: float
    test_auroc: float | None = None
    test_auprc: float | None = None
    test_kappa: float | None = None
    test_mad: float | None = None
    test_macro_auroc: float | None = None
    test_micro_auroc: float | None = None


def predict_task(
    model: torch.nn.Module,
    spec: TaskSpec,
    data: TaskData,
    config: TrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, np.ndarray]:
    """Member logits of every sample of a split, in the split's sample order.

    Args:
        model: A trained task model.
        spec: Its task.
        data: The split.
        config: Evaluation samples, batch and precision.
        device: Where to run.

    Returns:
        ``(S * K, N[, C])`` float32 logits (``pipeline.predict``'s order of paths) and the
        ``(N,)`` / ``(N, 25)`` targets.
    """
    batches = StayBatches(data, spec, min(config.eval_batch_size, EVAL_STAYS), shuffle=False)
    logits = predict_logits(model, batches, config, device)
    order = batches.sample_order
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.shape[0])
    return logits[:, torch.from_numpy(inverse)], data.samples()[2]


def train_task(
    task: str,
    train: TaskData,
    val: TaskData,
    test: TaskData,
    config: TrainConfig,
    *,
    experiment: str | None = None,
    model_config: Any = None,
    run_name: str | None = None,
    checkpoint_dir: Any = None,
    resume: bool = False,
    progress: bool = True,
    dataset: str = "mimic-iii",
    data_params: dict[str, Any] | None = None,
) -> TrainingResult[TaskMetrics]:
    """Train and evaluate a task model on three splits; log one MLflow run.

    The objective's NLL is the mean over the batch's samples (over samples x 25 labels for
    phenotyping) and the KL is divided by the training samples (samples x 25 labels), so a
    batch's loss is the per-term ELBO estimate the IHM job uses.

    Args:
        task: ``"decompensation"``, ``"length-of-stay"`` or ``"phenotyping"``.
        train: The training split (``batch_size`` stays per step).
        val: The validation split (model selection and calibration).
        test: The test split.
        config: Training config (``method`` picks rank-1 / deterministic / ensemble).
        experiment: MLflow experiment (default ``mimic-<task>``).
        model_config: ``rank1.models.EHRConfig`` with the layer sizes; the head, method,
            K and posterior are set from the task and ``config``.
        run_name: Optional MLflow run name.
        checkpoint_dir: Trainer checkpoints folder (None: none written).
        resume: Continue from the checkpoint in ``checkpoint_dir``.
        progress: Show a progress bar.
        dataset: The run's ``dataset`` tag (e.g. ``synthetic-mimic-iii`` for generated data).
        data_params: More ``data.*`` params to log (e.g. the feature folder's fingerprint).

    Returns:
        The run id, the model, its fits and the key metrics (:class:`TaskMetrics`).

    Raises:
        ValueError: For an unknown task, a split without samples, or under torchrun.
    """
    from rank1.models import EHRModel

    spec = task_spec(task)
    if dist_info().world_size > 1:
        raise ValueError("train_task runs in a single process; do not launch it with torchrun")
    for name, split in (("train", train), ("val", val), ("test", test)):
        if split.n_samples == 0:
            raise ValueError(f"the {name} split of {task} has no samples")
    base = model_config_for(config, model_config, train.values.shape[1])
    model_config = dataclasses.replace(base, output_dim=spec.output_dim, per_step=spec.per_step)
    params = {
        "train": config.to_dict(),
        "model": dataclasses.asdict(model_config),
        "data": {
            f"{name}_{what}": value
            for name, split in (("train", train), ("val", val), ("test", test))
            for what, value in (("stays", split.n_stays), ("samples", split.n_samples))
        }
        | dict(data_params or {}),
    }
    tags = {"task": spec.name, "model": model_tag(config, "lstm"), "dataset": dataset}
    device = resolve_device(config.device)
    return run_training(
        lambda: EHRModel(model_config),
        StayBatches(train, spec, config.batch_size, seed=config.seed),
        StayBatches(val, spec, min(config.eval_batch_size, EVAL_STAYS), shuffle=False),
        run=RunSpec(experiment or spec.experiment, params, tags, run_name),
        evaluate=lambda model: _evaluate(model, spec, config, device, val, test),
        likelihood=spec.likelihood,
        n_train=train.n_samples * spec.labels_per_sample,
        config=config,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        progress=progress,
    )


def _evaluate(
    model: torch.nn.Module,
    spec: TaskSpec,
    config: TrainConfig,
    device: torch.device,
    val: TaskData,
    test: TaskData,
) -> TaskMetrics:
    """Calibrate on validation, evaluate on test; log metrics and the temperature(s)."""
    k = model_ensemble_size(model)
    val_logits, val_y = predict_task(model, spec, val, config, device)
    test_logits, test_y = predict_task(model, spec, test, config, device)
    scaler = fit_scaler(spec, val_logits, val_y)

    def metrics(logits: Any, data: TaskData, y: np.ndarray) -> dict[str, float]:
        return task_metrics(spec, logits, y, remaining_hours=data.remaining_hours, num_members=k)

    calibrated = scaler.apply(test_logits)
    results = {
        "val/": metrics(val_logits, val, val_y),
        "val_calibrated/": metrics(scaler.apply(val_logits), val, val_y),
        "test/": metrics(test_logits, test, test_y),
        "test_calibrated/": metrics(calibrated, test, test_y),
    }
    uncertainty = sample_uncertainty(spec, calibrated).means()
    referral = task_referral(spec, calibrated, test_y)
    tracking.log_metrics(referral.metrics(), prefix="test_calibrated/")
    for prefix, values in results.items():
        tracking.log_metrics(values, prefix=prefix)
    tracking.log_metrics(uncertainty, prefix="test_calibrated/uncertainty/")
    tracking.log_metrics({"temperature": scaler.temperature}, prefix="calibration/")
    tracking.log_dict(_calibration_record(scaler, k, config), CALIBRATION_FILE)
    raw, cal = results["test/"], results["test_calibrated/"]
    benchmark = {f"test_{name}": raw.get(name) for name in _BENCHMARK[spec.name]}
    return TaskMetrics(
        val_nll=results["val/"]["nll"],
        test_nll=raw["nll"],
        test_brier=raw["brier"],
        test_ece=raw["ece"],
        test_calibrated_nll=cal["nll"],
        test_calibrated_ece=cal["ece"],
        temperature=scaler.temperature,
        test_referral_gain_80=referral.gain(0.8),
        **{f"test_{name}": value for name, value in uncertainty.items()},
        **benchmark,
    )


def _calibration_record(scaler: Scaler, k: int, config: TrainConfig) -> dict[str, Any]:
    return {
        **scaler.to_dict(),
        "ensemble_size": k,
        "num_eval_samples": config.num_eval_samples,
        "fitted_on": "val",
    }


#: The run param holding :func:`task_fingerprint` of the training feature folder.
FINGERPRINT_PARAM = "data.feature_fingerprint"


def task_fingerprint(manifest: TaskManifest) -> str:
    """A short hash of what a task model reads from a folder: task, channels, normaliser.

    Returns:
        16 hex digits (:func:`pipeline.scoring_bundle.fingerprint` of the channels and the
        normaliser, with the task in place of the grid's hours).
    """
    from pipeline.scoring_bundle import fingerprint

    if manifest.normaliser is None:
        raise ValueError(f"a {manifest.purpose} folder has no normaliser to fingerprint")
    return fingerprint(manifest.channels, manifest.task, manifest.normaliser)  # type: ignore[arg-type]


def train_task_folder(
    features_dir: str | os.PathLike,
    config: TrainConfig,
    **options: Any,
) -> TrainingResult[TaskMetrics]:
    """:func:`train_task` on the three splits of a whole-stay task folder.

    Args:
        features_dir: A folder written by ``features.mimic.extract.extract(..., task=...)``.
        config: Training config.
        **options: :func:`train_task`'s keyword arguments (experiment, model_config, ...).

    Returns:
        As :func:`train_task`; the run records the folder's fingerprint
        (``data.feature_fingerprint``), which :func:`report_task` checks.
    """
    from features.mimic.loader import load_task_manifest

    manifest = load_task_manifest(features_dir)
    splits = [load_task_split(features_dir, name) for name in ("train", "val", "test")]
    dataset = "synthetic-mimic-iii" if manifest.truth_columns else "mimic-iii"
    return train_task(
        manifest.task,
        *splits,
        config,
        dataset=options.pop("dataset", dataset),
        data_params={"feature_fingerprint": task_fingerprint(manifest)},
        **options,
    )


def _load_scaler(record: dict[str, Any]) -> Scaler:
    """The calibration a task run logged (one temperature, or one per label)."""
    if record.get("method") == "temperature_scaling_per_label":
        return LabelTemperatures(tuple(record["temperatures"]))
    return TemperatureScaler.from_dict(record)


def report_task(
    run_id: str,
    features_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str = "test",
    coverage: float = DEFAULT_COVERAGE,
) -> dict[str, Path]:
    """Write the per-patient report of one split with a task run's model and calibration.

    Args:
        run_id: An MLflow run written by :func:`train_task_folder`.
        features_dir: The task folder the run was trained on (same fingerprint).
        out_dir: Report folder (created owner-only; files 0600).
        split: ``"train"``, ``"val"`` or ``"test"``.
        coverage: Share of stays kept; the most uncertain rest are flagged ``refer``.

    Returns:
        Paths by kind (:func:`pipeline.report.tasks.write_task_report`).

    Raises:
        FeatureFolderError: If the folder is not the one the run was trained on.
        ValueError: If the split has no samples.
    """
    from features.mimic.loader import FeatureFolderError, load_task_manifest
    from features.mimic.loader import load_task_split as load_split
    from features.mimic.manifest import MANIFEST_FILE
    from pipeline.report.tasks import (
        decompensation_report,
        length_of_stay_report,
        phenotyping_report,
        write_task_report,
    )

    manifest = load_task_manifest(features_dir)
    params = tracking.run_params(run_id)
    actual, recorded = task_fingerprint(manifest), params.get(FINGERPRINT_PARAM)
    if recorded is not None and recorded != actual:
        raise FeatureFolderError(
            f"{Path(features_dir) / MANIFEST_FILE}: not the {manifest.task} folder run "
            f"{run_id} was trained on (fingerprint {actual}, expected {recorded})"
        )
    part = load_split(features_dir, split)
    data = task_data(part)
    if data.n_samples == 0:
        raise ValueError(f"{features_dir}: the {split} split has no samples")
    spec = task_spec(manifest.task)
    model = tracking.load_model(run_id, map_location="cpu")
    record = tracking.load_dict(run_id, CALIBRATION_FILE)
    scaler = _load_scaler(record)
    config = TrainConfig(num_eval_samples=int(record.get("num_eval_samples", 1)), device="cpu")
    logits, target = predict_task(model, spec, data, config, torch.device("cpu"))
    logits = logits.numpy()
    ids = part.stays.select("subject_id", "hadm_id", "icustay_id")
    if spec.name == "phenotyping":
        temperatures = getattr(scaler, "temperatures", None) or scaler.temperature
        report = phenotyping_report(
            ids, logits, temperatures, part.label_names, labels=target, coverage=coverage
        )
    else:
        samples = ids[part.stay.tolist()].with_columns(hour=pl.Series(part.hour))
        if spec.name == "decompensation":
            samples = samples.with_columns(label=pl.Series(target.astype(np.int64)))
            report = decompensation_report(samples, logits, scaler.temperature, coverage=coverage)
        else:
            samples = samples.with_columns(
                remaining_hours=pl.Series(part.remaining_hours), bucket=pl.Series(target)
            )
            report = length_of_stay_report(samples, logits, scaler.temperature, coverage=coverage)
    scored = task_metrics(
        spec,
        scaler.apply(logits),
        target,
        remaining_hours=data.remaining_hours,
        num_members=model_ensemble_size(model),
    )
    shown = (*_BENCHMARK[spec.name], "nll", "brier", "ece")
    metrics = {f"{split} {name}": scored[name] for name in shown if name in scored}
    provenance = run_provenance(run_id, actual, split)
    return write_task_report(report, out_dir, provenance=provenance, metrics=metrics)
