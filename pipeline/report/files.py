"""Writing a report: Parquet with its metadata, CSV, the JSON sidecar and HTML, owner-only."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from features.io import make_private_dir, write_private_bytes, write_private_text
from pipeline.drift import DriftReport
from pipeline.metrics import to_numpy
from pipeline.provenance import (
    Provenance,
    cohort_counts,
    report_warnings,
)
from pipeline.report.html import provenance_value, render_html
from pipeline.report.table import DEFAULT_COVERAGE, column_descriptions
from pipeline.uncertainty import (
    DEFAULT_INTERVAL,
    UncertaintyKind,
)

PARQUET_METADATA_KEY = "rank1.report"


#: A temporary column name for the uncalibrated risk while the figures are drawn.
def report_document(
    table: pl.DataFrame,
    provenance: Provenance,
    descriptions: Mapping[str, str],
    drift: DriftReport | None = None,
) -> dict[str, Any]:
    """The report's statement about itself, for ``report.json`` and the Parquet metadata.

    Cohort-level only: provenance, warnings, counts, what the columns mean and, for a
    scoring report, the per-variable drift against the training data; no row.
    """
    document = {
        "provenance": provenance.to_dict(),
        "warnings": list(report_warnings(table, drift)),
        "counts": cohort_counts(table).to_dict(),
        "columns": {c: descriptions[c] for c in table.columns if c in descriptions},
    }
    if drift is not None:
        document["drift"] = drift.to_dict()
    return document


def _parquet_bytes(table: pl.DataFrame, document: Mapping[str, Any]) -> bytes:
    """The table as Parquet with the document as key-value metadata.

    Each provenance field also gets its own key (``provenance.run_id``, ...) so a schema
    viewer shows them without parsing JSON.
    """
    metadata = {PARQUET_METADATA_KEY: json.dumps(document, sort_keys=True)}
    for key, value in document["provenance"].items():
        metadata[f"provenance.{key}"] = provenance_value(key, value)
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
    metrics_title: str = "Model performance",
    interval: tuple[float, float] = DEFAULT_INTERVAL,
    coverage: float = DEFAULT_COVERAGE,
    referral_by: UncertaintyKind = "epistemic",
    n_bins: int = 15,
    raw_risk: Any = None,
    drift: DriftReport | None = None,
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
        metrics_title: the heading of ``metrics`` on the page.
        interval: the percentiles used to build ``table`` (for the column explanations).
        coverage: the coverage used to build ``table``.
        referral_by: the uncertainty that ranked stays for referral, as
            :func:`pipeline.uncertainty.default_ranking` chose it for ``table``
            ('total' for a one-path model); checked against the table's refer flags.
        n_bins: reliability-diagram bins.
        raw_risk: optional (N,) uncalibrated risk in the table's row order, drawn beside
            the calibrated one in the reliability diagram.
        drift: optional per-variable drift of the scored stays against the model's
            training data (``pipeline.drift.compare``): a section of the page, a warning
            naming the flagged variables, and ``drift`` in the document.

    Returns:
        {'parquet': path, 'csv': path, 'json': path, 'html': path}.
    """
    provenance = provenance or Provenance()
    if raw_risk is not None and to_numpy(raw_risk).shape != (table.height,):
        raise ValueError(f"raw_risk must have shape ({table.height},) like the table")
    descriptions = column_descriptions(interval, coverage, referral_by)
    document = report_document(table, provenance, descriptions, drift)
    directory = make_private_dir(out_dir)
    page = render_html(
        table,
        title=title,
        provenance=provenance,
        metrics=metrics,
        metrics_title=metrics_title,
        interval=interval,
        coverage=coverage,
        referral_by=referral_by,
        n_bins=n_bins,
        raw_risk=raw_risk,
        drift=drift,
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
