"""Score new patients with a registered model: the per-patient report, drift and one MLflow run.

:func:`score_mimic` is what a hospital data team runs every night:

1. resolve a registry URI (``models:/mimic-ihm-rank1@champion`` or ``models:/NAME/3``) to a
   version (``pipeline.tracking.resolve``) and read what it carries: its scoring bundle
   (``pipeline.scoring_bundle``: feature layout, the training normaliser, temperature,
   evaluation settings, the validation epistemic reference and the training data's drift
   reference) and its weights. The training run's feature folder is never needed;
2. build the stays to score: from raw tables with the scoring-mode extraction
   (``features.mimic.extract.extract_for_scoring``: the training cohort rules and 48-hour
   grid, no outcome needed, stays still in the ICU counted once they have 48 hours) into a
   temporary owner-only folder removed afterwards, or from an existing feature folder;
3. refuse a folder whose feature schema (task, schema version, hours, channels) is not the
   model's, then normalise the raw grid with the model's normaliser, never refitted on the
   new stays (their own statistics would hide exactly the shift the drift section shows);
4. predict with the model's evaluation settings and temperature, as ``report_ehr`` does, and
   write the per-patient report (``pipeline.report``) without outcome columns, with a drift
   section: per-variable PSI of the charted hourly values and the charting rates against the
   training data (``pipeline.drift``), and the "unlike the training population" flags;
5. log one MLflow run (experiment ``pipeline.config.SCORING_EXPERIMENT``) tagged with the
   model version (``rank1.model_version``, ``rank1.model_id``, ``rank1.source_run``) and
   cohort-level numbers only: stays scored, stays skipped and why, mean risk,
   shares referred and flagged, drift statistics. No identifier reaches it.

Every check that bad input can fail (the URI, the bundle, the export, the schema, an export
where no stay reaches 48 hours) runs before the report folder is touched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from pipeline import tracking
from pipeline.config import SCORING_EXPERIMENT, TrainConfig
from pipeline.drift import DriftReference, DriftReport, compare
from pipeline.ehr import MODEL_NAME
from pipeline.predict import predict_logits
from pipeline.provenance import Provenance, cohort_counts
from pipeline.report import DEFAULT_COVERAGE, build_report_table, write_report
from pipeline.scoring_bundle import ScoringBundle, load_bundle
from pipeline.uncertainty import default_ranking

#: Columns of a training folder's stays that a scoring report leaves out: scoring is for
#: patients whose outcome is not known, and the report must look the same either way.
OUTCOME_COLUMNS = ("label", "true_risk", "split")
REPORT_TITLE = "In-hospital mortality of current patients: risk and uncertainty"


class FeatureSchemaError(ValueError):
    """A feature folder's layout is not the one the model reads (one line, names the file)."""


@dataclass(frozen=True)
class ScoredCohort:
    """What scoring found, cohort-level only.

    Attributes:
        stays: Stays scored.
        skipped: Stays of the export left out, by reason (empty for a feature folder).
        as_of: The time stays still in the ICU were measured to (None for a folder).
        mean_risk: Mean calibrated risk of the scored stays.
        referred: Stays the report refers for review.
        unlike_training: Stays flagged as unlike the training population (None when the
            model cannot tell: no epistemic part, or no recorded reference).
        drift: The per-variable drift, or None when the model carries no drift reference.
    """

    stays: int
    skipped: dict[str, int]
    as_of: datetime | None
    mean_risk: float
    referred: int
    unlike_training: int | None
    drift: DriftReport | None

    def metrics(self) -> dict[str, float]:
        """The numbers logged to the scoring run (no identifier, no per-stay value)."""
        values = {
            "stays_scored": float(self.stays),
            "mean_risk": self.mean_risk,
            "share_referred": self.referred / self.stays,
            **{f"skipped/{reason}": float(n) for reason, n in self.skipped.items()},
        }
        if self.unlike_training is not None:
            values["share_unlike_training"] = self.unlike_training / self.stays
        if self.drift is not None:
            values.update(self.drift.metrics())
        return values


@dataclass(frozen=True)
class ScoringResult:
    """One scoring run.

    Attributes:
        model: The registered version that scored the stays.
        run_id: The MLflow scoring run.
        files: The report's files (``parquet``, ``csv``, ``json``, ``html``).
        cohort: What was scored (:class:`ScoredCohort`).
    """

    model: tracking.ModelVersionRef
    run_id: str
    files: dict[str, Path]
    cohort: ScoredCohort


