"""Load a feature folder written by :mod:`features.mimic.extract`, for training or scoring.

* :func:`load_split`: one split of a training folder, normalised with the folder's own
  training statistics, with its labels.
* :func:`load_for_scoring`: every stay of a scoring folder (or of a training folder, or
  one of its splits), normalised with a *given* normaliser: the trained model's. A model
  must see new patients on the scale it was trained on; refitting statistics on the new
  cohort would silently re-centre it.
* :func:`load_task_split`: one split of a whole-stay task folder (decompensation, length
  of stay, phenotyping) as a :class:`TaskSplit`: the stays' normalised hourly rows laid end
  to end with their offsets, and the samples with the index of their stay.

This is the only module of ``features`` that imports torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from features.mimic.grid import apply_normaliser, stay_offsets
from features.mimic.manifest import (
    GRID_FILE,
    HOURLY_FILE,
    MANIFEST_FILE,
    SAMPLES_FILE,
    STAYS_FILE,
    FeatureFolderError,
    FeatureManifest,
    Normaliser,
    TaskManifest,
    load_ihm_manifest,
    load_manifest,
    load_task_manifest,
)
from features.mimic.splits import SPLITS

# The manifest's reader and error live in features.mimic.manifest; they are also this
# module's public API, as the README shows.
__all__ = [
    "FeatureFolderError",
    "TaskSplit",
    "load_for_scoring",
    "load_manifest",
    "load_raw",
    "load_split",
    "load_task_for_scoring",
    "load_task_split",
]


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
    manifest = load_ihm_manifest(folder)
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
    statistics = _checked_normaliser(normaliser, load_ihm_manifest(folder), folder / MANIFEST_FILE)
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
    manifest = load_ihm_manifest(folder)
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
    manifest: FeatureManifest | TaskManifest,
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


@dataclass(frozen=True)
class TaskSplit:
    """One split of a whole-stay task folder, normalised with its training statistics.

    Attributes:
        task: ``"decompensation"``, ``"length-of-stay"`` or ``"phenotyping"``.
        stays: The split's rows of ``stays.parquet``, in folder order.
        values: ``(rows, 76)`` float32 hourly rows of those stays laid end to end,
            continuous columns z-scored (one-hot and mask columns as they are).
        offsets: ``(stays + 1,)`` int64: stay ``i`` is ``values[offsets[i]:offsets[i + 1]]``.
        stay: ``(samples,)`` int64 index into ``stays`` of each sample's stay.
        hour: ``(samples,)`` int32 prediction time ``t``: the sample sees its stay's first
            ``t`` rows (phenotyping: all of them).
        target: Decompensation ``(samples,)`` int8 death within 24 h; length of stay
            ``(samples,)`` int8 bucket 0-9; phenotyping ``(samples, 25)`` int8 labels;
            None for a scoring folder.
        remaining_hours: Length of stay only: ``(samples,)`` float64 hours left.
        label_names: The names of the target's labels (:attr:`TaskManifest.labels`).
    """

    task: str
    stays: pl.DataFrame
    values: np.ndarray
    offsets: np.ndarray
    stay: np.ndarray
    hour: np.ndarray
    target: np.ndarray | None
    remaining_hours: np.ndarray | None
    label_names: tuple[str, ...]


def load_task_split(feature_dir: str | Path, split: str) -> TaskSplit:
    """Load one split of a whole-stay task folder, normalised with its training statistics.

    Args:
        feature_dir: A folder written by ``extract(..., task=...)`` for decompensation,
            length of stay or phenotyping.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        The split's :class:`TaskSplit`.

    Raises:
        FeatureFolderError: Naming the file if a file is missing or they disagree, or if
            the folder is an in-hospital-mortality or a scoring one.
        ValueError: If ``split`` is not one of the three splits.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    folder = Path(feature_dir)
    manifest = load_task_manifest(folder)
    if manifest.normaliser is None:
        raise FeatureFolderError(
            f"{folder / MANIFEST_FILE}: is a scoring folder (no labels or splits); load it "
            "with load_task_for_scoring and the trained model's normaliser"
        )
    stays, hourly, samples = _read_task_data(folder, manifest)
    rows = np.flatnonzero((stays["split"] == split).to_numpy())
    return _task_split(manifest, stays, hourly, samples, rows, manifest.normaliser.model_dump())


