"""The training-job runner shared by the EHR job (``pipeline.ehr``) and the image jobs.

:func:`run_training` opens one MLflow run and, inside it, trains (one model created under
the run's seed, or a deep ensemble with one seed per member), logs the training curves and
``train_seconds`` / ``best_step`` / ``steps``, hands the trained model to the job's own
evaluation, logs the model and returns a typed :class:`TrainingResult`. A job supplies only
what differs: how to build a model, its data, its params and tags, and its evaluation.
:func:`fit_models` is the training part alone (for the processes of a torchrun job that do
not log); :func:`model_tag` names a model and :func:`describe_length` states a training
length the same way for every job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from torch import nn

from pipeline import tracking
from pipeline.config import TrainConfig
from pipeline.objective import Likelihood
from pipeline.train import Data, FitResult, fit, fit_ensemble, seed_everything

if TYPE_CHECKING:
    from pipeline.tracking import ModelVersionRef

M = TypeVar("M")

#: What the x axis of the logged training curves counts: optimiser steps or epochs.
CurveAxis = Literal["step", "epoch"]


@dataclass(frozen=True)
class RunSpec:
    """The MLflow run a job logs to.

    Attributes:
        experiment: MLflow experiment name.
        params: Nested params (flattened by ``tracking.start_run``).
        tags: Run tags (``task``, ``model``, ``dataset``, ...).
        run_name: Optional MLflow run name.
    """

    experiment: str
    params: Mapping[str, Any]
    tags: Mapping[str, str]
    run_name: str | None = None


@dataclass(frozen=True)
class TrainingResult(Generic[M]):
    """What a training job returns.

    Attributes:
        run_id: The MLflow run holding params, curves, metrics and the model.
        model: The trained model (best validation weights; a ``DeepEnsemble`` for an
            ensemble), on the CPU.
        fits: One :class:`~pipeline.train.FitResult` per independently trained model (one
            per member of a deep ensemble, else one).
        metrics: The job's typed key metrics (a frozen dataclass of floats).
        registered: The model registry version the job registered its model as, or None
            (not registered).
    """

    run_id: str
    model: nn.Module
    fits: tuple[FitResult, ...]
    metrics: M
    registered: ModelVersionRef | None = None

    @property
    def seconds(self) -> float:
        """Training wall time, all members together."""
        return sum(f.seconds for f in self.fits)

    @property
    def steps(self) -> float:
        """Optimiser steps, averaged over members."""
        return sum(f.steps for f in self.fits) / len(self.fits)

    @property
    def best_step(self) -> float:
        """Step of the best validation NLL, averaged over members (-1 without validation)."""
        return sum(f.best_step for f in self.fits) / len(self.fits)

    def rows(self) -> dict[str, float]:
        """``train_seconds`` and every metric that is set, by name, in field order (to print)."""
        metrics = dataclasses.asdict(self.metrics)  # type: ignore[call-overload]
        values = {name: float(v) for name, v in metrics.items() if v is not None}
        return {"train_seconds": self.seconds, **values}


@dataclass(frozen=True)
class Evaluated(Generic[M]):
    """What a job's evaluation may return instead of bare metrics: also documents for its model.

    Attributes:
        metrics: The job's typed key metrics.
        model_documents: JSON documents logged with the model (``tracking.log_model``'s
            ``documents``), e.g. what scoring needs besides the weights; they travel with
            every registered version of it.
    """

    metrics: M
    model_documents: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)


def describe_length(config: TrainConfig) -> str:
    """The training length for a log line: ``"200 steps"``, ``"0.5 epochs"``.

    Lengths are floats (a schedule may be fractional); a whole number is written without
    its ``.0``.
    """
    length = config.schedule.length
    number = f"{int(length)}" if float(length).is_integer() else f"{length}"
    return f"{number} {config.schedule.unit}"


def model_tag(config: TrainConfig, architecture: str) -> str:
    """The ``model`` tag of a run, e.g. ``rank1-lstm-normal-k4`` or ``deterministic-small-cnn``.

    Args:
        config: Method, posterior and K.
        architecture: The network, e.g. ``"lstm"``, ``"small-cnn"``, ``"wrn28-10"``.

    Returns:
        ``rank1-<arch>-<posterior>-k<K>``, ``deep-ensemble-<arch>-<K>`` or
        ``deterministic-<arch>``.
    """
    if config.method == "rank1":
        return f"rank1-{architecture}-{config.posterior}-k{config.ensemble_size}"
    if config.method == "ensemble":
        return f"deep-ensemble-{architecture}-{config.ensemble_size}"
    return f"deterministic-{architecture}"


def fit_models(
    new_model: Callable[[], nn.Module],
    train: Data,
    val: Data | None,
    *,
    likelihood: Likelihood,
    n_train: int,
    config: TrainConfig,
    checkpoint_dir: Any = None,
    resume: bool = False,
    progress: bool = True,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[nn.Module, tuple[FitResult, ...]]:
    """Train ``config.method``: one model, or a deep ensemble of ``config.ensemble_size``.

    Args:
        new_model: Builds one untrained model: rank-1 for ``method="rank1"``, plain
            otherwise. Called under the run's seed (under member k's for an ensemble), so
            the initialisation is reproducible.
        train: As in :func:`pipeline.train.fit`.
        val: As in :func:`pipeline.train.fit`.
        likelihood: As in :func:`pipeline.train.fit`.
        n_train: As in :func:`pipeline.train.fit`.
        config: The training config.
        checkpoint_dir: As in :func:`pipeline.train.fit` (member k: ``m<k>`` in it).
        resume: As in :func:`pipeline.train.fit`.
        progress: As in :func:`pipeline.train.fit`.
        on_eval: As in :func:`pipeline.train.fit_ensemble`.

    Returns:
        The trained model and each trained model's :class:`FitResult`.
    """
    common = dict(
        likelihood=likelihood,
        n_train=n_train,
        config=config,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        progress=progress,
        on_eval=on_eval,
    )
    if config.method == "ensemble":
        model, fits = fit_ensemble(new_model, train, val, **common)
        return model, tuple(fits)
    seed_everything(config.seed)
    result = fit(new_model(), train, val, **common)
    return result.model, (result,)


def _curve_logger(axis: CurveAxis) -> Callable[[int, dict[str, float]], None]:
    """An ``on_eval`` that logs each evaluation under ``train/`` (``train/member_<k>/``)."""

    def on_eval(step: int, record: dict[str, float]) -> None:
        record = dict(record)
        member = record.pop("member", None)
        prefix = "train/" if member is None else f"train/member_{int(member)}/"
        x = step if axis == "step" else int(round(record["epoch"]))
        tracking.log_metrics(record, step=x, prefix=prefix)

    return on_eval


def run_training(
    new_model: Callable[[], nn.Module],
    train: Data,
    val: Data | None,
    *,
    run: RunSpec,
    evaluate: Callable[[nn.Module], M | Evaluated[M]],
    likelihood: Likelihood,
    n_train: int,
    config: TrainConfig,
    checkpoint_dir: Any = None,
    resume: bool = False,
    progress: bool = True,
    curves: CurveAxis = "step",
) -> TrainingResult[M]:
    """Train, evaluate and log one job into one MLflow run.

    Args:
        new_model: See :func:`fit_models`.
        train: Training data (see :func:`pipeline.train.fit`).
        val: Validation data for model selection, or None.
        run: The MLflow run to open.
        evaluate: The job's evaluation, called inside the run with the trained model; it
            logs what it measures and returns the typed key metrics, or an
            :class:`Evaluated` of them and the documents to log with the model.
        likelihood: ``"bernoulli"`` or ``"categorical"``.
        n_train: Unique training examples (divides the KL).
        config: The training config.
        checkpoint_dir: Trainer checkpoints folder (None: none written).
        resume: Continue from the checkpoint in ``checkpoint_dir``.
        progress: Show a progress bar.
        curves: Log the training curves against optimiser steps or epochs.

    Returns:
        The run id, the model (moved to the CPU), the fits and ``evaluate``'s metrics. An
        interrupted job ends its run KILLED, a failed one FAILED.
    """
    with (
        tracking.start_run(
            run.experiment, run_name=run.run_name, params=dict(run.params), tags=dict(run.tags)
        ) as active,
        tracking.killed_on_interrupt(),
    ):
        model, fits = fit_models(
            new_model,
            train,
            val,
            likelihood=likelihood,
            n_train=n_train,
            config=config,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            progress=progress,
            on_eval=_curve_logger(curves),
        )
        result = TrainingResult(active.info.run_id, model, fits, None)
        tracking.log_metrics(
            {
                "train_seconds": result.seconds,
                "best_step": result.best_step,
                "steps": result.steps,
            }
        )
        evaluated = evaluate(model)
        if not isinstance(evaluated, Evaluated):
            evaluated = Evaluated(evaluated)
        tracking.log_model(model.cpu(), documents=evaluated.model_documents)
    return dataclasses.replace(result, metrics=evaluated.metrics)
