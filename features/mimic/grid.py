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
    """Build the (stays, hours, 76) float32 grid.

    Args:
        bins: One row per observed (``stay``, ``var``, ``bin``) with the kept ``val`` (a
            number, or the category index for categorical variables).
        stay_ids: ICUSTAY_IDs in the order of the grid's first axis.
        hours: Number of hourly bins.

    Returns:
        The raw (un-normalised) grid.
    """
    variables = load_variables()
    n_stays, n_vars = len(stay_ids), len(variables)
    order = np.argsort(stay_ids, kind="stable")
    sorted_ids = stay_ids[order]
    stay = bins["stay"].to_numpy()
    pos = np.searchsorted(sorted_ids, stay)
    if np.any(pos >= n_stays) or np.any(sorted_ids[np.minimum(pos, n_stays - 1)] != stay):
        raise ValueError("events refer to stays that are not in the stay list")
    row = order[pos]
    var = bins["var"].to_numpy().astype(np.int64)
    hour = bins["bin"].to_numpy().astype(np.int64)

    # float32 throughout and one preallocated output: the grid is the largest thing the
    # extraction holds (stays x 48 x 76), so no float64 copies or concatenations of it.
    values = np.full((n_stays, hours, n_vars), np.nan, dtype=np.float32)
    values[row, hour, var] = bins["val"].to_numpy().astype(np.float32)
    observed = ~np.isnan(values)

    # Forward fill: index of the latest observed hour at or before each hour.
    latest = np.where(observed, np.arange(hours, dtype=np.int16)[None, :, None], -1)
    latest = np.maximum.accumulate(latest.astype(np.int16), axis=1)
    filled = np.take_along_axis(values, np.maximum(latest, 0), axis=1)
    del values
    normal = np.array([v.normal_code for v in variables], dtype=np.float32)
    filled = np.where(latest >= 0, filled, normal[None, None, :])
    del latest

    grid = np.zeros((n_stays, hours, len(channel_names())), dtype=np.float32)
    column = 0
    for index, variable in enumerate(variables):
        if variable.is_categorical:
            codes = filled[:, :, index].astype(np.int64)
            n_stay, n_hour = np.indices(codes.shape)
            grid[n_stay, n_hour, column + codes] = 1.0
            column += len(variable.categories)
        else:
            grid[:, :, column] = filled[:, :, index]
            column += 1
    grid[:, :, column:] = observed
    if column + n_vars != grid.shape[2]:
        raise AssertionError(f"grid has {column + n_vars} columns, expected 76")
    return grid


def fit_normaliser(grid: np.ndarray, rows: np.ndarray | None = None) -> dict[str, list[float]]:
    """Fit per-column means and standard deviations on (training) grids.

    Like the benchmark's normaliser, this accumulates the sum and the sum of squares of
    every hour of every stay (in float64, a block of stays at a time so that no copy of
    the grid is made) and takes the sample standard deviation, floored at 1e-7.

    Args:
        grid: (stays, hours, 76) raw grid.
        rows: Indices of the stays to fit on (the training split); all stays if ``None``.

    Returns:
        ``{"means": [...76], "stds": [...76], "normalised": [...76 bools]}``; columns that
        are not normalised get mean 0 and std 1 so that applying the statistics to every
        column is always correct.
    """
    rows = np.arange(len(grid)) if rows is None else np.asarray(rows)
    width = grid.shape[-1]
    count = len(rows) * grid.shape[1]
    if count < 2:
        raise ValueError("need at least two training hours to fit the normaliser")
    total = np.zeros(width)
    total_sq = np.zeros(width)
    for start in range(0, len(rows), 4096):
        block = grid[rows[start : start + 4096]].reshape(-1, width).astype(np.float64)
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
