"""The report table: one row per ICU stay with risk, interval, uncertainties and flags."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from pipeline.calibration import TemperatureScaler
from pipeline.metrics import to_numpy
from pipeline.provenance import (
    UNLIKE_TRAINING_PERCENTILE,
    has_epistemic_part,
)
from pipeline.uncertainty import (
    DEFAULT_INTERVAL,
    UncertaintyKind,
    decompose,
    refer_flags,
)

ID_COLUMNS = ("subject_id", "hadm_id", "icustay_id")
DEFAULT_COVERAGE = 0.8

UNCERTAINTY_COLUMNS = {
    "total": "uncertainty_total",
    "aleatoric": "uncertainty_aleatoric",
    "epistemic": "uncertainty_epistemic",
}


def column_descriptions(
    interval: tuple[float, float] = DEFAULT_INTERVAL,
    coverage: float = DEFAULT_COVERAGE,
    referral_by: str = "total",
) -> dict[str, str]:
    """Plain-language meaning of each report column, for clinicians."""
    low, high = interval
    return {
        "subject_id": "MIMIC-III patient identifier.",
        "hadm_id": "Hospital admission identifier.",
        "icustay_id": "ICU stay identifier (one row per stay).",
        "risk": (
            "Calibrated predicted probability of in-hospital death, averaged over all "
            "ensemble members and samples."
        ),
        "risk_low": (
            f"Lower end of the model's credible interval: the {low:g}th percentile of the "
            "risks predicted by the individual ensemble members and samples."
        ),
        "risk_high": (
            f"Upper end of the credible interval: the {high:g}th percentile of the member "
            "risks. A wide interval means the members disagree about this patient."
        ),
        "uncertainty_total": (
            "Total uncertainty (predictive entropy, nats; 0 = certain, 0.69 = a coin flip). "
            "High when the risk is near 50% or the members disagree."
        ),
        "uncertainty_aleatoric": (
            "Part of the total that is inherent in the data: even a perfect model would "
            "be unsure about this outcome given the recorded measurements."
        ),
        "uncertainty_epistemic": (
            "Part of the total caused by the model's own lack of knowledge (members "
            "disagree), e.g. for patients unlike those seen in training. Treat the risk "
            "of such patients with extra caution."
        ),
        "refer": (
            f"True for the {100 * (1 - coverage):g}% of patients with the highest "
            f"{referral_by} uncertainty: the model suggests these cases get a clinician's "
            "review rather than relying on the score."
        ),
        "unlike_training": (
            "True when this stay's epistemic uncertainty is above the "
            f"{UNLIKE_TRAINING_PERCENTILE:g}th percentile of the model's validation stays "
            "at training: the patient is unlike the training population, so the risk is "
            "an extrapolation. Empty when it cannot be told (a deterministic model, or a "
            "run that recorded no reference)."
        ),
        "outcome": "Observed outcome where known (1 = died in hospital, 0 = survived).",
        "true_risk": "True risk of the synthetic generator (synthetic cohorts only).",
    }


def build_report_table(
    stays: pl.DataFrame,
    member_logits: Any,
    temperature: float | TemperatureScaler,
    coverage: float = DEFAULT_COVERAGE,
    interval: tuple[float, float] = DEFAULT_INTERVAL,
    referral_by: UncertaintyKind | None = None,
    epistemic_threshold: float | None = None,
) -> pl.DataFrame:
    """One row per stay with calibrated risk, interval, uncertainties and a refer flag.

    Args:
        stays: N rows aligned with the logits' N axis; must hold ``subject_id``,
            ``hadm_id``, ``icustay_id``; optional ``label`` (0/1, may be null) and
            ``true_risk`` (synthetic data).
        member_logits: binary member logits, shape (M, N), M = K members x S samples.
        temperature: fitted temperature (float or :class:`TemperatureScaler`).
        coverage: share of stays the model keeps; the rest (most uncertain) get refer=True.
        interval: percentiles (low, high) of the member risks.
        referral_by: uncertainty that ranks stays for referral ('total' or 'epistemic');
            None = :func:`pipeline.uncertainty.default_ranking` (epistemic when M > 1).
        epistemic_threshold: the epistemic uncertainty recorded at training above which a
            stay is unlike the training population
            (:class:`pipeline.provenance.EpistemicReference`); None: unknown.

    Returns:
        DataFrame in the same row order as ``stays`` with columns subject_id, hadm_id,
        icustay_id, risk, risk_low, risk_high, uncertainty_total, uncertainty_aleatoric,
        uncertainty_epistemic, refer, unlike_training (null without a threshold or for a
        model without an epistemic part), and outcome / true_risk when given.
    """
    missing = [c for c in ID_COLUMNS if c not in stays.columns]
    if missing:
        raise ValueError(f"stays is missing identifier columns {missing}")
    scaler = (
        temperature
        if isinstance(temperature, TemperatureScaler)
        else TemperatureScaler(float(temperature))
    )
    logits = to_numpy(member_logits)
    if logits.ndim != 2 or logits.shape[1] != stays.height:
        raise ValueError(
            f"member logits must have shape (M, {stays.height}) for {stays.height} stays, "
            f"got {logits.shape}"
        )
    unc = decompose(scaler.apply(logits), interval=interval)
    table = stays.select(ID_COLUMNS).with_columns(
        pl.Series("risk", unc.probs),
        pl.Series("risk_low", unc.interval_low),
        pl.Series("risk_high", unc.interval_high),
        pl.Series("uncertainty_total", unc.total),
        pl.Series("uncertainty_aleatoric", unc.aleatoric),
        pl.Series("uncertainty_epistemic", unc.epistemic),
        pl.Series("refer", refer_flags(unc.score(referral_by), coverage)),
        _unlike_training(unc.epistemic, logits, epistemic_threshold),
    )
    if "label" in stays.columns:
        table = table.with_columns(stays["label"].cast(pl.Int64).alias("outcome"))
    if "true_risk" in stays.columns:
        table = table.with_columns(stays["true_risk"].cast(pl.Float64).alias("true_risk"))
    return table


def _unlike_training(
    epistemic: np.ndarray, logits: np.ndarray, threshold: float | None
) -> pl.Series:
    """The ``unlike_training`` column: epistemic above the training reference, else null.

    Null, not False, where it cannot be told: a model whose paths all agree has no
    epistemic part to compare, and without a recorded threshold there is nothing to
    compare with.
    """
    if threshold is None or not has_epistemic_part(logits):
        return pl.Series("unlike_training", [None] * epistemic.shape[0], dtype=pl.Boolean)
    return pl.Series("unlike_training", epistemic > threshold)
