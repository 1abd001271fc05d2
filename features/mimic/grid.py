"""The hourly 48 x 76 grid of mimic3-benchmarks and its normaliser.

Per stay and variable, each hourly bin holds the last value seen in it; empty bins carry
the previous bin's value forward, and bins before the first observation hold the
variable's normal value. Categorical variables (capillary refill, the four GCS items) are
one-hot encoded over their categories; 17 mask columns mark the bins that were observed.
That gives 59 value columns + 17 masks = 76 columns, in the benchmark's column order.

The normaliser z-scores the continuous value columns only, with the mean and the sample
standard deviation (floored at 1e-7) over every hour of every training stay, as the
benchmark's ``Normalizer`` does; one-hot and mask columns are left as they are.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from features.mimic.variables import channel_names, load_variables, normalised_columns

HOURS = 48
STD_FLOOR = 1e-7


def build_grid(bins: pl.DataFrame, stay_ids: np.ndarray, hours: int = HOURS) -> np.ndarray:
    """Build the (stays, hours, 76) float32 grid: every stay ``hours`` hours long.

    Args:
        bins: One row per observed (``stay``, ``var``, ``bin``) with the kept ``val`` (a
            number, or the category index for categorical variables).
        stay_ids: ICUSTAY_IDs in the order of the grid's first axis.
        hours: Number of hourly bins.

    Returns:
        The raw (un-normalised) grid.
    """
    lengths = np.full(len(stay_ids), hours, dtype=np.int64)
    rows, _ = build_hourly(bins, stay_ids, lengths)
    return rows.reshape(len(stay_ids), hours, rows.shape[1])


def stay_offsets(lengths: np.ndarray) -> np.ndarray:
    """Row offsets of stays laid end to end: stay i is rows ``offsets[i]:offsets[i + 1]``.

    Args:
        lengths: ``(stays,)`` hours per stay.

    Returns:
        ``(stays + 1,)`` int64 offsets, starting at 0.
    """
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))])


def build_hourly(
    bins: pl.DataFrame, stay_ids: np.ndarray, lengths: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Build the hourly rows of stays of different lengths, laid end to end.

    Each stay's rows are filled exactly as the benchmark's discretizer fills one stay:
    the last value of each bin, carried forward, the normal value before the first
    observation, one-hot categories and 17 masks. Carrying forward never crosses from one
    stay into the next.

    Args:
        bins: One row per observed (``stay``, ``var``, ``bin``) with the kept ``val``;
            ``bin`` must be below the stay's length.
        stay_ids: ``(stays,)`` ICUSTAY_IDs in output order.
        lengths: ``(stays,)`` hours of each stay (at least 1).

    Returns:
        ``(rows, offsets)``: the raw ``(sum(lengths), 76)`` float32 rows and the
        ``(stays + 1,)`` offsets of :func:`stay_offsets`.
    """
    variables = load_variables()
    n_stays, n_vars = len(stay_ids), len(variables)
    lengths = np.asarray(lengths, dtype=np.int64)
    offsets = stay_offsets(lengths)
    total = int(offsets[-1])
    order = np.argsort(stay_ids, kind="stable")
    sorted_ids = stay_ids[order]
    stay = bins["stay"].to_numpy()
    # Look each run of equal consecutive stay ids up once (last_per_bin's output is sorted
    # by stay, so a few thousand lookups instead of one per bin).
    starts = np.flatnonzero(np.concatenate([[True], stay[1:] != stay[:-1]]))[: stay.size]
    run_ids = stay[starts]
    run_pos = np.searchsorted(sorted_ids, run_ids)
    if np.any(run_pos >= n_stays) or np.any(
        sorted_ids[np.minimum(run_pos, n_stays - 1)] != run_ids
    ):
        raise ValueError("events refer to stays that are not in the stay list")
    stay_row = np.repeat(order[run_pos], np.diff(np.append(starts, len(stay))))
    hour = bins["bin"].to_numpy().astype(np.int64)
    if np.any(hour >= lengths[stay_row]) or np.any(hour < 0):
        raise ValueError("events fall outside their stay's hours")
    row = offsets[stay_row] + hour
    var = bins["var"].to_numpy().astype(np.int64)

    # float32 throughout and one preallocated output: the rows are the largest thing the
    # extraction holds (stay-hours x 76), so no float64 copies or concatenations of them.
    values = np.full((total, n_vars), np.nan, dtype=np.float32)
    values[row, var] = bins["val"].to_numpy().astype(np.float32)
    observed = ~np.isnan(values)

    # Forward fill: the latest observed row at or before each row; one running maximum over
    # all rows, and a row whose latest observation lies before its stay's first row has
    # seen nothing yet (so nothing leaks from the previous stay).
    index_type = np.int32 if total < np.iinfo(np.int32).max else np.int64
    latest = np.where(observed, np.arange(total, dtype=index_type)[:, None], -1)
    latest = np.maximum.accumulate(latest.astype(index_type), axis=0)
    first_row = np.repeat(offsets[:-1], lengths).astype(index_type)
    seen = latest >= first_row[:, None]
    del first_row
    filled = np.take_along_axis(values, np.maximum(latest, 0), axis=0)
    del values, latest
    normal = np.array([v.normal_code for v in variables], dtype=np.float32)
    filled = np.where(seen, filled, normal[None, :])
    del seen

    rows = np.zeros((total, len(channel_names())), dtype=np.float32)
    column = 0
    every_row = np.arange(total)
    for index, variable in enumerate(variables):
        if variable.is_categorical:
            codes = filled[:, index].astype(np.int64)
            rows[every_row, column + codes] = 1.0
            column += len(variable.categories)
        else:
            rows[:, column] = filled[:, index]
            column += 1
    rows[:, column:] = observed
    if column + n_vars != rows.shape[1]:
        raise AssertionError(f"grid has {column + n_vars} columns, expected 76")
    return rows, offsets


