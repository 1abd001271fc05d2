"""Per-patient reports of the whole-stay tasks: decompensation, length of stay, phenotyping.

Each report is built from *calibrated* member logits, like the in-hospital-mortality
report (:mod:`pipeline.report.table`), and has two tables:

- ``rows``, the detail: decompensation and length of stay one row per stay and hour (the
  hourly risk of death within 24 h with its interval; the predicted distribution over the
  10 length-of-stay buckets), phenotyping one row per stay and phenotype (its risk and
  interval);
- ``stays``, one row per stay for the page: its latest hour (decompensation, length of
  stay) or its most likely phenotypes, with a ``refer`` flag for the share of stays with
  the highest epistemic uncertainty (total uncertainty for a one-path model).

:func:`write_task_report` writes ``report.parquet`` / ``report.csv`` (the detail),
``stays.csv``, ``report.json`` (what the columns mean, provenance, counts) and a
self-contained ``report.html`` whose decompensation section draws the hourly risk
trajectory of the most uncertain and highest-risk stays with its interval, all owner-only.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from features.io import make_private_dir, write_private_bytes, write_private_text
from pipeline import plots
from pipeline.metrics import to_numpy
from pipeline.provenance import Provenance
from pipeline.report.html import _figure_html, metrics_html, page_head, provenance_html
from pipeline.report.table import DEFAULT_COVERAGE, ID_COLUMNS
from pipeline.tasks.data import LOS_BUCKET_MEAN_HOURS
from pipeline.uncertainty import (
    DEFAULT_INTERVAL,
    PredictiveUncertainty,
    decompose,
    refer_flags,
)

#: The benchmark's 10 length-of-stay buckets, as column suffixes and as words.
LOS_BUCKETS = (
    ("lt_1d", "under 1 day"),
    ("1_2d", "1-2 days"),
    ("2_3d", "2-3 days"),
    ("3_4d", "3-4 days"),
    ("4_5d", "4-5 days"),
    ("5_6d", "5-6 days"),
    ("6_7d", "6-7 days"),
    ("7_8d", "7-8 days"),
    ("8_14d", "8-14 days"),
    ("gt_14d", "over 14 days"),
)
#: Decompensation trajectories drawn on the page (most uncertain, then highest risk).
TRAJECTORY_PLOTS = 12

_TITLES = {
    "decompensation": "Decompensation: hourly risk of death within 24 hours",
    "length-of-stay": "Length of stay: predicted remaining stay",
    "phenotyping": "Phenotyping: per-patient risk of each acute and chronic condition",
}


@dataclass(frozen=True)
class TaskReport:
    """A whole-stay task's report tables.

    Attributes:
        task: ``"decompensation"``, ``"length-of-stay"`` or ``"phenotyping"``.
        rows: The detail (see the module docstring).
        stays: One row per stay, with ``refer``.
        referral_by: The uncertainty that ranked stays for ``refer``.
        coverage: Share of stays kept (not referred).
    """

    task: str
    rows: pl.DataFrame
    stays: pl.DataFrame
    referral_by: str
    coverage: float


def _scaled(member_logits: Any, temperature: float | Sequence[float]) -> np.ndarray:
    """Member logits divided by the temperature (one per label on the last axis)."""
    logits = to_numpy(member_logits).astype(np.float64)
    return logits / np.asarray(temperature, dtype=np.float64)


def _ids(frame: pl.DataFrame) -> pl.DataFrame:
    missing = [c for c in ID_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"samples: missing identifier columns {missing}")
    return frame.select(ID_COLUMNS)


def _risks(unc: PredictiveUncertainty) -> dict[str, np.ndarray]:
    """The risk and its interval as report columns."""
    return {"risk": unc.probs, "risk_low": unc.interval_low, "risk_high": unc.interval_high}


def _uncertainties(unc: PredictiveUncertainty) -> dict[str, np.ndarray]:
    """The three uncertainties as report columns."""
    return {
        "uncertainty_total": unc.total,
        "uncertainty_aleatoric": unc.aleatoric,
        "uncertainty_epistemic": unc.epistemic,
    }


def _observed(rows: pl.DataFrame, samples: pl.DataFrame, names: dict[str, str]) -> pl.DataFrame:
    """``rows`` with the observed columns ``samples`` has, renamed by ``names``."""
    present = [
        samples[source].alias(name) for source, name in names.items() if source in samples.columns
    ]
    return rows.with_columns(present) if present else rows


def _latest_per_stay(rows: pl.DataFrame, uncertainty: str, coverage: float) -> pl.DataFrame:
    """Each stay's row at its latest hour, flagged for referral by ``uncertainty``."""
    ordered = rows.sort("icustay_id", "hour")
    latest = ordered.group_by("icustay_id", maintain_order=True).last()
    return latest.with_columns(
        refer=pl.Series(refer_flags(latest[uncertainty].to_numpy(), coverage))
    )


