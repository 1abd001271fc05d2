"""What a per-patient report states about itself: provenance, warnings, the training reference.

A report handed to a clinician must say which model made it (run, logged model, method
and posterior), on which data (the feature folder's fingerprint, the split) and when; warn
where its numbers cannot carry much weight (a small sample, a model without an epistemic
part); and mark the stays whose epistemic uncertainty is above what the model showed on
its own validation stays ("unlike the training population").

Everything here is cohort-level: no field holds a patient, admission or stay identifier,
so the same document goes into the report's JSON sidecar, its Parquet metadata and its
HTML page, and the training reference into the MLflow run.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from pipeline.drift import DriftReport
from pipeline.metrics import to_numpy
from pipeline.uncertainty import decompose

#: Fewer stays than this in the reported split and its metrics are too noisy to act on.
MIN_STAYS = 200
#: Fewer observed deaths than this and AUROC, calibration and referral rest on a handful.
MIN_EVENTS = 20
#: Percentile of the validation stays' epistemic uncertainty above which a stay is
#: "unlike the training population".
UNLIKE_TRAINING_PERCENTILE = 95.0
#: The run artifact holding the :class:`EpistemicReference` (cohort-level numbers only).
REFERENCE_FILE = "reference/epistemic.json"
#: Shown where a field was not recorded (e.g. a report built from arrays, not a run).
NOT_RECORDED = "not recorded"


def utc_now_iso() -> str:
    """The current UTC time as ISO 8601 to the second, e.g. ``2026-12-02T05:40:00+00:00``."""
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True)
class Provenance:
    """Where a report comes from; every field is cohort-level (no patient identifiers).

    Attributes:
        run_id: The MLflow run whose model and temperature scored the stays.
        model_name: The logged model's name within the run (``tracking.log_model``).
        model_id: MLflow's id of that logged model.
        model_registry_version: The MLflow Model Registry versions of the run's model
            (``models:/NAME/VERSION``, comma-separated if several); None for a model never
            registered, so the report says so rather than inventing one.
        method: ``rank1``, ``deterministic`` or ``ensemble`` (run param ``train.method``).
        posterior: The rank-1 factors' posterior (``normal``, ``cauchy``); None for
            models without one.
        feature_fingerprint: Fingerprint of the scored feature folder's channels, hours
            and normaliser (``pipeline.ehr.feature_fingerprint``).
        split: The reported split (``train``, ``val`` or ``test``).
        created_at: When the report was made, UTC ISO 8601.
    """

    run_id: str | None = None
    model_name: str | None = None
    model_id: str | None = None
    model_registry_version: str | None = None
    method: str | None = None
    posterior: str | None = None
    feature_fingerprint: str | None = None
    split: str | None = None
    created_at: str = field(default_factory=utc_now_iso)

    def to_dict(self) -> dict[str, str | None]:
        """Field name -> value (None where not recorded), for JSON."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EpistemicReference:
    """The epistemic uncertainty a model showed on its own validation stays.

    Attributes:
        percentile: Which percentile ``threshold`` is (95).
        threshold: That percentile of the validation stays' mutual information (nats,
            calibrated logits); None for a model without an epistemic part.
        n_stays: How many validation stays it was computed on.
        split: The split it was computed on (``val``).
    """

    percentile: float
    threshold: float | None
    n_stays: int
    split: str = "val"

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for ``tracking.log_dict``."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> EpistemicReference:
        """Read back :meth:`to_dict`; a non-finite threshold counts as none."""
        threshold = record.get("threshold")
        if threshold is not None and not math.isfinite(float(threshold)):
            threshold = None
        return cls(
            percentile=float(record["percentile"]),
            threshold=None if threshold is None else float(threshold),
            n_stays=int(record["n_stays"]),
            split=str(record.get("split", "val")),
        )


def has_epistemic_part(member_logits: Any) -> bool:
    """Whether the forward paths can disagree: more than one, and not all identical.

    A deterministic model has one path (or identical repeats of it), so its mutual
    information is zero and its member interval collapses to the risk itself.
    """
    logits = to_numpy(member_logits)
    return logits.shape[0] > 1 and not bool(np.all(logits == logits[:1]))