def fit_normaliser(grid: np.ndarray, rows: np.ndarray | None = None) -> dict[str, list[float]]:
    """Fit per-column means and standard deviations on (training) grids.

    Like the benchmark's normaliser, this accumulates the sum and the sum of squares of
    every hour of every stay (in float64, a block of stays at a time so that no copy of
    the grid is made) and takes the sample standard deviation, floored at 1e-7.

    Args:
        grid: (stays, hours, 76) raw grid, or (stay-hours, 76) rows of stays laid end to end
            (:func:`build_hourly`).
        rows: Indices along the first axis to fit on (the training split's stays, or their
            hourly rows); all if ``None``.

    Returns:
        ``{"means": [...76], "stds": [...76], "normalised": [...76 bools]}``; columns that
        are not normalised get mean 0 and std 1 so that applying the statistics to every
        column is always correct.
    """
    rows = np.arange(len(grid)) if rows is None else np.asarray(rows)
    width = grid.shape[-1]
    count = len(rows) * (grid.shape[1] if grid.ndim == 3 else 1)
    if count < 2:
        raise ValueError("need at least two training hours to fit the normaliser")
    total = np.zeros(width)
    total_sq = np.zeros(width)
    # Blocks of 4,096 grids (as ever), or of 32,768 hourly rows: about 20 MiB of float64.
    block_rows = 4096 if grid.ndim == 3 else 32768
    for start in range(0, len(rows), block_rows):
        block = grid[rows[start : start + block_rows]].reshape(-1, width).astype(np.float64)
        total += block.sum(axis=0)
        total_sq += (block * block).sum(axis=0)
    means = total / count
    variance = (total_sq - 2.0 * total * means + count * means**2) / (count - 1)
    stds = np.maximum(np.sqrt(np.maximum(variance, 0.0)), STD_FLOOR)
    mask = np.array(normalised_columns())
    means = np.where(mask, means, 0.0)
    stds = np.where(mask, stds, 1.0)
    return {
        "means": [float(m) for m in means],
        "stds": [float(s) for s in stds],
        "normalised": [bool(m) for m in mask],
    }


def apply_normaliser(grid: np.ndarray, normaliser: dict[str, list[float]]) -> np.ndarray:
    """Z-score the grid's continuous columns with saved statistics (float32 out)."""
    means = np.asarray(normaliser["means"], dtype=np.float32)
    stds = np.asarray(normaliser["stds"], dtype=np.float32)
    return ((grid - means) / stds).astype(np.float32)
