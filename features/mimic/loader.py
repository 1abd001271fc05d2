"""Load a feature folder written by :func:`features.mimic.extract.extract` for training.

This is the only module of ``features`` that imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from features.mimic.grid import apply_normaliser
from features.mimic.manifest import (
    GRID_FILE,
    MANIFEST_FILE,
    STAYS_FILE,
    FeatureFolderError,
    load_manifest,
)
from features.mimic.splits import SPLITS

# The manifest's reader and error live in features.mimic.manifest; they are also this
# module's public API, as the README shows.
__all__ = ["FeatureFolderError", "load_manifest", "load_split"]


def load_split(feature_dir: str | Path, split: str):
    """Load one split as tensors, normalised with the saved training statistics.

    Args:
        feature_dir: A feature folder.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        ``(x, y, stays)``: ``x`` float32 tensor (N, 48, 76), continuous columns z-scored
        (one-hot and mask columns as they are); ``y`` float32 tensor (N,) of 0/1 labels;
        ``stays`` the polars rows of ``stays.parquet`` for the split, in the same order.

    Raises:
        FeatureFolderError: Naming the file if a file is missing or they disagree.
        ValueError: If ``split`` is not one of the three splits.
    """
    import torch

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    folder = Path(feature_dir)
    manifest = load_manifest(folder)
    stays_path = folder / STAYS_FILE
    grid_path = folder / GRID_FILE
    try:
        stays = pl.read_parquet(stays_path)
    except (OSError, pl.exceptions.PolarsError) as err:
        raise FeatureFolderError(f"{stays_path}: cannot read the stays table: {err}") from err
    try:
        grid = np.load(grid_path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise FeatureFolderError(f"{grid_path}: cannot read the grid: {err}") from err
    expected = (stays.height, manifest.hours, len(manifest.channels))
    if grid.shape != expected:
        raise FeatureFolderError(
            f"{grid_path}: grid shape {grid.shape} does not match {expected} from "
            f"{stays_path.name} and {MANIFEST_FILE}"
        )
    rows = np.flatnonzero((stays["split"] == split).to_numpy())
    x = apply_normaliser(np.asarray(grid[rows]), manifest.normaliser.model_dump())
    part = stays[rows.tolist()] if len(rows) else stays.clear()
    y = part["label"].to_numpy().astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y), part