def decompensation_report(
    samples: pl.DataFrame,
    member_logits: Any,
    temperature: float,
    *,
    coverage: float = DEFAULT_COVERAGE,
    interval: tuple[float, float] = DEFAULT_INTERVAL,
) -> TaskReport:
    """The decompensation report: the hourly risk of death within 24 h of each stay.

    Args:
        samples: One row per hourly sample: the identifiers, ``hour`` and optionally
            ``label`` (death within 24 h) and ``true_decomp_risk`` (synthetic data).
        member_logits: ``(M, samples)`` member logits.
        temperature: The task's fitted temperature.
        coverage: Share of stays kept; the rest (most uncertain at their latest hour) are
            flagged ``refer``.
        interval: Percentiles of the member risks.

    Returns:
        The :class:`TaskReport`.
    """
    logits = _scaled(member_logits, temperature)
    if logits.ndim != 2 or logits.shape[1] != samples.height:
        raise ValueError(f"member logits: expected (M, {samples.height}), got {logits.shape}")
    unc = decompose(logits, interval=interval)
    rows = _ids(samples).with_columns(
        samples["hour"].cast(pl.Int32),
        **_risks(unc),
        **_uncertainties(unc),
    )
    rows = _observed(rows, samples, {"label": "outcome", "true_decomp_risk": "true_risk"})
    by = f"uncertainty_{unc.ranking}"
    latest = _latest_per_stay(rows, by, coverage)
    peak = rows.group_by("icustay_id").agg(max_risk=pl.col("risk").max())
    stays = latest.join(peak, on="icustay_id", how="left", maintain_order="left")
    return TaskReport("decompensation", rows, stays, unc.ranking, coverage)


def length_of_stay_report(
    samples: pl.DataFrame,
    member_logits: Any,
    temperature: float,
    *,
    coverage: float = DEFAULT_COVERAGE,
    interval: tuple[float, float] = DEFAULT_INTERVAL,
) -> TaskReport:
    """The length-of-stay report: the predicted distribution of the remaining stay.

    Args:
        samples: One row per hourly sample: the identifiers, ``hour`` and optionally
            ``remaining_hours`` and ``bucket`` (the observed remaining stay).
        member_logits: ``(M, samples, 10)`` member logits over the buckets.
        temperature: The task's fitted temperature.
        coverage: Share of stays kept (see :func:`decompensation_report`).
        interval: Percentiles of the member probabilities.

    Returns:
        The :class:`TaskReport`; ``rows`` has ``p_<bucket>`` per bucket, the most likely
        ``predicted_bucket`` and its ``predicted_remaining_hours`` (the benchmark's
        estimate), and the uncertainties.
    """
    logits = _scaled(member_logits, temperature)
    if logits.ndim != 3 or logits.shape[1:] != (samples.height, len(LOS_BUCKETS)):
        raise ValueError(
            f"member logits: expected (M, {samples.height}, {len(LOS_BUCKETS)}), got {logits.shape}"
        )
    unc = decompose(logits, interval=interval)
    bucket = unc.probs.argmax(axis=1)
    columns = {f"p_{suffix}": unc.probs[:, j] for j, (suffix, _) in enumerate(LOS_BUCKETS)}
    rows = _ids(samples).with_columns(
        samples["hour"].cast(pl.Int32),
        predicted_bucket=pl.Series(bucket, dtype=pl.Int8),
        predicted_remaining_hours=np.asarray(LOS_BUCKET_MEAN_HOURS)[bucket],
        **columns,
        **_uncertainties(unc),
    )
    names = {"remaining_hours": "observed_remaining_hours", "bucket": "outcome"}
    rows = _observed(rows, samples, names)
    stays = _latest_per_stay(rows, f"uncertainty_{unc.ranking}", coverage)
    return TaskReport("length-of-stay", rows, stays, unc.ranking, coverage)