def load_task_for_scoring(
    feature_dir: str | Path, normaliser: Mapping[str, Sequence[float]] | Normaliser
) -> TaskSplit:
    """Every stay of a whole-stay folder, normalised with a trained model's statistics.

    Args:
        feature_dir: A whole-stay scoring folder (``extract_for_scoring(..., task=...)``)
            or training folder (all its stays).
        normaliser: The model's ``means`` and ``stds`` (76 each).

    Returns:
        A :class:`TaskSplit` of all stays; ``target`` and ``remaining_hours`` are None
        for a scoring folder.

    Raises:
        FeatureFolderError: As :func:`load_task_split`.
        ValueError: If the normaliser does not fit the folder's channels.
    """
    folder = Path(feature_dir)
    manifest = load_task_manifest(folder)
    statistics = _checked_normaliser(normaliser, manifest, folder / MANIFEST_FILE)
    stays, hourly, samples = _read_task_data(folder, manifest)
    return _task_split(manifest, stays, hourly, samples, np.arange(stays.height), statistics)


def _task_split(
    manifest: TaskManifest,
    stays: pl.DataFrame,
    hourly: np.ndarray,
    samples: pl.DataFrame,
    rows: np.ndarray,
    normaliser: Mapping[str, Sequence[float]],
) -> TaskSplit:
    """The stays ``rows`` of a whole-stay folder with their normalised hours and samples."""
    part = stays[rows.tolist()] if len(rows) else stays.clear()
    lengths = part["hours"].to_numpy().astype(np.int64)
    offsets = stay_offsets(lengths)
    # Row r of the split is row r - offsets[i] + offset[i] of the folder, for its stay i.
    shift = np.repeat(part["offset"].to_numpy() - offsets[:-1], lengths)
    values = apply_normaliser(np.asarray(hourly[np.arange(int(offsets[-1])) + shift]), normaliser)
    index = pl.DataFrame({"icustay_id": part["icustay_id"], "stay": np.arange(part.height)})
    mine = samples.join(index, on="icustay_id", how="inner", maintain_order="left")
    labelled = manifest.purpose == "training"
    if manifest.task == "phenotyping":
        target = mine.select(manifest.labels).to_numpy().astype(np.int8) if labelled else None
        hour = lengths[mine["stay"].to_numpy()].astype(np.int32)
    else:
        column = "label" if manifest.task == "decompensation" else "bucket"
        target = mine[column].to_numpy().astype(np.int8) if labelled else None
        hour = mine["hour"].to_numpy().astype(np.int32)
    los = labelled and manifest.task == "length-of-stay"
    return TaskSplit(
        task=manifest.task,
        stays=part,
        values=values,
        offsets=offsets,
        stay=mine["stay"].to_numpy().astype(np.int64),
        hour=hour,
        target=target,
        remaining_hours=mine["remaining_hours"].to_numpy() if los else None,
        label_names=manifest.labels,
    )


def _read_task_data(
    folder: Path, manifest: TaskManifest
) -> tuple[pl.DataFrame, np.ndarray, pl.DataFrame]:
    """``stays.parquet``, the memory-mapped hourly rows and ``samples.parquet``, checked."""
    tables = []
    for name, what in ((STAYS_FILE, "stays"), (SAMPLES_FILE, "samples")):
        try:
            tables.append(pl.read_parquet(folder / name))
        except (OSError, pl.exceptions.PolarsError) as err:
            message = f"{folder / name}: cannot read the {what} table: {err}"
            raise FeatureFolderError(message) from err
    stays, samples = tables
    path = folder / HOURLY_FILE
    try:
        hourly = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise FeatureFolderError(f"{path}: cannot read the hourly rows: {err}") from err
    expected = (manifest.hourly_rows, len(manifest.channels))
    if hourly.shape != expected or int(stays["hours"].sum()) != manifest.hourly_rows:
        raise FeatureFolderError(
            f"{path}: hourly rows {hourly.shape} do not match {expected} from "
            f"{STAYS_FILE} and {MANIFEST_FILE}"
        )
    if stays.height != manifest.stays or samples.height != manifest.samples:
        raise FeatureFolderError(
            f"{folder / MANIFEST_FILE}: records {manifest.stays} stays and {manifest.samples} "
            f"samples; the tables hold {stays.height} and {samples.height}"
        )
    return stays, hourly, samples
