"""Load a feature folder written by :mod:`features.mimic.extract`, for training or scoring.

* :func:`load_split`: one split of a training folder, normalised with the folder's own
  training statistics, with its labels.
* :func:`load_for_scoring`: every stay of a scoring folder (or of a training folder, or
  one of its splits), normalised with a *given* normaliser: the trained model's. A model
  must see new patients on the scale it was trained on; refitting statistics on the new
  cohort would silently re-centre it.

This is the only module of ``features`` that imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import polars as pl

from features.mimic.grid import apply_normaliser
from features.mimic.manifest import (
    GRID_FILE,
    MANIFEST_FILE,
    STAYS_FILE,
    FeatureFolderError,
    FeatureManifest,
    Normaliser,
    load_manifest,
)
from features.mimic.splits import SPLITS

# The manifest's reader and error live in features.mimic.manifest; they are also this
# module's public API, as the README shows.
__all__ = ["FeatureFolderError", "load_for_scoring", "load_manifest", "load_raw", "load_split"]


def load_split(feature_dir: str | Path, split: str):
    """Load one split as tensors, normalised with the saved training statistics.

    Args:
        feature_dir: A training feature folder.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        ``(x, y, stays)``: ``x`` float32 tensor (N, 48, 76), continuous columns z-scored
        (one-hot and mask columns as they are); ``y`` float32 tensor (N,) of 0/1 labels;
        ``stays`` the polars rows of ``stays.parquet`` for the split, in the same order.

    Raises:
        FeatureFolderError: Naming the file if a file is missing or they disagree, or if
            the folder is a scoring folder (it has no labels or splits).
        ValueError: If ``split`` is not one of the three splits.
    """
    import torch

    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    folder = Path(feature_dir)
    manifest = load_manifest(folder)
    if manifest.purpose == "scoring" or manifest.normaliser is None:
        raise FeatureFolderError(
            f"{folder / MANIFEST_FILE}: is a scoring folder (no labels or splits); load it "
            "with load_for_scoring and the trained model's normaliser"
        )
    stays, grid = _read_data(folder, manifest)
    rows = np.flatnonzero((stays["split"] == split).to_numpy())
    x = apply_normaliser(np.asarray(grid[rows]), manifest.normaliser.model_dump())
    part = stays[rows.tolist()] if len(rows) else stays.clear()
    y = part["label"].to_numpy().astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(y), part


def load_for_scoring(
    feature_dir: str | Path,
    normaliser: Mapping[str, Sequence[float]] | Normaliser,
    *,
    split: str | None = None,
):
    """Load stays to score, normalised with the trained model's statistics.

    Args:
        feature_dir: A scoring folder (:func:`features.mimic.extract.extract_for_scoring`)
            or a training folder.
        normaliser: The statistics the model was trained with: a mapping with ``means``
            and ``stds`` (and optionally ``normalised``), one value per channel, such as
            a training manifest's ``normaliser.model_dump()``, or that ``Normaliser``.
        split: None for every stay; ``"train"``, ``"val"`` or ``"test"`` for one split of
            a training folder.

    Returns:
        ``(x, stays)``: ``x`` float32 tensor (N, hours, channels) normalised with
        ``normaliser``; ``stays`` the rows of ``stays.parquet`` in the same order.

    Raises:
        FeatureFolderError: Naming the file if a file is missing or they disagree, or if
            ``split`` is given for a scoring folder (it has none).
        ValueError: If ``split`` is not None or a split name, or if ``normaliser`` lacks
            a key, has another length than the folder's channels, or holds a value that
            is not finite (or a std that is not positive).
    """
    import torch

    folder = Path(feature_dir)
    statistics = _checked_normaliser(normaliser, load_manifest(folder), folder / MANIFEST_FILE)
    grid, part = load_raw(folder, split=split)
    return torch.from_numpy(apply_normaliser(grid, statistics)), part


def load_raw(feature_dir: str | Path, *, split: str | None = None):
    """The raw (un-normalised) grid of some stays and their rows, e.g. for drift checks.

    Args:
        feature_dir: A scoring folder or a training folder.
        split: None for every stay; ``"train"``, ``"val"`` or ``"test"`` for one split of
            a training folder.

    Returns:
        ``(grid, stays)``: ``grid`` float32 numpy array (N, hours, channels) as extracted;
        ``stays`` the rows of ``stays.parquet`` in the same order.

    Raises:
        FeatureFolderError: Naming the file if a file is missing or they disagree, or if
            ``split`` is given for a scoring folder (it has none).
        ValueError: If ``split`` is not None or a split name.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be None or one of {', '.join(SPLITS)}, got {split!r}")
    folder = Path(feature_dir)
    manifest = load_manifest(folder)
    if split is not None and manifest.purpose == "scoring":
        raise FeatureFolderError(
            f"{folder / MANIFEST_FILE}: is a scoring folder (no labels or splits); "
            "load it with split=None"
        )
    stays, grid = _read_data(folder, manifest)
    if split is None:
        rows = np.arange(stays.height)
    else:
        rows = np.flatnonzero((stays["split"] == split).to_numpy())
    part = stays[rows.tolist()] if len(rows) else stays.clear()
    return np.asarray(grid[rows]), part


def _checked_normaliser(
    normaliser: Mapping[str, Sequence[float]] | Normaliser,
    manifest: FeatureManifest,
    manifest_path: Path,
) -> dict[str, list[float]]:
    """The ``means`` and ``stds`` of a given normaliser, checked against the folder.

    A normaliser of the wrong length would otherwise broadcast or fail deep in numpy; a
    NaN or a zero std would silently turn every score into NaN.
    """
    if isinstance(normaliser, Normaliser):
        normaliser = normaliser.model_dump()
    missing = [key for key in ("means", "stds") if key not in normaliser]
    if missing:
        raise ValueError(f"normaliser: lacks {' and '.join(missing)}")
    width = len(manifest.channels)
    keys = [key for key in ("means", "stds", "normalised") if key in normaliser]
    lengths = {key: len(normaliser[key]) for key in keys}
    if set(lengths.values()) != {width}:
        counts = ", ".join(f"{n} {key}" for key, n in lengths.items())
        raise ValueError(
            f"normaliser: {counts}, but {manifest_path} has {width} channels; the model "
            "was trained on other features"
        )
    means = [float(value) for value in normaliser["means"]]
    stds = [float(value) for value in normaliser["stds"]]
    if not all(math.isfinite(value) for value in means):
        raise ValueError("normaliser: means must be finite numbers")
    if not all(math.isfinite(value) and value > 0 for value in stds):
        raise ValueError("normaliser: stds must be finite numbers > 0")
    return {"means": means, "stds": stds}


def _read_data(folder: Path, manifest: FeatureManifest) -> tuple[pl.DataFrame, np.ndarray]:
    """``stays.parquet`` and the memory-mapped raw grid, checked against each other."""
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
    return stays, grid
