"""Events of the 17 variables, validated against the stays and cut to the first 48 hours.

One streaming polars query per event table (CHARTEVENTS, LABEVENTS, OUTPUTEVENTS) does, in
order, what mimic3-benchmarks does per subject in ``validate_events`` and
``extract_episodes_from_subjects``:

1. keep the item ids of the 17 variables (the benchmark maps item ids after validation;
   filtering first changes nothing and lets the scan drop ~60% of rows early), and, as a
   pre-filter that changes nothing either, only events between the subject's first
   INTIME and last INTIME + 48 h;
2. drop events without HADM_ID, or whose (SUBJECT_ID, HADM_ID) is not a cohort stay's;
3. fill a missing ICUSTAY_ID from the stay of the admission (one stay per admission),
   then drop events whose ICUSTAY_ID is not that stay's;
4. attach each event to a task stay of the same subject when its ICUSTAY_ID is the stay's
   or its time lies in [INTIME, OUTTIME] (the benchmark's ``get_events_for_stay``; a null
   OUTTIME matches no time there, as in pandas. Scoring passes ``open_ended=True``: a
   stay still in the ICU has no OUTTIME yet and its interval is [INTIME, open end));
5. keep events with -1e-6 < hours since INTIME < 48 + 1e-6 and clean their values;
6. give each event its hourly bin: ``int(hours - 1e-6)``, as the benchmark's discretizer.

Scoring also needs the newest event time of the export (the default "as of" time, see
:func:`features.mimic.extract.extract_for_scoring`): :func:`window_events_and_newest`
computes it in the same pass, as one more aggregate of the validation query.

Only the small result (events in the first 48 h of task stays) is held in memory, so
memory does not grow with the size of the tables. Polars errors while scanning are turned
into one-line errors naming the file, line and column (see
:func:`features.mimic.tables.diagnose_table`).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

from features.mimic.tables import (
    DATETIME,
    DATETIME_FORMAT,
    EVENT_TABLES,
    MimicInputError,
    diagnose_table,
    parse_datetimes,
    scan_table,
    table_path,
)
from features.mimic.variables import clean_values, item_frame

EPS = 1e-6
HOURS = 48


def _scan_events(mimic_dir: str | Path, table: str) -> pl.LazyFrame:
    """The event table with ``icustay_id`` (null for LABEVENTS) and timestamps as text."""
    lf = scan_table(mimic_dir, table, parse_dates=False)
    if "icustay_id" not in lf.collect_schema():
        # LABEVENTS has no ICUSTAY_ID; the benchmark writes it empty and recovers it.
        lf = lf.with_columns(icustay_id=pl.lit(None, pl.Int64))
    return lf


def _window_query(
    events: pl.LazyFrame,
    table: str,
    root: pl.DataFrame,
    task: pl.DataFrame,
    hours: int | None,
    open_ended: bool = False,
    with_hours: bool = False,
) -> pl.LazyFrame:
    """Steps 1-6 of the module docstring for one event table.

    ``hours=None`` reads each stay's own window length from the task's ``window_hours``
    column (whole stays: their LOS in hours).
    """
    items = item_frame()
    lf = events.filter(pl.col("itemid").is_in(items["itemid"].to_list()))
    lf = parse_datetimes(lf, table)
    window = pl.lit(float(hours)) if hours is not None else pl.col("window_hours")
    # Pre-filter before the joins: an event can only end up in a window if it lies between
    # its subject's first INTIME and last window end (one second of slack; the window is
    # applied exactly below). (A join keeps the streaming engine's memory flat here; an
    # is_in filter followed by a replace_strict lookup made it grow with the table.)
    window_us = (window * 3.6e9).cast(pl.Int64) + 1_000_000
    spans = task.group_by("subject_id").agg(
        span_first=pl.col("intime").min(),
        span_last=(pl.col("intime") + pl.duration(microseconds=window_us)).max(),
    )
    lf = lf.join(spans.lazy(), on="subject_id", how="inner")
    lf = lf.filter(pl.col("charttime").is_between("span_first", "span_last")).drop(
        "span_first", "span_last"
    )
    lf = lf.join(items.lazy(), on="itemid", how="inner")
    stays = root.select("subject_id", "hadm_id", pl.col("icustay_id").alias("root_icustay"))
    lf = lf.filter(pl.col("hadm_id").is_not_null())
    lf = lf.join(stays.lazy(), on=["subject_id", "hadm_id"], how="inner")
    lf = lf.with_columns(icustay_id=pl.coalesce("icustay_id", "root_icustay"))
    lf = lf.filter(pl.col("icustay_id") == pl.col("root_icustay")).drop("root_icustay")
    per_stay = [] if hours is not None else ["window_hours"]
    candidates = task.select(
        "subject_id", pl.col("icustay_id").alias("stay"), "intime", "outtime", *per_stay
    ).lazy()
    lf = lf.join(candidates, on="subject_id", how="inner")
    lf = lf.filter((pl.col("icustay_id") == pl.col("stay")) | _in_stay(open_ended))
    elapsed = (pl.col("charttime") - pl.col("intime")).dt.total_microseconds() / 3.6e9
    lf = lf.with_columns(hours=elapsed).filter(
        (pl.col("hours") > -EPS) & (pl.col("hours") < window + EPS)
    )
    lf = clean_values(lf)
    # The discretizer's bin count for a window of w hours is int(w + 1 - eps) (48 for the
    # 48-hour window): an event within eps past the window's end lands in the last bin.
    last_bin = ((window + 1.0 - EPS).floor() - 1.0).clip(lower_bound=0.0)
    return lf.select(
        "stay",
        "var",
        bin=(pl.col("hours") - EPS).floor().clip(0.0, last_bin).cast(pl.Int16),
        charttime="charttime",
        val="val",
        key_a="key_a",
        key_b="key_b",
        **({"hours": "hours"} if with_hours else {}),
    )


def _in_stay(open_ended: bool) -> pl.Expr:
    """Whether an event's time lies in its candidate stay (step 4)."""
    charttime, outtime = pl.col("charttime"), pl.col("outtime")
    if not open_ended:
        # The benchmark's rule, kept exactly for training: a null OUTTIME matches nothing.
        return charttime.is_between(pl.col("intime"), outtime)
    return (charttime >= pl.col("intime")) & (outtime.is_null() | (charttime <= outtime))