@dataclass(frozen=True)
class _Stays:
    """The stays to score: raw grid, rows, and where they came from."""

    folder: Path
    grid: np.ndarray
    rows: pl.DataFrame
    skipped: dict[str, int]
    as_of: datetime | None


def check_schema(bundle: ScoringBundle, feature_dir: str | os.PathLike) -> None:
    """Refuse a feature folder the model cannot read (another task, schema, hours, channels).

    Raises:
        FeatureSchemaError: Naming the folder's manifest and the first difference.
    """
    from features.mimic.manifest import MANIFEST_FILE, load_manifest

    manifest = load_manifest(feature_dir)
    path = Path(feature_dir) / MANIFEST_FILE
    expected = {
        "task": bundle.task,
        "schema version": bundle.schema_version,
        "hours": bundle.hours,
        "channel count": len(bundle.channels),
    }
    found = {
        "task": manifest.task,
        "schema version": manifest.schema_version,
        "hours": manifest.hours,
        "channel count": len(manifest.channels),
    }
    for what, value in expected.items():
        if found[what] != value:
            raise FeatureSchemaError(
                f"{path}: {what} {found[what]!r} is not the model's ({value!r}); extract the "
                "tables with this version of rank1, or score with a model trained on them"
            )
    for position, (ours, theirs) in enumerate(zip(manifest.channels, bundle.channels, strict=True)):
        if ours != theirs:
            raise FeatureSchemaError(
                f"{path}: channel {position} is {ours!r}, the model reads {theirs!r} there"
            )


@contextlib.contextmanager
def _stays(
    mimic_dir: str | os.PathLike | None,
    features_dir: str | os.PathLike | None,
    split: str | None,
    as_of: datetime | None,
    progress: bool,
) -> Iterator[_Stays]:
    """The stays of an export (extracted into a temporary folder) or of a feature folder."""
    from features.mimic.extract import extract_for_scoring
    from features.mimic.loader import load_raw

    if (mimic_dir is None) == (features_dir is None):
        raise ValueError("give exactly one of mimic_dir (raw tables) and features_dir")
    if features_dir is not None:
        grid, rows = load_raw(features_dir, split=split)
        yield _Stays(Path(features_dir), grid, rows, {}, None)
        return
    if split is not None:
        raise ValueError("split applies to a feature folder, not to raw tables")
    # mkdtemp makes the folder 0700; the extraction writes its files 0600.
    with tempfile.TemporaryDirectory(prefix="rank1-score-") as tmp:
        folder = Path(tmp) / "features"
        manifest = extract_for_scoring(mimic_dir, folder, as_of=as_of, progress=progress)
        grid, rows = load_raw(folder)
        skipped = manifest.skipped.model_dump() if manifest.skipped is not None else {}
        yield _Stays(folder, grid, rows, skipped, manifest.as_of)


def _provenance(model: tracking.ModelVersionRef, bundle: ScoringBundle, scored: str) -> Provenance:
    return Provenance(
        run_id=model.run_id,
        model_name=MODEL_NAME,
        model_id=model.model_id,
        model_registry_version=model.uri,
        method=bundle.method,
        posterior=bundle.posterior,
        feature_fingerprint=bundle.feature_fingerprint,
        split=scored,
    )


def _predict(model_ref: tracking.ModelVersionRef, bundle: ScoringBundle, grid: np.ndarray):
    """Member logits (M, N) of the raw grid, normalised with the model's own statistics."""
    from features.mimic.grid import apply_normaliser

    x = torch.from_numpy(apply_normaliser(grid, bundle.normaliser.model_dump()))
    model = tracking.load_model(model_ref, map_location="cpu")
    config = TrainConfig(num_eval_samples=bundle.num_eval_samples, device="cpu", bf16=False)
    return predict_logits(model, x, config, torch.device("cpu"))


