"""The report's self-contained HTML page (inline CSS, base64 plots, no scripts or links)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import polars as pl

from pipeline import plots
from pipeline.drift import DriftReport
from pipeline.metrics import to_numpy
from pipeline.provenance import (
    NOT_RECORDED,
    UNLIKE_TRAINING_PERCENTILE,
    Provenance,
    cohort_counts,
    intervals_collapse,
    report_warnings,
    share_text,
)
from pipeline.report.table import (
    DEFAULT_COVERAGE,
    ID_COLUMNS,
    UNCERTAINTY_COLUMNS,
    column_descriptions,
)
from pipeline.uncertainty import (
    DEFAULT_INTERVAL,
    UncertaintyKind,
    refer_flags,
    referral_curve_from_scores,
)


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
    "model_registry_version": "not registered in the MLflow Model Registry",
    "posterior": "none (not a rank-1 model, or not recorded)",
}


#: A temporary column holding the raw risk beside the table's rows, for the diagram.
_RAW_RISK = "__raw_risk"


def _raw_risk_series(raw_risk: Any) -> pl.Series:
    return pl.Series(_RAW_RISK, to_numpy(raw_risk).astype(np.float64))


def provenance_value(key: str, value: str | None) -> str:
    """A provenance field as the report shows it (the HTML and the Parquet metadata)."""
    return _PROVENANCE_MISSING.get(key, NOT_RECORDED) if value is None else str(value)


def page_head(title: str) -> str:
    """The start of a self-contained report page: its head, inline CSS and title heading."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>"
    )


def metrics_html(metrics: Mapping[str, Any], title: str = "Model performance") -> str:
    """A heading and a two-column table of cohort-level metrics."""
    rows = "".join(
        f'<tr><td class="id">{html.escape(str(key))}</td>'
        f"<td>{html.escape(_format_metric(value))}</td></tr>"
        for key, value in metrics.items()
    )
    return (
        f"<h2>{html.escape(title)}</h2><table><tr><th>metric</th><th>value</th></tr>{rows}</table>"
    )


def provenance_html(provenance: Provenance) -> str:
    """The report's provenance as a heading and a table (unrecorded fields say so)."""
    rows = "".join(
        f'<tr><th>{html.escape(_PROVENANCE_LABELS[key])}</th><td class="id">'
        f"{html.escape(provenance_value(key, value))}</td></tr>"
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


def _drift_html(drift: DriftReport) -> str:
    """The per-variable comparison with the training data, flagged variables first."""
    rows = []
    for v in sorted(drift.variables, key=lambda v: not v.flagged):
        psi = "" if v.psi is None else f"{v.psi:.3f}"
        changed = "yes" if v.charting_changed else ""
        css = ' class="refer"' if v.flagged else ""
        rows.append(
            f'<tr{css}><td class="id">{html.escape(v.variable)}</td><td>{html.escape(v.level)}'
            f"</td><td>{psi}</td><td>{_percent(v.charted_reference)}</td>"
            f"<td>{_percent(v.charted_now)}</td><td>{changed}</td>"
            f"<td>{v.observed_hours_now}</td></tr>"
        )
    return (
        "<h2>Data drift against the training data</h2>"
        f'<p class="note">{drift.stays} stays compared with the training stays of the model. '
        "PSI: population stability index of the charted hourly values (below 0.1 stable, "
        "0.1-0.25 moderate, above 0.25 major; noisy for variables charted in few hours). "
        "Charted: share of stay-hours with a measurement; a change beyond a factor of 2 is "
        "flagged. A flagged variable means these patients are measured or recorded unlike "
        "the training patients: read their risks with care.</p>"
        "<table><tr><th>variable</th><th>level</th><th>PSI</th><th>charted in training</th>"
        "<th>charted now</th><th>charting changed</th><th>charted hours now</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def render_html(
    table: pl.DataFrame,
    *,
    title: str,
    provenance: Provenance | None = None,
    metrics: Mapping[str, Any] | None = None,
    metrics_title: str = "Model performance",
    interval: tuple[float, float] = DEFAULT_INTERVAL,
    coverage: float = DEFAULT_COVERAGE,
    referral_by: UncertaintyKind = "epistemic",
    n_bins: int = 15,
    raw_risk: Any = None,
    drift: DriftReport | None = None,
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
        page_head(title),
        _summary_html(table),
        _warnings_html(report_warnings(table, drift)),
        provenance_html(provenance),
    ]
    if metrics:
        parts.append(metrics_html(metrics, metrics_title))

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

    if drift is not None:
        parts.append(_drift_html(drift))

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
