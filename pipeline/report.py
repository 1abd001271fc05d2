"""Per-patient uncertainty report: one row per ICU stay, written as Parquet, CSV and HTML.

The table is computed from *calibrated* member logits (each path divided by the fitted
temperature), so the risk, its interval and the uncertainties all describe the same
calibrated predictive distribution. The HTML page is self-contained (inline CSS, plots as
base64 PNG, no scripts or external links) so it opens offline on a hospital workstation, and
every output file is owner-only (directory 0700, files 0600) because it holds patient
identifiers.

Each report states where it comes from and what to read with care, the same in all its
files (:mod:`pipeline.provenance`): the HTML page shows the provenance and the warnings at
the top; the Parquet file carries them as key-value metadata (written with pyarrow,
since polars cannot set custom Parquet metadata in every version); and ``report.json``,
beside the CSV, holds them with the column descriptions. A sidecar rather than a comment
header, because most CSV readers (spreadsheets, ``pandas.read_csv`` by default, polars)
would take comment lines for data.
"""

from __future__ import annotations

import html
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from features.io import make_private_dir, write_private_bytes, write_private_text
from pipeline import plots
from pipeline.calibration import TemperatureScaler
from pipeline.metrics import to_numpy
from pipeline.provenance import (
    NOT_RECORDED,
    UNLIKE_TRAINING_PERCENTILE,
    Provenance,
    cohort_counts,
    has_epistemic_part,
    intervals_collapse,
    report_warnings,
    share_text,
)
from pipeline.uncertainty import (
    DEFAULT_INTERVAL,
    UncertaintyKind,
    decompose,
    refer_flags,
    referral_curve_from_scores,
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


def _format_metric(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em;
       color: #222; max-width: 1200px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; position: sticky; top: 0; }
td.id { text-align: left; font-family: monospace; }
tr.refer td { background: #fff3cd; }
.warnings { border: 2px solid #b45309; background: #fff7ed; padding: 0.5em 1em;
            margin: 1em 0; }
.warnings h2 { margin-top: 0.3em; color: #b45309; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; }
.figures figure { margin: 0; }
dl dt { font-weight: bold; font-family: monospace; margin-top: 0.5em; }
dl dd { margin-left: 1.5em; }
.note { color: #555; font-size: 0.9em; }
"""


def _figure_html(fig: Any, caption: str) -> str:
    data = plots.figure_base64(fig)
    return (
        f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _cohort_rows(table: pl.DataFrame, columns: list[str]) -> str:
    rows = []
    for record in table.sort("risk", descending=True).iter_rows(named=True):
        cells = []
        for col in columns:
            value = record[col]
            if col in ID_COLUMNS:
                cells.append(f'<td class="id">{html.escape(str(value))}</td>')
            elif col in ("risk", "risk_low", "risk_high", "true_risk"):
                cells.append(f"<td>{_percent(value)}</td>")
            elif col.startswith("uncertainty_"):
                cells.append(f"<td>{value:.3f}</td>")
            elif col == "refer":
                cells.append(f"<td>{'REFER' if value else ''}</td>")
            elif col == "unlike_training":
                cells.append(f"<td>{_unlike_cell(value)}</td>")
            else:
                cells.append(f"<td>{'' if value is None else html.escape(str(value))}</td>")
        css = ' class="refer"' if record["refer"] else ""
        rows.append(f"<tr{css}>{''.join(cells)}</tr>")
    return "\n".join(rows)


def _unlike_cell(value: bool | None) -> str:
    if value is None:
        return "n/a"
    return "UNLIKE" if value else ""


#: How each provenance field is labelled on the page.
_PROVENANCE_LABELS = {
    "run_id": "MLflow run",
    "model_name": "Logged model name",
    "model_id": "Logged model id",
    "model_registry_version": "Model registry version",
    "method": "Method",
    "posterior": "Posterior",
    "feature_fingerprint": "Feature folder fingerprint",
    "split": "Split",
    "created_at": "Created (UTC)",
}


#: What an empty provenance field says, where "not recorded" would mislead.
_PROVENANCE_MISSING = {
    "model_registry_version": "not registered (no model registry yet)",
    "posterior": "none (not a rank-1 model, or not recorded)",
}


def _provenance_value(key: str, value: str | None) -> str:
    return _PROVENANCE_MISSING.get(key, NOT_RECORDED) if value is None else str(value)


def _provenance_html(provenance: Provenance) -> str:
    rows = "".join(
        f'<tr><th>{html.escape(_PROVENANCE_LABELS[key])}</th><td class="id">'
        f"{html.escape(_provenance_value(key, value))}</td></tr>"
        for key, value in provenance.to_dict().items()
    )
    return f"<h2>Provenance</h2><table>{rows}</table>"


def _warnings_html(warnings: tuple[str, ...]) -> str:
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return f'<div class="warnings" role="alert"><h2>Read with care</h2><ul>{items}</ul></div>'


def _summary_html(table: pl.DataFrame) -> str:
    """The counts as they are: "2 of 7 stays referred (29%)", not the nominal coverage."""
    counts = cohort_counts(table)
    referred = share_text(counts.n_referred, counts.n_stays, "referred for review")
    if intervals_collapse(table):
        unlike = (
            "No stay can be flagged as unlike the training population: the model has no "
            "epistemic part."
        )
    elif counts.n_unlike_training is None:
        unlike = "The 'unlike the training population' flag is unavailable."
    else:
        unlike = (
            share_text(counts.n_unlike_training, counts.n_stays, "flagged")
            + " as unlike the training population (epistemic uncertainty above the "
            f"{UNLIKE_TRAINING_PERCENTILE:g}th percentile of the validation stays)."
        )
    return (
        f'<p class="note">{counts.n_stays} stays; {html.escape(referred)}. '
        f"{html.escape(unlike)} "
        "Contains patient identifiers: handle under your data-use agreement.</p>"
    )


def render_html(
    table: pl.DataFrame,
    *,
    title: str,
    provenance: Provenance | None = None,
    metrics: Mapping[str, Any] | None = None,
    interval: tuple[float, float] = DEFAULT_INTERVAL,
    coverage: float = DEFAULT_COVERAGE,
    referral_by: UncertaintyKind = "epistemic",
    n_bins: int = 15,
    raw_risk: Any = None,
) -> str:
    """The self-contained HTML page of :func:`write_report` (see there for arguments)."""
    ranked = table[UNCERTAINTY_COLUMNS[referral_by]].to_numpy()
    # The page names the ranking and plots its curve: it must be the one behind the flags.
    if not np.array_equal(refer_flags(ranked, coverage), table["refer"].to_numpy()):
        raise ValueError(
            f"the table's refer flags are not the {referral_by} ranking at coverage "
            f"{coverage:g}; pass the referral_by and coverage the table was built with"
        )
    descriptions = column_descriptions(interval, coverage, referral_by)
    columns = [c for c in table.columns if c in descriptions]
    provenance = provenance or Provenance()
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _summary_html(table),
        _warnings_html(report_warnings(table)),
        _provenance_html(provenance),
    ]
    if metrics:
        parts.append("<h2>Model performance</h2><table><tr><th>metric</th><th>value</th></tr>")
        for key, value in metrics.items():
            parts.append(
                f'<tr><td class="id">{html.escape(str(key))}</td>'
                f"<td>{html.escape(_format_metric(value))}</td></tr>"
            )
        parts.append("</table>")

    with_raw = table if raw_risk is None else table.with_columns(_raw_risk_series(raw_risk))
    known = with_raw.filter(pl.col("outcome").is_not_null()) if "outcome" in columns else None
    parts.append("<h2>Calibration and referral</h2>")
    if known is not None and known.height > 0:
        risk = known["risk"].to_numpy()
        outcome = known["outcome"].to_numpy()
        raw = known[_RAW_RISK].to_numpy() if raw_risk is not None else None
        figures = [
            _figure_html(
                plots.reliability_figure(risk, outcome, raw=raw, n_bins=n_bins),
                "Reliability diagram: share of patients who died against their predicted "
                f"risk of death{' before (raw) and after calibration' if raw is not None else ''}"
                "; points on the diagonal mean the stated risks can be taken at face value. "
                "The bars below count the stays in each bin: a bin of a few stays says "
                "little.",
            ),
            _figure_html(
                plots.referral_figure(
                    referral_curve_from_scores(
                        risk,
                        outcome,
                        known[UNCERTAINTY_COLUMNS[referral_by]].to_numpy(),
                        by=referral_by,
                        report_coverage=coverage,
                    )
                ),
                f"Referral: log loss, Brier score, calibration error and AUROC of the stays "
                f"the model keeps when the rest, ranked by {referral_by} uncertainty, go to a "
                "clinician; against random referral and an oracle that knows the outcomes. "
                "The vertical line is this report's share kept.",
            ),
            _figure_html(
                plots.risk_histogram_figure(risk, outcome),
                "Predicted risk of death of the patients who died and of those who survived.",
            ),
        ]
        parts.append(f'<div class="figures">{"".join(figures)}</div>')
    else:
        parts.append(
            '<p class="note">No outcomes are known for these stays, so calibration and '
            "referral performance cannot be shown.</p>"
        )

    parts.append("<h2>Cohort (highest risk first)</h2><table><tr>")
    parts.extend(f"<th>{html.escape(c)}</th>" for c in columns)
    parts.append("</tr>")
    parts.append(_cohort_rows(table, columns))
    parts.append("</table>")

    parts.append("<h2>What the columns mean</h2><dl>")
    for col in columns:
        parts.append(f"<dt>{html.escape(col)}</dt><dd>{html.escape(descriptions[col])}</dd>")
    parts.append(
        "</dl><p class='note'>The risk is a statistical estimate from routinely collected "
        "data and does not replace clinical judgement.</p></body></html>"
    )
    return "\n".join(parts)


#: Key of the report document (provenance, warnings, counts) in the Parquet metadata.
PARQUET_METADATA_KEY = "rank1.report"
#: A temporary column name for the uncalibrated risk while the figures are drawn.
_RAW_RISK = "__raw_risk"


def _raw_risk_series(raw_risk: Any) -> pl.Series:
    return pl.Series(_RAW_RISK, to_numpy(raw_risk).astype(np.float64))


def report_document(
    table: pl.DataFrame, provenance: Provenance, descriptions: Mapping[str, str]
) -> dict[str, Any]:
    """The report's statement about itself, for ``report.json`` and the Parquet metadata.

    Cohort-level only: provenance, warnings, counts and what the columns mean; no row.
    """
    return {
        "provenance": provenance.to_dict(),
        "warnings": list(report_warnings(table)),
        "counts": cohort_counts(table).to_dict(),
        "columns": {c: descriptions[c] for c in table.columns if c in descriptions},
    }


def _parquet_bytes(table: pl.DataFrame, document: Mapping[str, Any]) -> bytes:
    """The table as Parquet with the document as key-value metadata.

    Each provenance field also gets its own key (``provenance.run_id``, ...) so a schema
    viewer shows them without parsing JSON.
    """
    metadata = {PARQUET_METADATA_KEY: json.dumps(document, sort_keys=True)}
    for key, value in document["provenance"].items():
        metadata[f"provenance.{key}"] = _provenance_value(key, value)
    arrow = table.to_arrow()
    arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), **metadata})
    buffer = io.BytesIO()
    pq.write_table(arrow, buffer)
    return buffer.getvalue()


def read_report_document(path: str | os.PathLike) -> dict[str, Any]:
    """The document :func:`write_report` stored in a report's Parquet metadata.

    Raises:
        ValueError: If the file carries none (not a report of this project).
    """
    metadata = pq.read_schema(path).metadata or {}
    raw = metadata.get(PARQUET_METADATA_KEY.encode("utf-8"))
    if raw is None:
        raise ValueError(f"{path}: no {PARQUET_METADATA_KEY} metadata (not a rank1 report)")
    return json.loads(raw)


def write_report(
    table: pl.DataFrame,
    out_dir: str | os.PathLike,
    *,
    title: str = "In-hospital mortality: per-patient risk and uncertainty",
    provenance: Provenance | None = None,
    metrics: Mapping[str, Any] | None = None,
    interval: tuple[float, float] = DEFAULT_INTERVAL,
    coverage: float = DEFAULT_COVERAGE,
    referral_by: UncertaintyKind = "epistemic",
    n_bins: int = 15,
    raw_risk: Any = None,
) -> dict[str, Path]:
    """Write report.parquet, report.csv, report.json and a self-contained report.html.

    All owner-only (0600), each written to a temporary name and renamed into place. The
    provenance, warnings and counts are the same in all of them: the HTML shows them, the
    Parquet file carries them as metadata, ``report.json`` (the CSV's sidecar) holds them.

    Args:
        table: output of :func:`build_report_table`.
        out_dir: directory for the report; created (or tightened) to mode 0700.
        title: page title.
        provenance: run, model, method, fingerprint, split and creation time; default:
            only the creation time (fields shown as not recorded).
        metrics: optional cohort-level metrics shown at the top (e.g. test metrics).
        interval: the percentiles used to build ``table`` (for the column explanations).
        coverage: the coverage used to build ``table``.
        referral_by: the uncertainty that ranked stays for referral, as
            :func:`pipeline.uncertainty.default_ranking` chose it for ``table``
            ('total' for a one-path model); checked against the table's refer flags.
        n_bins: reliability-diagram bins.
        raw_risk: optional (N,) uncalibrated risk in the table's row order, drawn beside
            the calibrated one in the reliability diagram.

    Returns:
        {'parquet': path, 'csv': path, 'json': path, 'html': path}.
    """
    provenance = provenance or Provenance()
    if raw_risk is not None and to_numpy(raw_risk).shape != (table.height,):
        raise ValueError(f"raw_risk must have shape ({table.height},) like the table")
    descriptions = column_descriptions(interval, coverage, referral_by)
    document = report_document(table, provenance, descriptions)
    directory = make_private_dir(out_dir)
    page = render_html(
        table,
        title=title,
        provenance=provenance,
        metrics=metrics,
        interval=interval,
        coverage=coverage,
        referral_by=referral_by,
        n_bins=n_bins,
        raw_risk=raw_risk,
    )
    return {
        "parquet": write_private_bytes(
            directory / "report.parquet", _parquet_bytes(table, document)
        ),
        "csv": write_private_text(directory / "report.csv", table.write_csv()),
        "json": write_private_text(
            directory / "report.json", json.dumps(document, indent=2, sort_keys=True) + "\n"
        ),
        "html": write_private_text(directory / "report.html", page),
    }