def score_mimic(
    model_uri: str,
    out_dir: str | os.PathLike,
    *,
    mimic_dir: str | os.PathLike | None = None,
    features_dir: str | os.PathLike | None = None,
    split: str | None = None,
    as_of: datetime | None = None,
    coverage: float = DEFAULT_COVERAGE,
    experiment: str = SCORING_EXPERIMENT,
    progress: bool = True,
) -> ScoringResult:
    """Score the stays of an export (or a feature folder) with a registered model.

    Args:
        model_uri: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.
        out_dir: Report folder (made owner-only; files are written with mode 0600).
        mimic_dir: Folder of raw MIMIC-III tables to score (the outcome columns may be
            absent); exclusive with ``features_dir``.
        features_dir: An existing feature folder (scoring or training) instead.
        split: With a training folder, score one split only (None: every stay).
        as_of: The export's time, to which stays still in the ICU are measured (None: the
            newest event time of the export).
        coverage: Share of stays the model keeps; the most uncertain rest get refer=True.
        experiment: MLflow experiment of the scoring run.
        progress: Show the extraction's progress display.

    Returns:
        The :class:`ScoringResult`.

    Raises:
        pipeline.tracking.RegistryError: An unknown model, version or alias, or a bad URI.
        pipeline.tracking.ModelArtifactError: A version without a readable scoring bundle.
        features.mimic.tables.MimicInputError: Bad tables, or no stay reaching 48 hours.
        FeatureSchemaError: A feature folder the model cannot read.
        ValueError: Both or neither of ``mimic_dir`` and ``features_dir``.
    """
    model = tracking.resolve(model_uri)
    bundle = load_bundle(model)
    with _stays(mimic_dir, features_dir, split, as_of, progress) as stays:
        check_schema(bundle, stays.folder)
        if stays.rows.height == 0:
            raise ValueError(f"{stays.folder}: no stay to score")
        logits = _predict(model, bundle, stays.grid)
        drift = None
        if bundle.drift_reference is not None:
            reference = DriftReference.from_dict(bundle.drift_reference)
            drift = compare(reference, stays.grid, bundle.channels)
    reference = bundle.reference()
    table = build_report_table(
        stays.rows.drop([c for c in OUTCOME_COLUMNS if c in stays.rows.columns]),
        logits,
        bundle.scaler(),
        coverage=coverage,
        epistemic_threshold=None if reference is None else reference.threshold,
    )
    scored = "all stays" if split is None else f"{split} split"
    if stays.as_of is not None:
        scored = f"stays with 48 h of data as of {stays.as_of.isoformat(sep=' ')}"
    counts = cohort_counts(table)
    mean_risk = float(table["risk"].mean())
    shown: dict[str, Any] = {"stays scored": counts.n_stays, "mean predicted risk": mean_risk}
    shown.update({f"stays skipped: {k.replace('_', ' ')}": n for k, n in stays.skipped.items()})
    files = write_report(
        table,
        out_dir,
        title=REPORT_TITLE,
        provenance=_provenance(model, bundle, scored),
        metrics=shown,
        metrics_title="Stays scored",
        coverage=coverage,
        referral_by=default_ranking(logits.shape[0]),
        drift=drift,
    )
    cohort = ScoredCohort(
        stays=counts.n_stays,
        skipped=stays.skipped,
        as_of=stays.as_of,
        mean_risk=mean_risk,
        referred=counts.n_referred,
        unlike_training=counts.n_unlike_training,
        drift=drift,
    )
    run_id = _log_scoring(model, cohort, experiment, coverage)
    return ScoringResult(model=model, run_id=run_id, files=files, cohort=cohort)


def _log_scoring(
    model: tracking.ModelVersionRef, cohort: ScoredCohort, experiment: str, coverage: float
) -> str:
    """Log the scoring run, tagged with the model version; return the run's id."""
    params: dict[str, Any] = {
        "model": {"name": model.name, "version": model.version, "run_id": model.run_id},
        "coverage": coverage,
    }
    if cohort.as_of is not None:
        params["as_of"] = cohort.as_of.isoformat(sep=" ")
    # Linked by tags: MLflow's run inputs of kind "model" exist only on Databricks.
    tags = {
        "rank1.kind": "scoring",
        "rank1.source_run": model.run_id,
        "rank1.model_version": model.uri,
        "rank1.model_id": model.model_id,
    }
    with tracking.start_run(experiment, params=params, tags=tags) as run:
        tracking.log_metrics(cohort.metrics())
        return run.info.run_id