def _validation_query(
    events: pl.LazyFrame, root: pl.DataFrame, newest: bool = False
) -> pl.LazyFrame:
    """Counts of the benchmark's ``validate_events`` rules over all items of a table.

    With ``newest``, also the newest CHARTTIME of the 17 variables' events with an admission
    among these rows (the cohort's subjects): scoring's default "as of" time. It is computed
    here, in a query that reads the scan anyway, because a separate query over the same scan
    is not shared with it by polars (measured on the demo: it doubled the event pass).
    """
    stays = root.select("subject_id", "hadm_id", pl.col("icustay_id").alias("root_icustay"))
    subjects = root.select("subject_id").unique()
    columns = ["subject_id", "hadm_id", "icustay_id", *(["itemid", "charttime"] if newest else [])]
    lf = events.select(columns).join(subjects.lazy(), on="subject_id", how="semi")
    lf = lf.join(stays.lazy(), on=["subject_id", "hadm_id"], how="left")
    has_hadm = pl.col("hadm_id").is_not_null()
    known = has_hadm & pl.col("root_icustay").is_not_null()
    filled = pl.coalesce("icustay_id", "root_icustay")
    extra = {}
    if newest:
        # The rows whose timestamps the window query parses too (17 variables, an
        # admission), so no timestamp is checked here that training would not check.
        of_items = pl.col("itemid").is_in(item_frame()["itemid"].to_list()) & has_hadm
        charttime = pl.col("charttime").filter(of_items)
        extra["newest"] = charttime.str.strptime(DATETIME, DATETIME_FORMAT, strict=True).max()
    return lf.select(
        n_events=pl.len(),
        empty_hadm=(~has_hadm).sum(),
        no_hadm_in_stay=(has_hadm & pl.col("root_icustay").is_null()).sum(),
        no_icustay=(known & pl.col("icustay_id").is_null()).sum(),
        recovered=(known & pl.col("icustay_id").is_null()).sum(),
        icustay_missing_in_stays=(known & (filled != pl.col("root_icustay"))).sum(),
        kept=(known & (filled == pl.col("root_icustay"))).sum(),
        **extra,
    )


def _collect(mimic_dir: str | Path, queries: list[pl.LazyFrame]) -> list[pl.DataFrame]:
    """Run queries together (one scan per table is shared) and explain any read error.

    The polars error is not passed on, not even as the cause: its text quotes rows.
    """
    try:
        return pl.collect_all(queries, engine="streaming")
    except (pl.exceptions.PolarsError, OSError) as err:
        error = _explain(mimic_dir, err)
    raise error


def _explain(mimic_dir: str | Path, err: BaseException) -> MimicInputError:
    """The first bad line of the event tables, searched smallest table first."""
    paths = {table: table_path(mimic_dir, table) for table in EVENT_TABLES}
    for table in sorted(EVENT_TABLES, key=lambda t: paths[t].stat().st_size):
        found = diagnose_table(mimic_dir, table)
        if found is not None:
            return found
    reason = str(err) if isinstance(err, OSError) else "they do not parse as CSV"
    return MimicInputError(f"{mimic_dir}: cannot read the event tables: {reason}")