def epistemic_reference(member_logits: Any, split: str = "val") -> EpistemicReference:
    """The :data:`UNLIKE_TRAINING_PERCENTILE` of the epistemic uncertainty of some stays.

    Args:
        member_logits: Calibrated member logits of the validation stays, (M, N) binary
            or (M, N, C): calibrated because the report's uncertainties are.
        split: The split they come from, recorded with the number.

    Returns:
        The reference; its threshold is None when the model has no epistemic part.
    """
    logits = to_numpy(member_logits)
    n_stays = int(logits.shape[1])
    threshold = None
    if has_epistemic_part(logits) and n_stays > 0:
        epistemic = decompose(logits).epistemic
        threshold = float(np.percentile(epistemic, UNLIKE_TRAINING_PERCENTILE))
    return EpistemicReference(UNLIKE_TRAINING_PERCENTILE, threshold, n_stays, split)


def intervals_collapse(table: pl.DataFrame) -> bool:
    """Whether every stay's member interval is a single point (no epistemic part)."""
    return bool((table["risk_high"] == table["risk_low"]).all())


@dataclass(frozen=True)
class CohortCounts:
    """The counts a report states, taken from its own columns.

    Attributes:
        n_stays: Rows of the report.
        n_known: Stays whose outcome is known (0 without an outcome column).
        n_events: Known deaths among them (None without an outcome column).
        n_referred: Stays with ``refer`` True.
        n_unlike_training: Stays with ``unlike_training`` True (None when the flag is
            unavailable for every stay).
    """

    n_stays: int
    n_known: int
    n_events: int | None
    n_referred: int
    n_unlike_training: int | None

    def to_dict(self) -> dict[str, int | None]:
        """Plain values, for JSON."""
        return dataclasses.asdict(self)


def cohort_counts(table: pl.DataFrame) -> CohortCounts:
    """Count stays, known outcomes, deaths, referrals and "unlike training" flags."""
    n_known, n_events = 0, None
    if "outcome" in table.columns:
        known = table["outcome"].drop_nulls()
        n_known, n_events = known.len(), int((known == 1).sum())
    n_unlike = None
    if "unlike_training" in table.columns and table["unlike_training"].null_count() < table.height:
        n_unlike = int(table["unlike_training"].sum())
    return CohortCounts(
        n_stays=table.height,
        n_known=n_known,
        n_events=n_events,
        n_referred=int(table["refer"].sum()),
        n_unlike_training=n_unlike,
    )


def share_text(count: int, total: int, what: str) -> str:
    """``"2 of 7 stays referred (29%)"``: the count itself, not a nominal share."""
    percent = f"{100 * count / total:.0f}%" if total else "n/a"
    return f"{count} of {total} stays {what} ({percent})"


def report_warnings(table: pl.DataFrame, drift: DriftReport | None = None) -> tuple[str, ...]:
    """The warnings a report shows, in plain words; none mentions a patient.

    Args:
        table: The report table (``pipeline.report.build_report_table``).
        drift: The scored stays' drift against the training data, if compared.

    Returns:
        One sentence per warning: a sample too small for its metrics (fewer than
        :data:`MIN_STAYS` stays or :data:`MIN_EVENTS` deaths; only where outcomes are
        known, since a report without them shows no metrics), a model without an
        epistemic part, an "unlike the training population" flag that is unavailable, or
        variables that drifted from the training data.
    """
    counts = cohort_counts(table)
    warnings = []
    if counts.n_events is not None and counts.n_stays < MIN_STAYS:
        warnings.append(
            f"Small sample: {counts.n_stays} stays (fewer than {MIN_STAYS}). AUROC, "
            "calibration and referral figures of so few stays are too noisy to act on."
        )
    if counts.n_events is not None and counts.n_events < MIN_EVENTS:
        warnings.append(
            f"Few deaths: {counts.n_events} observed among {counts.n_known} stays with a "
            f"known outcome (fewer than {MIN_EVENTS}). AUROC, AUPRC and the reliability "
            "diagram rest on a handful of patients."
        )
    if intervals_collapse(table):
        warnings.append(
            "Deterministic model: it has no epistemic part, so the member interval "
            "collapses to the risk itself and the epistemic uncertainty is zero. It cannot "
            "say when a patient is unlike those it was trained on."
        )
    elif counts.n_unlike_training is None:
        warnings.append(
            "The 'unlike the training population' flag is unavailable: the run recorded no "
            "reference epistemic uncertainty of its validation stays (trained before it was "
            "recorded, or reported without one)."
        )
    if drift is not None and drift.major:
        warnings.append(
            f"Data drift: {len(drift.major)} of {len(drift.variables)} variables are measured "
            "or recorded unlike the training data ("
            + "; ".join(v.describe() for v in drift.major)
            + "). The model was not trained on data like this: read its risks with care."
        )
    return tuple(warnings)
