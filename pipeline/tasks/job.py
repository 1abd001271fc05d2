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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline import tracking
from pipeline.config import TrainConfig
from pipeline.ehr import model_config_for
from pipeline.jobs import RunSpec, TrainingResult, model_tag, run_training
from pipeline.predict import model_ensemble_size, predict_logits
from pipeline.tasks.batching import StayBatches
from pipeline.tasks.data import TaskData, TaskSpec, task_spec
from pipeline.tasks.evaluate import (
    Scaler,
    fit_scaler,
    sample_uncertainty,
    task_metrics,
)
from pipeline.train import dist_info, resolve_device

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
        },
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
