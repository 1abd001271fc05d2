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

from pipeline.report.files import (
    PARQUET_METADATA_KEY,
    read_report_document,
    report_document,
    write_report,
)
from pipeline.report.html import render_html
from pipeline.report.table import (
    DEFAULT_COVERAGE,
    ID_COLUMNS,
    UNCERTAINTY_COLUMNS,
    build_report_table,
    column_descriptions,
)

__all__ = [
    "DEFAULT_COVERAGE",
    "ID_COLUMNS",
    "PARQUET_METADATA_KEY",
    "UNCERTAINTY_COLUMNS",
    "build_report_table",
    "column_descriptions",
    "read_report_document",
    "render_html",
    "report_document",
    "write_report",
]
