"""Build the in-hospital-mortality feature folder from raw MIMIC-III tables.

``extract(mimic_dir, out_dir)`` runs the whole pipeline and writes, atomically (into a
temporary sibling folder that is renamed at the end, so a failed run leaves nothing):

- ``stays.parquet``: one row per stay: ``subject_id``, ``hadm_id``, ``icustay_id``,
  ``label`` (0/1), ``split`` (train/val/test), ``length_hours``, ``age``, ``gender``,
  ``dbsource``, ``intime``, ``outtime``, ``ethnicity``, ``n_events`` and, when the input
  folder holds a ``synthetic_truth.csv`` from the generator, ``true_risk``;
- ``grid.npy``: the raw (un-normalised) float32 grid (stays, 48, 76), in the row order
  of ``stays.parquet``;
- ``manifest.json``: schema version, task, source tables (bytes and sha256), the count at
  every cohort step, event validation counts, split seed and fractions, the 76 channel
  names and the normaliser fitted on the training split.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from features.mimic.cohort import admissions_with_diagnoses, root_stays
from features.mimic.events import EPS, HOURS, last_per_bin, window_events
from features.mimic.grid import build_grid, fit_normaliser
from features.mimic.splits import SPLITS, assign_splits, split_column
from features.mimic.tables import EVENT_TABLES, MimicInputError, file_fingerprint, table_path

SCHEMA_VERSION = 1
TASK = "in-hospital-mortality"
SOURCE_TABLES = ("PATIENTS", "ADMISSIONS", "ICUSTAYS", "DIAGNOSES_ICD", *EVENT_TABLES)
TRUTH_FILE = "synthetic_truth.csv"
STAYS_FILE = "stays.parquet"
GRID_FILE = "grid.npy"
MANIFEST_FILE = "manifest.json"


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


def _check_out_dir(out: Path) -> None:
    """Refuse to replace a folder that is not a feature folder (or empty)."""
    if out.exists():
        if not out.is_dir():
            raise MimicInputError(f"{out}: output path exists and is not a folder")
        if any(out.iterdir()) and not (out / MANIFEST_FILE).exists():
            raise MimicInputError(
                f"{out}: output folder exists, is not empty and is not a feature folder; "
                "refusing to replace it"
            )


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


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder to ``out``, replacing an old feature folder."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def extract(
    mimic_dir: str | Path,
    out_dir: str | Path,
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    progress: bool = True,
) -> dict:
    """Extract the in-hospital-mortality features from raw MIMIC-III tables.

    Args:
        mimic_dir: Folder with the MIMIC-III tables (``.csv`` or ``.csv.gz``).
        out_dir: Feature folder to write (replaced if it is an older feature folder).
        seed: Seed of the subject-level split.
        val_fraction: Share of subjects in the validation split.
        test_fraction: Share of subjects in the test split.
        progress: Show a progress display on the terminal.

    Returns:
        The manifest that was written.

    Raises:
        MimicInputError: For missing or bad input; nothing is written then.
    """
    mimic_dir = Path(mimic_dir)
    out = Path(out_dir)
    _check_out_dir(out)
    paths = {name: table_path(mimic_dir, name) for name in SOURCE_TABLES}
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
            manifest = _manifest(
                mimic_dir,
                sources,
                cohort_steps,
                validation,
                stays,
                seed,
                val_fraction,
                test_fraction,
                normaliser,
            )
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
            try:
                stays.write_parquet(tmp / STAYS_FILE)
                np.save(tmp / GRID_FILE, grid, allow_pickle=False)
                manifest["timings_s"] = dict(steps.timings)
                manifest["timings_s"]["total"] = round(time.perf_counter() - started, 3)
                (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
                _publish(tmp, out)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return manifest


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
    sources: dict[str, dict[str, object]],
    cohort_steps: list[dict[str, object]],
    validation: dict[str, int],
    stays: pl.DataFrame,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    normaliser: dict[str, list[float]],
) -> dict:
    from features.mimic.variables import channel_names

    split_counts = {}
    for split in SPLITS:
        part = stays.filter(pl.col("split") == split)
        split_counts[split] = {
            "stays": part.height,
            "subjects": part["subject_id"].n_unique(),
            "positives": int(part["label"].sum()),
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "task": TASK,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": {"dir": str(mimic_dir.resolve()), "tables": sources},
        "cohort": {"steps": cohort_steps, "event_validation": validation},
        "stays": stays.height,
        "positives": int(stays["label"].sum()),
        "hours": HOURS,
        "split": {
            "seed": seed,
            "val_fraction": val_fraction,
            "test_fraction": test_fraction,
            "by": "subject_id",
            "counts": split_counts,
        },
        "channels": channel_names(),
        "normaliser": {"fitted_on": "train", **normaliser},
        "files": {"stays": STAYS_FILE, "grid": GRID_FILE},
        "has_true_risk": "true_risk" in stays.columns,
    }