def phenotyping_report(
    stays: pl.DataFrame,
    member_logits: Any,
    temperatures: float | Sequence[float],
    names: Sequence[str],
    *,
    labels: Any = None,
    coverage: float = DEFAULT_COVERAGE,
    interval: tuple[float, float] = DEFAULT_INTERVAL,
) -> TaskReport:
    """The phenotyping report: each stay's risk of each of the 25 phenotypes.

    Args:
        stays: One row per stay with the identifiers.
        member_logits: ``(M, stays, labels)`` member logits, one Bernoulli per label.
        temperatures: One temperature per label (or one for all).
        names: The label names.
        labels: Optional ``(stays, labels)`` observed 0/1 labels.
        coverage: Share of stays kept; the rest (highest largest per-label uncertainty)
            are flagged ``refer``.
        interval: Percentiles of the member risks.

    Returns:
        The :class:`TaskReport`: ``rows`` one per (stay, phenotype); ``stays`` with the
        number of likely phenotypes (risk >= 50%), the three most likely and ``refer``.
    """
    logits = _scaled(member_logits, temperatures)
    n, k = stays.height, len(names)
    if logits.ndim != 3 or logits.shape[1:] != (n, k):
        raise ValueError(f"member logits: expected (M, {n}, {k}), got {logits.shape}")
    unc = decompose(logits.reshape(logits.shape[0], n * k), interval=interval)
    # Row i * k + j is stay i, phenotype j: the order of the flattened logits.
    rows = _ids(stays)[np.repeat(np.arange(n), k).tolist()].with_columns(
        phenotype=pl.Series(np.tile(np.asarray(names, dtype=object), n), dtype=pl.String),
        **_risks(unc),
        **_uncertainties(unc),
    )
    if labels is not None:
        rows = rows.with_columns(outcome=to_numpy(labels).reshape(n * k).astype(np.int64))
    risk = unc.probs.reshape(n, k)
    score = getattr(unc, unc.ranking).reshape(n, k).max(axis=1)
    top = np.argsort(-risk, axis=1)[:, :3]
    summary = _ids(stays).with_columns(
        likely_phenotypes=pl.Series((risk >= 0.5).sum(axis=1), dtype=pl.Int32),
        most_likely=pl.Series(
            ["; ".join(f"{names[j]} ({100 * risk[i, j]:.0f}%)" for j in top[i]) for i in range(n)]
        ),
        max_uncertainty=score,
        refer=refer_flags(score, coverage),
    )
    return TaskReport("phenotyping", rows, summary, unc.ranking, coverage)


def task_column_descriptions(task: str) -> dict[str, str]:
    """Plain-language meaning of each column of a task report, for clinicians."""
    common = {
        "subject_id": "MIMIC-III patient identifier.",
        "hadm_id": "Hospital admission identifier.",
        "icustay_id": "ICU stay identifier.",
        "hour": "Hours since ICU admission at which the prediction is made, from the data "
        "recorded up to then.",
        "uncertainty_total": "Total uncertainty (predictive entropy, nats).",
        "uncertainty_aleatoric": "Part of the total inherent in the data.",
        "uncertainty_epistemic": "Part of the total from the model's own lack of knowledge "
        "(its members disagree), e.g. for patients unlike those seen in training.",
        "refer": "True for the stays with the highest uncertainty: the model suggests a "
        "clinician's review rather than relying on the prediction.",
    }
    if task == "decompensation":
        return {
            **common,
            "risk": "Calibrated probability of death within the next 24 hours.",
            "risk_low": "Lower end of the members' credible interval of that risk.",
            "risk_high": "Upper end of the credible interval; a wide one means the members "
            "disagree.",
            "max_risk": "Highest hourly risk of the stay so far.",
            "outcome": "Observed: 1 = died within 24 hours of this hour.",
            "true_risk": "Planted risk of the synthetic generator (synthetic cohorts only).",
        }
    if task == "length-of-stay":
        buckets = {
            f"p_{suffix}": f"Calibrated probability that the remaining ICU stay is {words}."
            for suffix, words in LOS_BUCKETS
        }
        return {
            **common,
            **buckets,
            "predicted_bucket": "The most likely bucket (0 = under 1 day ... 9 = over 14 days).",
            "predicted_remaining_hours": "The benchmark's estimate of the remaining hours for "
            "that bucket.",
            "observed_remaining_hours": "Observed remaining ICU stay in hours, where known.",
            "outcome": "Observed bucket of the remaining stay, where known.",
        }
    return {
        **common,
        "phenotype": "The HCUP CCS 2015 condition group.",
        "risk": "Calibrated probability that the admission is coded with this condition.",
        "risk_low": "Lower end of the members' credible interval of that probability.",
        "risk_high": "Upper end of the credible interval.",
        "outcome": "Observed: 1 = the admission's diagnoses include the condition.",
        "likely_phenotypes": "Number of conditions with a probability of 50% or more.",
        "most_likely": "The three most likely conditions with their probabilities.",
        "max_uncertainty": "The largest per-condition uncertainty of the stay (ranks referral).",
    }


