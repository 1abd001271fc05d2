"""Build the in-hospital-mortality feature folder from raw MIMIC-III tables.

``extract(mimic_dir, out_dir)`` runs the whole pipeline and writes, atomically (into a
temporary sibling folder that is renamed at the end, so a failed run leaves nothing), an
owner-only folder (0700, files 0600: the files hold per-patient data):

- ``stays.parquet``: one row per stay: ``subject_id``, ``hadm_id``, ``icustay_id``,
  ``label`` (0/1), ``split`` (train/val/test), ``length_hours``, ``age``, ``gender``,
  ``dbsource``, ``intime``, ``outtime``, ``ethnicity``, ``n_events`` and, when the input
  folder holds a ``synthetic_truth.csv`` from the generator, ``true_risk``;
- ``grid.npy``: the raw (un-normalised) float32 grid (stays, 48, 76), in the row order
  of ``stays.parquet``;
- ``manifest.json``: schema version, task, source tables (bytes and sha256), the count at
  every cohort step, event validation counts, split seed and fractions, the 76 channel
  names, the normaliser fitted on the training split and ``warnings`` (a list of
  strings, e.g. a variable never observed in the cohort; each is logged too); its typed
  model is :class:`features.mimic.manifest.FeatureManifest`.

Everything that can be checked cheaply is checked before any work: the split shares, the
output folder (it must be new, empty, or a feature folder this code wrote that holds
nothing else; it is checked to be writable), and every table's file and header. A user's
existing empty folder is filled in place, never replaced or re-permissioned. Temporary
folders left behind by a killed run (``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` beside the
output, owned by this user, whose process is gone) are removed at the next run.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from features.io import OutputFolder, create_private_file
from features.mimic.cohort import admissions_with_diagnoses, root_stays
from features.mimic.events import EPS, HOURS, last_per_bin, window_events
from features.mimic.grid import build_grid, fit_normaliser
from features.mimic.manifest import (
    GRID_FILE,
    MANIFEST_FILE,
    SCHEMA_VERSION,
    SOURCE_TABLES,
    STAYS_FILE,
    TASK,
    Cohort,
    CohortStep,
    EventValidation,
    FeatureManifest,
    FolderFiles,
    Normaliser,
    Source,
    SourceTable,
    Split,
    SplitCount,
    SplitCounts,
    read_manifest_header,
)
from features.mimic.splits import assign_splits, check_split_fractions, split_column
from features.mimic.tables import MimicInputError, check_table, file_fingerprint
from features.mimic.variables import channel_names

TRUTH_FILE = "synthetic_truth.csv"
#: Everything a feature folder holds; a folder with anything else is never replaced.
FOLDER_FILES = frozenset({STAYS_FILE, GRID_FILE, MANIFEST_FILE})

logger = logging.getLogger(__name__)


class _Steps:
    """Reports pipeline steps to a rich progress display, or stays silent."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = None
        self.timings: dict[str, float] = {}

    def __enter__(self) -> _Steps:
        if self.enabled:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()
            )
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    @contextmanager
    def step(self, description: str):
        """Show ``description`` while the block runs and record its duration."""
        task = None
        if self.progress is not None:
            task = self.progress.add_task(description, total=1)
        start = time.perf_counter()
        yield
        self.timings[description] = round(time.perf_counter() - start, 3)
        if task is not None:
            self.progress.update(task, completed=1)


def _is_feature_folder(folder: Path) -> bool:
    """Whether ``folder`` is a feature folder this code wrote, holding nothing else."""
    names = {entry.name for entry in folder.iterdir()}
    if MANIFEST_FILE not in names or not names <= FOLDER_FILES:
        return False
    # Any schema version: an older or newer folder of ours may be replaced too.
    header = read_manifest_header(folder)
    return header is not None and header.task == TASK


