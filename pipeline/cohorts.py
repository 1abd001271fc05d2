"""Score one feature folder with another folder's normaliser: a model's view of a new cohort.

A feature folder (``features.mimic.extract``) stores its grid raw and the normaliser fitted
on its own training split in ``manifest.json``; ``features.mimic.loader.load_split``
applies that folder's own statistics. That is right for training, and wrong for scoring a
model on a different cohort (another site, a shifted population): the model was fitted to
inputs z-scored with its *training* folder's statistics, and refitting them on the new
cohort would quietly remove exactly the shift one wants to measure (a site whose values
all read lower would be re-centred to look like the training site).

:func:`load_normalised_as` loads a folder's stays with a reference folder's normaliser.
Because the grid on disk is raw, nothing has to be undone: the reference statistics are
applied to the raw values directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import torch

from features.mimic.grid import apply_normaliser
from features.mimic.manifest import (
    GRID_FILE,
    MANIFEST_FILE,
    STAYS_FILE,
    FeatureFolderError,
    load_manifest,
)
from features.mimic.splits import SPLITS


def load_normalised_as(
    feature_dir: str | os.PathLike,
    reference_dir: str | os.PathLike,
    *,
    split: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, pl.DataFrame]:
    """Load a folder's stays z-scored with another folder's (the training folder's) statistics.

    Args:
        feature_dir: The feature folder to score (e.g. a shifted cohort).
        reference_dir: The feature folder whose normaliser the model was trained with.
        split: ``"train"``, ``"val"`` or ``"test"`` of ``feature_dir``; None for every stay.

    Returns:
        ``(x, y, stays)`` as ``features.mimic.loader.load_split`` returns them: ``x`` float32
        (N, hours, channels), ``y`` float32 (N,) labels, ``stays`` the matching rows of
        ``feature_dir``'s ``stays.parquet`` in the same order.

    Raises:
        FeatureFolderError: One line naming the manifest if the two folders' channels or
            hours differ (the model would read columns it was not trained on), or naming a
            file that is missing or disagrees with the manifest.
        ValueError: If ``split`` is not None or one of the three splits.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be None or one of {', '.join(SPLITS)}, got {split!r}")
    folder = Path(feature_dir)
    manifest = load_manifest(folder)
    reference = load_manifest(reference_dir)
    if manifest.channels != reference.channels or manifest.hours != reference.hours:
        raise FeatureFolderError(
            f"{folder / MANIFEST_FILE}: channels or hours differ from those of "
            f"{Path(reference_dir) / MANIFEST_FILE}; both folders must be extracted the same way"
        )
    stays = _read_stays(folder)
    grid = _read_grid(folder, (stays.height, manifest.hours, len(manifest.channels)))
    if split is None:
        rows = np.arange(stays.height)
    else:
        rows = np.flatnonzero((stays["split"] == split).to_numpy())
    x = apply_normaliser(np.asarray(grid[rows]), reference.normaliser.model_dump())
    part = stays[rows.tolist()] if len(rows) else stays.clear()
    y = part["label"].to_numpy().astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y), part


def _read_stays(folder: Path) -> pl.DataFrame:
    path = folder / STAYS_FILE
    try:
        return pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as err:
        raise FeatureFolderError(f"{path}: cannot read the stays table: {err}") from err


def _read_grid(folder: Path, expected: tuple[int, int, int]) -> np.ndarray:
    """The raw grid, memory-mapped, checked against the stays table and the manifest."""
    path = folder / GRID_FILE
    try:
        grid = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise FeatureFolderError(f"{path}: cannot read the grid: {err}") from err
    if grid.shape != expected:
        raise FeatureFolderError(
            f"{path}: grid shape {grid.shape} does not match {expected} from "
            f"{STAYS_FILE} and {MANIFEST_FILE}"
        )
    return grid