def write_task_report(
    report: TaskReport,
    out_dir: str | os.PathLike,
    *,
    provenance: Provenance | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write a task report: report.parquet/.csv (detail), stays.csv, report.json and .html.

    All owner-only (0600) in a folder created 0700 (an existing folder is left as it is),
    each written to a temporary name and renamed into place.

    Args:
        report: A :class:`TaskReport`.
        out_dir: The report folder.
        provenance: Run, model, method, fingerprint and split; default: the time only.
        metrics: Optional cohort-level metrics shown at the top.

    Returns:
        Paths by kind: ``parquet``, ``csv``, ``stays_csv``, ``json``, ``html``.
    """
    from pipeline.report.files import _parquet_bytes

    folder = make_private_dir(out_dir)
    provenance = provenance or Provenance()
    descriptions = task_column_descriptions(report.task)
    document = {
        "task": report.task,
        "provenance": provenance.to_dict(),
        "counts": {
            "stays": report.stays.height,
            "rows": report.rows.height,
            "referred": int(report.stays["refer"].sum()),
        },
        "coverage": report.coverage,
        "referral_by": report.referral_by,
        "columns": {c: descriptions[c] for c in report.rows.columns if c in descriptions},
        "warnings": [],
    }
    paths = {
        "parquet": write_private_bytes(
            folder / "report.parquet", _parquet_bytes(report.rows, document)
        ),
        "csv": write_private_text(folder / "report.csv", report.rows.write_csv()),
        "stays_csv": write_private_text(folder / "stays.csv", report.stays.write_csv()),
        "json": write_private_text(
            folder / "report.json", json.dumps(document, indent=2, sort_keys=True) + "\n"
        ),
    }
    page = render_task_html(report, provenance=provenance, metrics=metrics)
    paths["html"] = write_private_text(folder / "report.html", page)
    return paths


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "<td></td>"
    if column in ID_COLUMNS or column in ("phenotype", "most_likely"):
        return f'<td class="id">{html.escape(str(value))}</td>'
    if column == "refer":
        return f"<td>{'REFER' if value else ''}</td>"
    if column.startswith(("risk", "p_", "max_risk", "true_risk")):
        return f"<td>{100 * value:.1f}%</td>"
    if isinstance(value, float):
        return f"<td>{value:.3f}</td>"
    return f"<td>{html.escape(str(value))}</td>"


def _table_html(table: pl.DataFrame, columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for record in table.iter_rows(named=True):
        css = ' class="refer"' if record.get("refer") else ""
        body.append(f"<tr{css}>{''.join(_cell(c, record[c]) for c in columns)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _trajectories_html(report: TaskReport) -> str:
    """Risk-trajectory figures of the referred stays, then of the highest latest risk."""
    chosen = report.stays.sort(["refer", "risk"], descending=True).head(TRAJECTORY_PLOTS)
    figures = []
    for stay in chosen["icustay_id"].to_list():
        rows = report.rows.filter(pl.col("icustay_id") == stay).sort("hour")
        fig = plots.trajectory_figure(
            rows["hour"].to_numpy(),
            rows["risk"].to_numpy(),
            rows["risk_low"].to_numpy(),
            rows["risk_high"].to_numpy(),
            title=f"ICU stay {stay}",
        )
        figures.append(
            _figure_html(
                fig, f"ICU stay {stay}: hourly risk of death within 24 h with its interval"
            )
        )
    return f'<div class="figures">{"".join(figures)}</div>'


def render_task_html(
    report: TaskReport, *, provenance: Provenance, metrics: Mapping[str, Any] | None = None
) -> str:
    """The self-contained HTML page of :func:`write_task_report`."""
    descriptions = task_column_descriptions(report.task)
    title = _TITLES[report.task]
    referred = int(report.stays["refer"].sum())
    share = referred / max(report.stays.height, 1)
    parts = [
        page_head(title),
        f"<p>{report.stays.height} stays; {referred} of {report.stays.height} stays referred "
        f"({100 * share:.0f}%) by {html.escape(report.referral_by)} uncertainty.</p>",
        provenance_html(provenance),
    ]
    if metrics:
        parts.append(metrics_html(metrics))
    if report.task == "decompensation":
        parts.append("<h2>Hourly risk trajectories</h2>")
        parts.append(_trajectories_html(report))
    columns = [c for c in report.stays.columns if c in descriptions]
    heading = "Stays (latest hour)" if report.task != "phenotyping" else "Stays"
    parts.append(f"<h2>{heading}</h2>")
    parts.append(_table_html(report.stays, columns))
    parts.append("<h2>What the columns mean</h2><dl>")
    shown = dict.fromkeys([*columns, *report.rows.columns])
    for column in shown:
        if column in descriptions:
            parts.append(
                f"<dt>{html.escape(column)}</dt><dd>{html.escape(descriptions[column])}</dd>"
            )
    parts.append(
        "</dl><p class='note'>The predictions are statistical estimates from routinely "
        "collected data and do not replace clinical judgement. The full hourly detail is "
        "in report.csv.</p></body></html>"
    )
    return "\n".join(parts)