def window_events(
    mimic_dir: str | Path,
    root: pl.DataFrame,
    task: pl.DataFrame,
    *,
    hours: int | None = HOURS,
    open_ended: bool = False,
    with_hours: bool = False,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Cleaned events of the 17 variables in the first ``hours`` hours of each task stay.

    The event tables are each read once: the same scan feeds the window query and the
    validation counts.

    Args:
        mimic_dir: Folder with the MIMIC-III tables.
        root: The root cohort (``subject_id``, ``hadm_id``, ``icustay_id``) used to
            validate events.
        task: The stays to cut windows for (``subject_id``, ``icustay_id``, ``intime``,
            ``outtime``, and ``window_hours`` when ``hours`` is None).
        hours: Window length in hours; None: each stay's ``window_hours`` (whole stays).
        open_ended: Treat a null OUTTIME as a stay still in the ICU, open-ended (step 4);
            ``False`` keeps the benchmark's rule (training).
        with_hours: Also return each event's exact ``hours`` since INTIME (Float64).

    Returns:
        ``(events, counts)``: one row per kept event with ``stay`` (ICUSTAY_ID), ``var``
        (variable index), ``bin`` (hour), ``charttime``, ``val`` and the ordering keys
        ``key_a`` and ``key_b``; and the validation counts (see
        :func:`validation_counts`).

    Raises:
        MimicInputError: If a table is missing, lacks a column or has a bad value.
    """
    windows, counts, _ = _windows(
        mimic_dir, root, task, hours, open_ended, newest=False, with_hours=with_hours
    )
    return windows, counts


def window_events_and_newest(
    mimic_dir: str | Path,
    root: pl.DataFrame,
    task: pl.DataFrame,
    *,
    hours: int | None = HOURS,
    with_hours: bool = False,
) -> tuple[pl.DataFrame, dict[str, int], datetime | None]:
    """:func:`window_events` for scoring (open-ended stays), plus the newest event time.

    The newest time is one more aggregate of the validation query, in the same pass, so
    finding the default "as of" time costs no extra read.

    Returns:
        ``(events, counts, newest)``: as :func:`window_events`, and the newest CHARTTIME
        of the 17 variables' events with an admission, of the subjects of ``root``, in any
        event table (None if there is none).
    """
    return _windows(
        mimic_dir, root, task, hours, open_ended=True, newest=True, with_hours=with_hours
    )


def _windows(
    mimic_dir: str | Path,
    root: pl.DataFrame,
    task: pl.DataFrame,
    hours: int | None,
    open_ended: bool,
    newest: bool,
    with_hours: bool = False,
) -> tuple[pl.DataFrame, dict[str, int], datetime | None]:
    """Run the window and validation queries over every table, each table read once."""
    queries = []
    for table in EVENT_TABLES:
        events = _scan_events(mimic_dir, table)
        queries.append(
            _window_query(events, table, root, task, hours, open_ended, with_hours=with_hours)
        )
        queries.append(_validation_query(events, root, newest))
    results = _collect(mimic_dir, queries)
    validations = results[1::2]
    found = [frame["newest"][0] for frame in validations if "newest" in frame.columns]
    latest = max((time for time in found if time is not None), default=None)
    counts = _sum_counts([frame.select(pl.exclude("newest")) for frame in validations])
    return pl.concat(results[0::2]), counts, latest


def _sum_counts(frames: list[pl.DataFrame]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for frame in frames:
        for key, value in frame.row(0, named=True).items():
            totals[key] = totals.get(key, 0) + int(value)
    return totals


def last_per_bin(events: pl.DataFrame) -> pl.DataFrame:
    """Reduce events to the value the benchmark's grid keeps in each (stay, variable, hour).

    The benchmark first keeps, per chart time and variable, the row that sorts last by
    value, then lets the latest chart time in an hour overwrite earlier ones. Sorting by
    (chart time, value keys) and taking the last row of each bin does both at once. A
    sort plus a comparison with the next row needs far less memory than a group-by with
    millions of small groups.
    """
    keys = ["stay", "var", "bin"]
    ordered = events.sort([*keys, "charttime", "key_a", "key_b"])
    last = pl.lit(False)
    for key in keys:
        last = last | (pl.col(key) != pl.col(key).shift(-1)).fill_null(True)
    return ordered.filter(last).select(*keys, "val")


def validation_counts(mimic_dir: str | Path, root: pl.DataFrame) -> dict[str, int]:
    """Count events at each rule of the benchmark's ``validate_events``, over all items.

    Returns:
        ``n_events`` (rows of cohort subjects), ``empty_hadm``, ``no_hadm_in_stay``,
        ``no_icustay``, ``recovered``, ``icustay_missing_in_stays`` and ``kept``.
    """
    queries = [_validation_query(_scan_events(mimic_dir, t), root) for t in EVENT_TABLES]
    return _sum_counts(_collect(mimic_dir, queries))
