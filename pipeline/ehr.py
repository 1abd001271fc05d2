"""The MIMIC-III in-hospital-mortality job: train, select, calibrate, evaluate, log, report.

:func:`train_ehr` trains a rank-1 EHR LSTM, its deterministic twin or a deep ensemble on a
feature folder (``features.mimic``) with the shared runner (``pipeline.jobs``), keeps the
weights with the best validation NLL, fits a temperature on the validation split and logs
everything to one MLflow run: the full config as params, training curves, validation and
test metrics (raw and calibrated; against the planted risk on synthetic data), cohort-level
plots, the temperature and the model. It returns a typed result with :class:`EHRMetrics`.
:func:`report_ehr` reloads a run's model and temperature and writes the per-patient report.

Patient identifiers never reach MLflow: only cohort-level numbers and plots are logged
(``pipeline.tracking`` refuses identifier-like keys and values), and the per-patient report
is written to owner-only files.

The run also records the epistemic uncertainty its model showed on the validation stays
(the 95th percentile of the mutual information, artifact ``reference/epistemic.json``,
cohort-level numbers only); the report flags each stay above it as unlike the training
population, and states the run, its logged model, method, posterior, the feature folder's
fingerprint and the split (:mod:`pipeline.provenance`).

A run records the fingerprint of its feature folder's channels, hours and normaliser
(param ``data.feature_fingerprint``); :func:`report_ehr` refuses, before any work, a
feature folder whose fingerprint differs, since the model would read columns it was not
trained on or values scaled another way.

The logged model carries a :class:`pipeline.scoring_bundle.ScoringBundle` (channels,
hours, normaliser, fingerprint, temperature, evaluation settings, epistemic reference), and
:func:`train_ehr` registers it as a new version of ``mimic-ihm-<method>`` in the MLflow
Model Registry (optionally promoting it to ``champion`` when its validation NLL beats the
champion's), so a registered version alone is enough to score new patients.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pipeline import plots, tracking
from pipeline.calibration import TemperatureScaler, calibrate_and_report
from pipeline.config import EHR_EXPERIMENT, REGISTER_AS, TrainConfig, registered_model_name
from pipeline.drift import DriftReference, fit_drift_reference
from pipeline.jobs import Evaluated, RunSpec, TrainingResult, model_tag, run_training
from pipeline.metrics import auroc, binary_metrics, ece_against_truth, mixture_probs
from pipeline.predict import model_ensemble_size, predict_logits
from pipeline.provenance import REFERENCE_FILE, EpistemicReference, Provenance, epistemic_reference
from pipeline.report import DEFAULT_COVERAGE
from pipeline.scoring_bundle import BUNDLE_DOCUMENT, ScoringBundle, fingerprint, load_bundle
from pipeline.train import dist_info, resolve_device
from pipeline.uncertainty import default_ranking, referral_curve

if TYPE_CHECKING:
    from features.mimic.manifest import FeatureManifest

TASK = "in-hospital-mortality"
CALIBRATION_FILE = "calibration/temperature.json"
REFERRAL_FILE = "referral/test.json"  # test referral curves (ReferralCurve.to_dict)
#: The run param holding :func:`feature_fingerprint` of the training feature folder.
FINGERPRINT_PARAM = "data.feature_fingerprint"
#: The name the runner logs the model under (``tracking.log_model``'s default).
MODEL_NAME = "model"
#: The run metric that decides whether a new version beats the champion (lower is better):
#: the same validation NLL that selects the weights within a training.
SELECTION_METRIC = "val/nll"


def feature_fingerprint(manifest: FeatureManifest) -> str:
    """A short hash of what a model reads from a feature folder: channels, hours, normaliser.

    Two folders extracted the same way (same variables, same training statistics) share
    it; another cohort, split or schema changes it. The hash is of those entries exactly as
    ``manifest.json`` holds them, so fingerprints recorded by earlier runs still match.

    Args:
        manifest: The folder's manifest (``features.mimic.loader.load_manifest``).

    Returns:
        16 hex digits of the SHA-256 of those three entries as canonical JSON
        (:func:`pipeline.scoring_bundle.fingerprint`, which checks a bundle by it too).
    """
    return fingerprint(manifest.channels, manifest.hours, manifest.normaliser)


def check_trained_on(run_id: str, features_dir: str | os.PathLike) -> str:
    """Refuse a feature folder other than the one (or an identical one) a run trained on.

    Runs logged before fingerprints were recorded have nothing to compare and pass.

    Args:
        run_id: A run written by :func:`train_ehr`.
        features_dir: The feature folder about to be scored.

    Returns:
        The folder's fingerprint (the run's, when it recorded one).

    Raises:
        FeatureFolderError: One line naming the folder's manifest, if the fingerprints
            differ (or the manifest is unreadable).
    """
    from features.mimic.manifest import MANIFEST_FILE, FeatureFolderError, load_manifest

    actual = feature_fingerprint(load_manifest(features_dir))
    recorded = tracking.run_params(run_id).get(FINGERPRINT_PARAM)
    if recorded is not None and recorded != actual:
        raise FeatureFolderError(
            f"{Path(features_dir) / MANIFEST_FILE}: channels or normaliser differ from the "
            f"feature folder run {run_id} was trained on (fingerprint {actual}, expected "
            f"{recorded}); report on the run's own feature folder"
        )
    return actual


def model_config_for(config: TrainConfig, base: Any = None, input_features: int = 76):
    """The :class:`rank1.models.EHRConfig` of ``config.method`` and ``config.posterior``.

    Args:
        config: The training config (method, posterior, ensemble size).
        base: An ``EHRConfig`` with the layer sizes (defaults: the paper's).
        input_features: Channels of the hourly grid.

    Returns:
        A new ``EHRConfig``: rank-1 layers for ``method="rank1"``, plain layers otherwise.
    """
    from rank1.models import EHRConfig

    base = base or EHRConfig()
    rank1_config = dataclasses.replace(
        base.rank1, ensemble_size=config.ensemble_size, posterior=config.posterior
    )
    return dataclasses.replace(
        base,
        input_features=input_features,
        bayesian=config.method == "rank1",
        rank1=rank1_config,
    )


@dataclass(frozen=True)
class EHRMetrics:
    """The key results of an EHR run (raw unless named calibrated), as printed.

    Attributes:
        val_nll: Validation mixture NLL.
        test_auroc: Test AUROC.
        test_auprc: Test AUPRC.
        test_nll: Test NLL.
        test_ece: Test ECE.
        test_calibrated_nll: Test NLL after temperature scaling.
        test_calibrated_ece: Test ECE after temperature scaling.
        temperature: The temperature fitted on the validation split.
        test_planted_auroc: AUROC of the planted risk (synthetic data only, else None).
        test_ece_true_risk: ECE against the planted risk (synthetic data only).
        test_calibrated_ece_true_risk: The same after temperature scaling.
    """

    val_nll: float
    test_auroc: float
    test_auprc: float
    test_nll: float
    test_ece: float
    test_calibrated_nll: float
    test_calibrated_ece: float
    temperature: float
    test_planted_auroc: float | None = None
    test_ece_true_risk: float | None = None
    test_calibrated_ece_true_risk: float | None = None


def train_ehr(
    features_dir: str | os.PathLike,
    config: TrainConfig,
    *,
    experiment: str = EHR_EXPERIMENT,
    model_config: Any = None,
    run_name: str | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    resume_key: str | None = None,
    register_as: str | None = REGISTER_AS,
    promote_if_better: bool = False,
) -> TrainingResult[EHRMetrics]:
    """Train and evaluate an EHR model on a feature folder; log one MLflow run; register it.

    Args:
        features_dir: A feature folder written by ``features.mimic.extract``.
        config: Training config (``method`` picks rank-1 / deterministic / ensemble).
        experiment: MLflow experiment name.
        model_config: ``rank1.models.EHRConfig`` with the layer sizes; ``bayesian``,
            ``ensemble_size`` and ``posterior`` are taken from ``config``.
        run_name: Optional MLflow run name.
        checkpoint_dir: Where the trainer checkpoints (None: no checkpoint files).
        resume: Continue from the checkpoint in ``checkpoint_dir``.
        progress: Show a progress bar.
        resume_key: Tags the run with this key and this process's identity, so that a
            rerun can mark it FAILED if this process dies (``tracking.fail_stale_runs``).
        register_as: The registered model to add the logged model to as a new version
            once the run has finished; ``{method}`` is replaced by ``config.method``
            (default ``mimic-ihm-{method}``). None: not registered.
        promote_if_better: Also point the alias ``champion`` at the new version when its
            run's validation NLL (:data:`SELECTION_METRIC`) is lower than the current
            champion's run's, or when there is no champion yet.

    Returns:
        The run id, the model, its fits, the key metrics (:class:`EHRMetrics`) and the
        registered version (``registered``; None when ``register_as`` is None).

    Raises:
        ValueError: If a split is empty, the job was launched with several processes or
            ``register_as`` is not a valid name (checked before training).
    """
    from features.mimic.loader import load_manifest, load_raw, load_split
    from rank1.models import EHRModel

    if dist_info().world_size > 1:
        # Every process would open its own MLflow run; the IHM cohort (tens of thousands of
        # 48 x 76 grids) trains on one device. Use pipeline.train.fit directly under torchrun.
        raise ValueError("train_ehr runs in a single process; do not launch it with torchrun")
    # Before training: a bad name must not cost a training to find out.
    registered_name = None
    if register_as is not None:
        registered_name = tracking.check_registered_name(
            registered_model_name(register_as, config.method)
        )
    manifest = load_manifest(features_dir)
    x_train, y_train, _ = load_split(features_dir, "train")
    x_val, y_val, _ = load_split(features_dir, "val")
    x_test, y_test, test_stays = load_split(features_dir, "test")
    for name, y in (("train", y_train), ("val", y_val), ("test", y_test)):
        if y.shape[0] == 0:
            raise ValueError(f"{features_dir}: the {name} split is empty")
    true_risk = test_stays["true_risk"].to_numpy() if "true_risk" in test_stays.columns else None
    # What the training stays look like, for the drift checks of every cohort scored later.
    drift = fit_drift_reference(load_raw(features_dir, split="train")[0], manifest.channels)
    model_config = model_config_for(config, model_config, x_train.shape[2])
    params = {
        "train": config.to_dict(),
        "model": dataclasses.asdict(model_config),
        "data": {
            "n_train": x_train.shape[0],
            "n_val": x_val.shape[0],
            "n_test": x_test.shape[0],
            "hours": x_train.shape[1],
            "channels": x_train.shape[2],
            "schema_version": manifest.schema_version,
            "feature_fingerprint": feature_fingerprint(manifest),
        },
    }
    tags = {
        "task": TASK,
        "model": model_tag(config, "lstm"),
        "dataset": "mimic-iii" if true_risk is None else "synthetic-mimic-iii",
    }
    if resume_key is not None:
        tags.update(tracking.process_tags(resume_key))
    device = resolve_device(config.device)
    result = run_training(
        lambda: EHRModel(model_config),
        (x_train, y_train),
        (x_val, y_val),
        run=RunSpec(experiment, params, tags, run_name),
        evaluate=lambda model: _evaluate(
            model,
            config,
            device,
            (x_val, y_val),
            (x_test, y_test),
            true_risk,
            scoring=lambda scaler, k, reference: scoring_bundle(
                manifest, config, scaler, k, reference, drift
            ),
        ),  # fmt: skip
        likelihood="bernoulli",
        n_train=x_train.shape[0],
        config=config,
        checkpoint_dir=checkpoint_dir,
        resume=resume,
        progress=progress,
    )
    if registered_name is None:
        return result
    version = register_run(result.run_id, registered_name, promote_if_better=promote_if_better)
    return dataclasses.replace(result, registered=version)


def register_run(
    run_id: str, name: str, *, promote_if_better: bool = False
) -> tracking.ModelVersionRef:
    """Register a :func:`train_ehr` run's model as a new version of ``name``.

    The version is tagged with what it predicts and reads (task, method, feature schema
    version and fingerprint: the run's own params, no identifiers).

    Args:
        run_id: A run written by :func:`train_ehr`.
        name: The registered model, e.g. ``mimic-ihm-rank1``.
        promote_if_better: Point ``champion`` at it when its validation NLL is lower than
            the champion's (or there is none).

    Returns:
        The version, with its aliases.
    """
    params = tracking.run_params(run_id)
    tags = {
        "task": TASK,
        "method": params.get("train.method", ""),
        "data.schema_version": params.get("data.schema_version", ""),
        FINGERPRINT_PARAM: params.get(FINGERPRINT_PARAM, ""),
    }
    version = tracking.register_model(run_id, name, model_name=MODEL_NAME, tags=tags)
    if promote_if_better:
        version = tracking.promote_if_better(version, metric=SELECTION_METRIC)
    return version


def _evaluate(
    model: torch.nn.Module,
    config: TrainConfig,
    device: torch.device,
    val: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    true_risk: np.ndarray | None,
    scoring: Callable[[TemperatureScaler, int, EpistemicReference], ScoringBundle],
) -> Evaluated[EHRMetrics]:
    """Calibrate on validation, evaluate on test; log metrics, plots and the temperature.

    Args:
        model: The trained model.
        config: Its training config (evaluation samples and batch size).
        device: Where to evaluate.
        val: Validation ``(x, y)``, to fit the temperature on.
        test: Test ``(x, y)``.
        true_risk: The test stays' planted risk (synthetic data), or None.
        scoring: Builds the :class:`ScoringBundle` from the fitted temperature, the
            members K and the validation epistemic reference.

    Returns:
        The key metrics, and the :class:`ScoringBundle` to log with the model.
    """
    (x_val, y_val), (x_test, y_test) = val, test
    k = model_ensemble_size(model)
    val_logits = predict_logits(model, x_val, config, device)
    test_logits = predict_logits(model, x_test, config, device)
    scaler, test_metrics = calibrate_and_report(
        val_logits, y_val, test_logits, y_test, "binary", num_members=k
    )
    val_raw = binary_metrics(val_logits, y_val, num_members=k)
    val_cal = binary_metrics(scaler.apply(val_logits), y_val, num_members=k)
    tracking.log_metrics(val_raw, prefix="val/")
    tracking.log_metrics(val_cal, prefix="val_calibrated/")
    tracking.log_metrics(test_metrics["raw"], prefix="test/")
    tracking.log_metrics(test_metrics["calibrated"], prefix="test_calibrated/")
    tracking.log_metrics({"temperature": scaler.temperature}, prefix="calibration/")
    reference = _log_epistemic_reference(scaler.apply(val_logits))
    calibrated = scaler.apply(test_logits)
    risk = mixture_probs(calibrated)
    truth: dict[str, float] = {}
    if true_risk is not None:
        truth = {
            "planted_auroc": auroc(true_risk, y_test),
            "ece_true_risk": ece_against_truth(mixture_probs(test_logits), true_risk),
            "calibrated_ece_true_risk": ece_against_truth(risk, true_risk),
        }
        tracking.log_metrics(truth, prefix="test/")
    _log_figures(risk, mixture_probs(test_logits), calibrated, y_test)
    tracking.log_dict(
        {
            **scaler.to_dict(),
            "ensemble_size": k,
            "num_eval_samples": config.num_eval_samples,
            "fitted_on": "val",
        },
        CALIBRATION_FILE,
    )
    raw, cal = test_metrics["raw"], test_metrics["calibrated"]
    metrics = EHRMetrics(
        val_nll=val_raw["nll"],
        test_auroc=raw["auroc"],
        test_auprc=raw["auprc"],
        test_nll=raw["nll"],
        test_ece=raw["ece"],
        test_calibrated_nll=cal["nll"],
        test_calibrated_ece=cal["ece"],
        temperature=scaler.temperature,
        **{f"test_{key}": value for key, value in truth.items()},
    )
    bundle = scoring(scaler, k, reference)
    return Evaluated(metrics, {BUNDLE_DOCUMENT: bundle.to_document()})


def scoring_bundle(
    manifest: FeatureManifest,
    config: TrainConfig,
    scaler: TemperatureScaler,
    ensemble_size: int,
    reference: EpistemicReference | None,
    drift: DriftReference | None = None,
) -> ScoringBundle:
    """What scoring a model trained on ``manifest``'s folder needs besides its weights.

    Args:
        manifest: The training feature folder's manifest (channels, hours, normaliser).
        config: The training config (method, posterior, evaluation samples).
        scaler: The temperature fitted on the validation split.
        ensemble_size: Members K the model predicts with.
        reference: The validation epistemic reference (None: not recorded).
        drift: The training split's distribution (``pipeline.drift``), for the drift
            checks of scored cohorts (None: not recorded).

    Returns:
        The bundle.
    """
    return ScoringBundle(
        schema_version=manifest.schema_version,
        channels=manifest.channels,
        hours=manifest.hours,
        normaliser=manifest.normaliser,
        feature_fingerprint=feature_fingerprint(manifest),
        temperature=scaler.to_dict(),
        num_eval_samples=config.num_eval_samples,
        ensemble_size=ensemble_size,
        method=config.method,
        posterior=config.posterior if config.method == "rank1" else None,
        epistemic_reference=None if reference is None else reference.to_dict(),
        drift_reference=None if drift is None else drift.to_dict(),
    )


def _log_epistemic_reference(val_calibrated: torch.Tensor) -> EpistemicReference:
    """Record the validation stays' epistemic percentile, the report's "unlike" threshold.

    From calibrated logits, since the report's uncertainties are calibrated. Only the
    percentile and the number of stays are logged, never a per-stay value.

    Returns:
        The reference, for the scoring bundle.
    """
    reference = epistemic_reference(val_calibrated, split="val")
    record = reference.to_dict()
    tracking.check_no_patient_data(record, "reference")
    tracking.log_dict(record, REFERENCE_FILE)
    return reference


def _log_figures(
    risk: np.ndarray, raw_risk: np.ndarray, calibrated: torch.Tensor, y_test: torch.Tensor
) -> None:
    """The cohort-level test plots: reliability, risk histogram, referral curve."""
    import matplotlib.pyplot as plt

    # Ranked by default_ranking (epistemic for members), as the report ranks them; the
    # numbers go beside the figure so the three strategies can be compared without reading
    # a plot.
    referral = referral_curve(calibrated, y_test, report_coverage=DEFAULT_COVERAGE)
    tracking.log_dict(referral.to_dict(), REFERRAL_FILE)
    figures = {
        "plots/reliability_test_calibrated.png": plots.reliability_figure(
            risk, y_test, raw=raw_risk, title="Test reliability: predicted risk of death"
        ),
        "plots/risk_histogram_test.png": plots.risk_histogram_figure(risk, y_test),
        "plots/referral_test.png": plots.referral_figure(referral),
    }
    for artifact, fig in figures.items():
        tracking.log_figure(fig, artifact)
        plt.close(fig)


def report_ehr(
    run_id: str,
    features_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    split: str = "test",
    coverage: float = DEFAULT_COVERAGE,
) -> dict[str, Path]:
    """Write the per-patient report of one split with a logged run's model and temperature.

    Args:
        run_id: An MLflow run written by :func:`train_ehr`.
        features_dir: The feature folder the run was trained on (same fingerprint).
        out_dir: Report folder (made owner-only; files are written with mode 0600).
        split: ``"train"``, ``"val"`` or ``"test"``.
        coverage: Share of stays the model keeps; the most uncertain rest get refer=True.

    Returns:
        ``{"parquet": path, "csv": path, "json": path, "html": path}``; each states the
        run's provenance and warnings, and flags stays above the run's recorded validation
        epistemic percentile (none for runs logged before it was recorded).

    Raises:
        FeatureFolderError: If the feature folder is not the one the run was trained on
            (checked before anything is loaded or written).
        ModelArtifactError: If the run's model files are missing, foreign or tampered with.
    """
    from features.mimic.loader import load_split
    from pipeline.report import build_report_table, write_report

    fingerprint = check_trained_on(run_id, features_dir)
    model, scaler, config = load_scorer(run_id)
    x, y, stays = load_split(features_dir, split)
    if x.shape[0] == 0:
        raise ValueError(f"{features_dir}: the {split} split is empty")
    logits = predict_logits(model, x, config, torch.device("cpu"))
    reference = load_epistemic_reference(run_id)
    table = build_report_table(
        stays,
        logits,
        scaler,
        coverage=coverage,
        epistemic_threshold=None if reference is None else reference.threshold,
    )
    scored = binary_metrics(scaler.apply(logits), y, num_members=model_ensemble_size(model))
    metrics = {
        f"{split} {name}": scored[name] for name in ("auroc", "auprc", "nll", "ece", "brier")
    }
    metrics["temperature"] = scaler.temperature
    return write_report(
        table,
        out_dir,
        provenance=run_provenance(run_id, fingerprint, split),
        metrics=metrics,
        coverage=coverage,
        raw_risk=mixture_probs(logits),
        referral_by=default_ranking(logits.shape[0]),  # the ranking behind table's flags
    )


def load_scorer(source: tracking.ModelSource) -> tuple[Any, TemperatureScaler, TrainConfig]:
    """A logged model (on the CPU), its temperature and its evaluation settings.

    Args:
        source: An MLflow run written by :func:`train_ehr`, or a registered version of its
            model (``tracking.resolve("models:/mimic-ihm-rank1@champion")``), whose
            temperature and settings come from its :class:`ScoringBundle` alone.

    Returns:
        ``(model, scaler, config)``: the ``torch.nn.Module``, its fitted
        :class:`TemperatureScaler`, and a CPU :class:`TrainConfig` with the run's
        ``num_eval_samples`` (what ``predict_logits`` needs to evaluate it as it was).

    Raises:
        pipeline.tracking.TrackingError: If the run does not exist or cannot be read.
        ModelArtifactError: If its model files are missing, foreign or tampered with.
    """
    model = tracking.load_model(source, map_location="cpu")
    if isinstance(source, str):
        # Runs logged before the bundle existed have only the calibration artifact.
        record = tracking.load_dict(source, CALIBRATION_FILE)
        scaler, samples = TemperatureScaler.from_dict(record), record.get("num_eval_samples", 1)
    else:
        bundle = load_bundle(source)
        scaler, samples = bundle.scaler(), bundle.num_eval_samples
    config = TrainConfig(num_eval_samples=int(samples), device="cpu", bf16=False)
    return model, scaler, config


def load_epistemic_reference(run_id: str) -> EpistemicReference | None:
    """The run's recorded validation epistemic percentile; None for runs logged before it."""
    if not tracking.has_artifact(run_id, REFERENCE_FILE):
        return None
    return EpistemicReference.from_dict(tracking.load_dict(run_id, REFERENCE_FILE))


def run_provenance(run_id: str, fingerprint: str, split: str) -> Provenance:
    """What a report of this run states about its origin (see :class:`Provenance`).

    Args:
        run_id: A run written by :func:`train_ehr`.
        fingerprint: The scored feature folder's fingerprint (:func:`check_trained_on`).
        split: The reported split.

    Returns:
        The provenance; the posterior only for a rank-1 model (others have none), the
        registry versions only for a registered one.
    """
    params = tracking.run_params(run_id)
    method = params.get("train.method")
    versions = ", ".join(version.uri for version in tracking.run_versions(run_id))
    return Provenance(
        run_id=run_id,
        model_name=MODEL_NAME,
        model_id=tracking.logged_model_id(run_id, MODEL_NAME),
        model_registry_version=versions or None,
        method=method,
        posterior=params.get("train.posterior") if method == "rank1" else None,
        feature_fingerprint=fingerprint,
        split=split,
    )