def _read_truth(mimic_dir: Path) -> pl.DataFrame | None:
    """Read the generator's planted risk per stay, if the input folder has one."""
    path = mimic_dir / TRUTH_FILE
    if not path.exists():
        return None
    try:
        truth = pl.read_csv(
            path, schema_overrides={"icustay_id": pl.Int64, "true_risk": pl.Float64}
        )
    except pl.exceptions.PolarsError as err:
        raise MimicInputError(f"{path}: cannot read the synthetic truth file: {err}") from err
    for column in ("icustay_id", "true_risk"):
        if column not in truth.columns:
            raise MimicInputError(f"{path}: column {column} is missing")
    return truth.select("icustay_id", "true_risk")


def extract(
    mimic_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    progress: bool = True,
) -> FeatureManifest:
    """Extract the in-hospital-mortality features from raw MIMIC-III tables.

    Args:
        mimic_dir: Folder with the MIMIC-III tables (``.csv`` or ``.csv.gz``).
        out_dir: Feature folder to write: a new path, an empty folder (filled in place),
            or a feature folder written by this function holding nothing else (replaced).
            A symbolic link is followed; the folder it points to is written.
        seed: Seed of the subject-level split.
        val_fraction: Share of subjects in the validation split.
        test_fraction: Share of subjects in the test split.
        progress: Show a progress display on the terminal.

    Returns:
        The manifest that was written (typed; ``manifest.json`` holds its JSON).

    Raises:
        MimicInputError: For missing or bad input or a refused output folder; nothing is
            written then.
        ValueError: If the split shares are out of range (before anything is read).
    """
    check_split_fractions(val_fraction, test_fraction)
    mimic_dir = Path(mimic_dir)
    output = OutputFolder(
        Path(out_dir),
        is_ours=_is_feature_folder,
        what="a feature folder written by rank1 extract",
        marker=MANIFEST_FILE,
        error=MimicInputError,
    )
    output.check()
    paths = {name: check_table(mimic_dir, name) for name in SOURCE_TABLES}
    with output.writing() as tmp:
        return _extract_into(mimic_dir, paths, tmp, seed, val_fraction, test_fraction, progress)


def _extract_into(
    mimic_dir: Path,
    paths: dict[str, Path],
    tmp: Path,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    progress: bool,
) -> FeatureManifest:
    """The body of :func:`extract`: compute everything and write it to ``tmp``."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as hasher, _Steps(progress) as steps:
        # Hashing runs beside the polars work; hashlib releases the GIL on large blocks.
        fingerprints = {name: hasher.submit(file_fingerprint, p) for name, p in paths.items()}
        with steps.step("cohort: stays, admissions, patients"):
            root, cohort_steps = root_stays(mimic_dir)
            diagnosed = admissions_with_diagnoses(mimic_dir)
            task = root.filter(pl.col("los").is_not_null() & (pl.col("los") * 24.0 >= HOURS - EPS))
            cohort_steps.append(_count("length_of_stay_48h", task))
            task = task.join(diagnosed, on=["subject_id", "hadm_id"], how="semi")
            cohort_steps.append(_count("with_diagnoses", task))
        with steps.step("events: validate and cut the first 48 h"):
            events, validation = window_events(mimic_dir, root, task, hours=HOURS)
            per_stay = events.group_by("stay").agg(n_events=pl.len())
            task = task.join(per_stay, left_on="icustay_id", right_on="stay", how="inner")
            task = task.sort("subject_id", "intime", "icustay_id")
            cohort_steps.append(_count("events_in_first_48h", task))
            warnings = _unobserved_variables(events, task)
        if task.height == 0:
            raise MimicInputError(f"{mimic_dir}: no ICU stay is left for the task")
        with steps.step("grid: hourly bins, forward fill, masks"):
            bins = last_per_bin(events)
            grid = build_grid(bins, task["icustay_id"].to_numpy(), hours=HOURS)
        with steps.step("splits and normaliser"):
            assignment = assign_splits(
                task["subject_id"].to_numpy(),
                seed=seed,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
            )
            task = task.with_columns(split_column(task, assignment))
            train = np.flatnonzero((task["split"] == "train").to_numpy())
            if len(train) == 0:
                raise MimicInputError(f"{mimic_dir}: no stay in the training split")
            normaliser = fit_normaliser(grid, train)
            stays = _stays_table(task, _read_truth(mimic_dir))
        with steps.step("write feature folder"):
            sources = {name: future.result() for name, future in fingerprints.items()}
            with create_private_file(tmp / STAYS_FILE) as handle:
                stays.write_parquet(handle)
            with create_private_file(tmp / GRID_FILE) as handle:
                np.save(handle, grid, allow_pickle=False)
            # Timed before this last step ends, as ever: its own time is only in the total.
            timings = {**steps.timings, "total": round(time.perf_counter() - started, 3)}
            split = Split(
                seed=seed,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                by="subject_id",
                counts=_split_counts(stays),
            )
            manifest = _manifest(
                mimic_dir,
                stays,
                sources=sources,
                cohort_steps=cohort_steps,
                validation=validation,
                split=split,
                normaliser=normaliser,
                warnings=warnings,
                timings=timings,
            )
            manifest.write(tmp)
    return manifest


def _unobserved_variables(events: pl.DataFrame, task: pl.DataFrame) -> list[str]:
    """Warn (log and return) about variables never observed in any task stay's window."""
    from features.mimic.variables import load_variables

    in_task = pl.col("stay").is_in(task["icustay_id"].implode())
    kept = events.filter(in_task & pl.col("val").is_not_null())
    seen = set(kept["var"].unique().to_list())
    warnings = [
        f"variable {variable.channel!r} is never observed in the first {HOURS} h of any stay; "
        "its grid columns hold only its normal value"
        for index, variable in enumerate(load_variables())
        if index not in seen
    ]
    for warning in warnings:
        logger.warning(warning)
    return warnings


def _count(step: str, frame: pl.DataFrame) -> dict[str, object]:
    return {"step": step, "stays": frame.height, "subjects": frame["subject_id"].n_unique()}


def _stays_table(task: pl.DataFrame, truth: pl.DataFrame | None) -> pl.DataFrame:
    stays = task.select(
        "subject_id",
        "hadm_id",
        "icustay_id",
        pl.col("label").cast(pl.Int32),
        "split",
        length_hours=pl.col("los") * 24.0,
        age="age",
        gender="gender",
        dbsource="dbsource",
        intime="intime",
        outtime="outtime",
        ethnicity="ethnicity",
        n_events=pl.col("n_events").cast(pl.Int64),
    )
    if truth is not None:
        stays = stays.join(truth, on="icustay_id", how="left", maintain_order="left")
    return stays


def _manifest(
    mimic_dir: Path,
    stays: pl.DataFrame,
    *,
    sources: dict[str, dict[str, object]],
    cohort_steps: list[dict[str, object]],
    validation: dict[str, int],
    split: Split,
    normaliser: dict[str, list],
    warnings: list[str],
    timings: dict[str, float],
) -> FeatureManifest:
    return FeatureManifest(
        schema_version=SCHEMA_VERSION,
        task=TASK,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        source=Source(
            dir=str(mimic_dir.resolve()),
            tables={name: SourceTable(**found) for name, found in sources.items()},
        ),
        cohort=Cohort(
            steps=tuple(CohortStep(**step) for step in cohort_steps),
            event_validation=EventValidation(**validation),
        ),
        stays=stays.height,
        positives=int(stays["label"].sum()),
        hours=HOURS,
        split=split,
        channels=tuple(channel_names()),
        normaliser=Normaliser(fitted_on="train", **normaliser),
        files=FolderFiles(stays=STAYS_FILE, grid=GRID_FILE),
        has_true_risk="true_risk" in stays.columns,
        warnings=tuple(warnings),
        timings_s=timings,
    )


def _split_counts(stays: pl.DataFrame) -> SplitCounts:
    def count(split: str) -> SplitCount:
        part = stays.filter(pl.col("split") == split)
        return SplitCount(
            stays=part.height,
            subjects=part["subject_id"].n_unique(),
            positives=int(part["label"].sum()),
        )

    return SplitCounts(train=count("train"), val=count("val"), test=count("test"))
