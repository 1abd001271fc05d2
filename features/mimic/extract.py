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
output folder (it must be new, empty, or a feature folder this code wrote for the same
purpose that holds nothing else; it is checked to be writable), and every table's file and
header. A user's existing empty folder is filled in place, never replaced or
re-permissioned. Temporary folders left behind by a killed run (``.NAME.tmp-PID-*`` /
``.NAME.old-PID-*`` beside the output, owned by this user, whose process is gone) are
removed at the next run.

Scoring mode
------------
``extract_for_scoring(mimic_dir, out_dir, as_of=...)`` builds the same 48-hour grid for
new patients, to be scored by an already-trained model (whose normaliser is applied at
scoring time, :func:`features.mimic.loader.load_for_scoring`). It runs the same cohort
steps, event validation and grid, with these differences, each because the patients may
still be in hospital:

- No outcome is read: DEATHTIME (ADMISSIONS) and DOD (PATIENTS) may be absent from the
  export, DISCHTIME and the ICU stay's OUTTIME and LOS may be empty
  (:data:`features.mimic.tables.SCORING_RULES`). No label, split or normaliser is written.
- The 48-hour rule: a stay that left the ICU counts when its LOS is at least 48 h (as in
  training); a stay still in the ICU (no OUTTIME) counts once ``as_of - INTIME >= 48 h``.
  ``as_of`` defaults to the newest CHARTTIME of the 17 variables' events of the cohort's
  patients (with an admission), found in the same pass over the event tables (as part of
  the event-validation counts, which read every event of those patients); the manifest
  records the one used. Events
  attach to a stay still in the ICU as to a stay whose OUTTIME is open-ended.
- **Deviation from mimic3-benchmarks (and from training): the "with diagnoses" rule is not
  applied** and DIAGNOSES_ICD is not read. ICD-9 codes are assigned at discharge, so a
  patient in the ICU has none; the benchmark's rule is an artifact of the inner join of a
  stay's static data to its diagnosis flags, not a clinical criterion.
- The manifest (``purpose: "scoring"``) records the cohort step counts and, in
  ``skipped``, how many adult stays were left out and why: discharged under 48 h, still in
  the ICU under 48 h, no event in the first 48 h. ``stays.parquet`` holds
  ``subject_id``, ``hadm_id``, ``icustay_id``, ``length_hours`` (LOS x 24 for a stay that
  left the ICU, as in training; hours from INTIME to ``as_of`` for one still in it),
  ``in_icu``, ``age``, ``gender``, ``dbsource``, ``intime``, ``outtime`` (null while in the
  ICU), ``ethnicity``, ``n_events`` and, for synthetic input, ``true_risk``.

A training folder is never replaced by a scoring one, nor the other way round: a model's
training data and a ward's scoring export are different things, and one silently taking
the other's place would lose work.
"""

from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import numpy as np
import polars as pl

from features.io import OutputFolder, create_private_file
from features.mimic.cohort import admissions_with_diagnoses, known_diagnoses, root_stays
from features.mimic.events import (
    EPS,
    HOURS,
    last_per_bin,
    window_events,
    window_events_and_newest,
)
from features.mimic.grid import build_grid, build_hourly, fit_normaliser, stay_offsets
from features.mimic.manifest import (
    GRID_FILE,
    HOURLY_FILE,
    MANIFEST_FILE,
    SAMPLES_FILE,
    SCHEMA_VERSION,
    SCORING_SOURCE_TABLES,
    SOURCE_TABLES,
    STAYS_FILE,
    TASK,
    Cohort,
    CohortStep,
    EventValidation,
    FeatureManifest,
    FolderFiles,
    Normaliser,
    Purpose,
    SkippedStays,
    Source,
    SourceTable,
    Split,
    SplitCount,
    SplitCounts,
    TaskFiles,
    TaskManifest,
    read_manifest_header,
)
from features.mimic.splits import assign_splits, check_split_fractions, split_column
from features.mimic.tables import (
    SCORING_RULES,
    TRAINING_RULES,
    MimicInputError,
    TableRules,
    check_table,
    file_fingerprint,
)
from features.mimic.task_names import SEQUENCE_TASKS, TASKS, SequenceTask, Task
from features.mimic.tasks import (
    hourly_samples,
    phenotype_labels,
    phenotype_names,
)
from features.mimic.variables import channel_names

TRUTH_FILE = "synthetic_truth.csv"
#: The generator's planted hourly risk of death within 24 h (decompensation's reference).
HOURLY_TRUTH_FILE = "synthetic_truth_hourly.csv"
DATETIME_US = pl.Datetime("us")
#: Everything a feature folder holds; a folder with anything else is never replaced.
FOLDER_FILES = frozenset({STAYS_FILE, GRID_FILE, MANIFEST_FILE})
#: Everything a whole-stay task folder holds.
TASK_FOLDER_FILES = frozenset({STAYS_FILE, HOURLY_FILE, SAMPLES_FILE, MANIFEST_FILE})
#: The task names of ``manifest.json`` for each ``--task``.
MANIFEST_TASK: dict[str, str] = {"ihm": TASK, **{name: name for name in SEQUENCE_TASKS}}
#: What each purpose's output folder must be, for the refusal message.
_OURS: dict[str, str] = {
    "training": "a feature folder written by rank1 extract",
    "scoring": "a scoring feature folder written by extract_for_scoring",
}
#: The context columns of ``stays.parquet``, after the ids, labels and length.
_CONTEXT_COLUMNS = ("age", "gender", "dbsource", "intime", "outtime", "ethnicity")

logger = logging.getLogger(__name__)


class _Steps:
    """Reports pipeline steps to a rich progress display, or stays silent."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.progress = None
        self.timings: dict[str, float] = {}
        self.started = time.perf_counter()

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

    def with_total(self) -> dict[str, float]:
        """The step timings so far and ``"total"``, the wall time since the start."""
        return {**self.timings, "total": round(time.perf_counter() - self.started, 3)}


def _is_feature_folder(folder: Path, purpose: Purpose = "training", task: Task = "ihm") -> bool:
    """Whether ``folder`` is a ``task`` feature folder this code wrote, holding nothing else."""
    names = {entry.name for entry in folder.iterdir()}
    files = FOLDER_FILES if task == "ihm" else TASK_FOLDER_FILES
    if MANIFEST_FILE not in names or not names <= files:
        return False
    # Any schema version: an older or newer folder of ours may be replaced too.
    header = read_manifest_header(folder)
    return header is not None and header.task == MANIFEST_TASK[task] and header.purpose == purpose


def _output_folder(out_dir: str | Path, purpose: Purpose, task: Task = "ihm") -> OutputFolder:
    """The checked output folder of one extraction (refused in one line, before any work)."""
    output = OutputFolder(
        Path(out_dir),
        is_ours=partial(_is_feature_folder, purpose=purpose, task=task),
        what=_OURS[purpose],
        marker=MANIFEST_FILE,
        error=MimicInputError,
    )
    out = output.target
    header = read_manifest_header(out) if out.is_dir() else None
    if header is not None and header.task == MANIFEST_TASK[task] and header.purpose != purpose:
        # Said plainly, rather than "not a feature folder": it is one, for the other use.
        raise MimicInputError(
            f"{out}: output folder holds a {header.purpose[:20]} feature folder; refusing "
            f"to replace it with a {purpose} one (choose another output folder)"
        )
    known = set(MANIFEST_TASK.values())
    if header is not None and header.task in known and header.task != MANIFEST_TASK[task]:
        raise MimicInputError(
            f"{out}: output folder holds the feature folder of task {header.task}; refusing to "
            f"replace it with one of task {MANIFEST_TASK[task]} (choose another output folder)"
        )
    output.check()
    return output


def _check_tables(mimic_dir: Path, names: tuple[str, ...], rules: TableRules) -> dict[str, Path]:
    """Check every table's file and header before any work; return their files."""
    return {name: check_table(mimic_dir, name, rules=rules) for name in names}


def _hash_sources(hasher: ThreadPoolExecutor, paths: dict[str, Path]) -> dict[str, Future]:
    """Start hashing the source tables beside the polars work.

    hashlib releases the GIL on large blocks, so this costs the extraction no time.
    """
    return {name: hasher.submit(file_fingerprint, path) for name, path in paths.items()}


def _read_truth(mimic_dir: Path, *, every_column: bool = False) -> pl.DataFrame | None:
    """Read the generator's planted truth per stay, if the input folder has one.

    Args:
        mimic_dir: The input folder.
        every_column: Keep every ``true_*`` column (the whole-stay tasks' planted truth),
            not only ``true_risk``.
    """
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
    keep = [c for c in truth.columns if c.startswith("true_")] if every_column else ["true_risk"]
    return truth.select("icustay_id", *keep)


def _with_hourly_truth(mimic_dir: Path, samples: pl.DataFrame) -> pl.DataFrame:
    """Decompensation samples with the generator's ``true_decomp_risk``, if it planted one."""
    path = mimic_dir / HOURLY_TRUTH_FILE
    if not path.exists():
        return samples
    schema = {"icustay_id": pl.Int64, "hour": pl.Int32, "true_decomp_risk": pl.Float64}
    try:
        truth = pl.read_csv(path, schema_overrides=schema)
    except pl.exceptions.PolarsError as err:
        raise MimicInputError(f"{path}: cannot read the synthetic hourly truth: {err}") from err
    missing = [column for column in schema if column not in truth.columns]
    if missing:
        raise MimicInputError(f"{path}: column {missing[0]} is missing")
    return samples.join(
        truth.select(list(schema)), on=["icustay_id", "hour"], how="left", maintain_order="left"
    )


def extract(
    mimic_dir: str | Path,
    out_dir: str | Path,
    *,
    task: Task = "ihm",
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    progress: bool = True,
) -> FeatureManifest | TaskManifest:
    """Extract one benchmark task's features from raw MIMIC-III tables.

    Args:
        mimic_dir: Folder with the MIMIC-III tables (``.csv`` or ``.csv.gz``).
        out_dir: Feature folder to write: a new path, an empty folder (filled in place),
            or a feature folder of the same task written by this function holding nothing
            else (replaced). A symbolic link is followed; the folder it points to is written.
        task: ``"ihm"`` (the 48 x 76 grid, :class:`FeatureManifest`) or a whole-stay task,
            ``"decompensation"``, ``"length-of-stay"`` or ``"phenotyping"`` (hourly rows of
            whole stays and the task's samples, :class:`TaskManifest`; see
            :mod:`features.mimic.tasks`).
        seed: Seed of the subject-level split.
        val_fraction: Share of subjects in the validation split.
        test_fraction: Share of subjects in the test split.
        progress: Show a progress display on the terminal.

    Returns:
        The manifest that was written (typed; ``manifest.json`` holds its JSON).

    Raises:
        MimicInputError: For missing or bad input or a refused output folder; nothing is
            written then.
        ValueError: If the split shares are out of range or the task is unknown (before
            anything is read).
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    check_split_fractions(val_fraction, test_fraction)
    mimic_dir = Path(mimic_dir)
    output = _output_folder(out_dir, "training", task)
    paths = _check_tables(mimic_dir, SOURCE_TABLES, TRAINING_RULES)
    with output.writing() as tmp:
        if task == "ihm":
            return _extract_into(mimic_dir, paths, tmp, seed, val_fraction, test_fraction, progress)
        # A whole-stay task alone is extract_all's shared stage with that one task.
        return _extract_all_into(
            mimic_dir, paths, {task: tmp}, seed, val_fraction, test_fraction, progress
        )[task]


@dataclass(frozen=True)
class _Common:
    """What every task folder of one extraction shares: its input, settings and progress."""

    mimic_dir: Path
    fingerprints: dict[str, Future]
    steps: _Steps
    validation: dict[str, int]
    seed: int
    val_fraction: float
    test_fraction: float

    def split_of(self, stays: pl.DataFrame) -> pl.DataFrame:
        """``stays`` with its seeded subject-level ``split`` column; refuses an empty train."""
        assignment = assign_splits(
            stays["subject_id"].to_numpy(),
            seed=self.seed,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
        )
        stays = stays.with_columns(split_column(stays, assignment))
        if not (stays["split"] == "train").any():
            raise MimicInputError(f"{self.mimic_dir}: no stay in the training split")
        return stays

    def split(self, stays: pl.DataFrame) -> Split:
        """The manifest's split record of a folder's stays table."""
        return Split(
            seed=self.seed,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            by="subject_id",
            counts=_split_counts(stays),
        )

    def sources(self, names: tuple[str, ...]) -> dict[str, dict[str, object]]:
        """The fingerprints of the tables ``names`` (waiting for their hashing to end)."""
        return {name: self.fingerprints[name].result() for name in names}


def _extract_into(
    mimic_dir: Path,
    paths: dict[str, Path],
    tmp: Path,
    seed: int,
    val_fraction: float,
    test_fraction: float,
    progress: bool,
) -> FeatureManifest:
    """The body of :func:`extract` for in-hospital mortality: compute it, write to ``tmp``."""
    with ThreadPoolExecutor(max_workers=1) as hasher, _Steps(progress) as steps:
        fingerprints = _hash_sources(hasher, paths)
        with steps.step("cohort: stays, admissions, patients"):
            root, cohort_steps = root_stays(mimic_dir)
            diagnosed = admissions_with_diagnoses(known_diagnoses(mimic_dir))
            task = _ihm_candidates(root, diagnosed, cohort_steps)
        with steps.step("events: validate and cut the first 48 h"):
            events, validation = window_events(mimic_dir, root, task, hours=HOURS)
            task = _with_event_counts(task, events)
            cohort_steps.append(_count("events_in_first_48h", task))
            warnings = _unobserved_variables(events, task)
        if task.height == 0:
            raise MimicInputError(f"{mimic_dir}: no ICU stay is left for the task")
        with steps.step("grid: hourly bins, forward fill, masks"):
            grid = _grid(events, task)
        common = _Common(
            mimic_dir, fingerprints, steps, validation, seed, val_fraction, test_fraction
        )
        return _finish_ihm(common, tmp, task, grid, cohort_steps, warnings)


def extract_all(
    mimic_dir: str | Path,
    out_root: str | Path,
    *,
    tasks: tuple[Task, ...] = TASKS,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    progress: bool = True,
) -> dict[str, FeatureManifest | TaskManifest]:
    """Extract several benchmark tasks from one read of the tables: ``out_root/<task>/``.

    The shared stage (cohort, event validation, whole-stay events, hourly rows) runs once
    for all tasks; each task folder is then exactly what :func:`extract` writes for that
    task alone (in-hospital mortality's grid is the first 48 hourly rows of its stays).

    Args:
        mimic_dir: Folder with the MIMIC-III tables.
        out_root: Folder to write the task folders into (created if missing); each
            ``out_root/<task>`` is checked as :func:`extract` checks its output folder.
        tasks: The tasks to write (default: all four).
        seed: Seed of the subject-level split (each task splits its own stays' subjects).
        val_fraction: Share of subjects in the validation split.
        test_fraction: Share of subjects in the test split.
        progress: Show a progress display on the terminal.

    Returns:
        Each task's manifest, by task.

    Raises:
        MimicInputError: For missing or bad input or a refused output folder; no task
            folder is written then.
        ValueError: If a task is unknown or the split shares are out of range.
    """
    unknown = [task for task in tasks if task not in TASKS]
    if unknown or not tasks:
        raise ValueError(f"tasks: expected some of {', '.join(TASKS)}, got {list(tasks)!r}")
    check_split_fractions(val_fraction, test_fraction)
    mimic_dir = Path(mimic_dir)
    outputs = {task: _output_folder(Path(out_root) / task, "training", task) for task in tasks}
    paths = _check_tables(mimic_dir, SOURCE_TABLES, TRAINING_RULES)
    with ExitStack() as stack:
        tmps = {task: stack.enter_context(output.writing()) for task, output in outputs.items()}
        return _extract_all_into(
            mimic_dir, paths, tmps, seed, val_fraction, test_fraction, progress
        )


def _extract_all_into(
    mimic_dir: Path,
    paths: dict[str, Path],
    tmps: dict[str, Path],
    seed: int,
    val_fraction: float,
    test_fraction: float,
    progress: bool,
) -> dict[str, FeatureManifest | TaskManifest]:
    """The body of :func:`extract_all`: the shared stage once, then each task's folder."""
    whole_tasks = [task for task in tmps if task != "ihm"]
    with ThreadPoolExecutor(max_workers=1) as hasher, _Steps(progress) as steps:
        fingerprints = _hash_sources(hasher, paths)
        with steps.step("cohort: stays, admissions, patients, diagnoses"):
            root, root_steps = root_stays(mimic_dir)
            diagnoses = known_diagnoses(mimic_dir)
            ihm_steps, whole_steps = list(root_steps), list(root_steps)
            ihm = _ihm_candidates(root, admissions_with_diagnoses(diagnoses), ihm_steps)
            whole = _whole_stay_cohort(root, diagnoses, whole_steps) if whole_tasks else None
            # Every candidate of any task (in-hospital mortality's stays are whole-stay
            # candidates of 48 h or more); each task's own rules are applied to the result.
            union = _whole_stay_cohort(root, diagnoses, [])
            if not whole_tasks:
                union = union.join(ihm.select("icustay_id"), on="icustay_id", how="semi")
        with steps.step("events: validate and cut whole stays"):
            union, events, validation = _whole_stay_events(mimic_dir, root, union)
        if union.height == 0:
            raise MimicInputError(f"{mimic_dir}: no ICU stay is left for the task")
        # What in-hospital mortality and the warnings need from the events, taken before the
        # hourly rows are built, so that the event frame is freed first (it is, with the
        # rows, the largest thing the extraction holds).
        ihm_task = ihm_warnings = whole_stays = whole_warnings = None
        if "ihm" in tmps:
            first = events.filter(pl.col("bin") < HOURS)
            in_union = ihm.join(union.select("icustay_id"), on="icustay_id", how="semi")
            ihm_task = _with_event_counts(in_union, first)
            ihm_steps.append(_count("events_in_first_48h", ihm_task))
            ihm_warnings = _unobserved_variables(first, ihm_task)
            del first
            if ihm_task.height == 0:
                raise MimicInputError(f"{mimic_dir}: no ICU stay is left for the task")
        if whole is not None:
            whole_stays = union.join(whole.select("icustay_id"), on="icustay_id", how="semi")
            whole_steps.append(_count("events_in_stay", whole_stays))
            whole_warnings = _unobserved_variables(
                events.filter(pl.col("stay").is_in(whole_stays["icustay_id"].implode())),
                whole_stays,
                "in any whole stay",
            )
        with steps.step("hourly rows: bins, forward fill, masks"):
            bins = last_per_bin(events)
            del events
            hourly, offsets = build_hourly(bins, union["icustay_id"].to_numpy(), _stay_hours(union))
            del bins
        common = _Common(
            mimic_dir, fingerprints, steps, validation, seed, val_fraction, test_fraction
        )
        manifests: dict[str, FeatureManifest | TaskManifest] = {}
        if ihm_task is not None:
            rows = _rows_of(union, offsets, ihm_task, HOURS)
            grid = hourly[rows].reshape(ihm_task.height, HOURS, hourly.shape[1])
            manifests["ihm"] = _finish_ihm(
                common, tmps["ihm"], ihm_task, grid, ihm_steps, ihm_warnings, "ihm: "
            )
            del grid, rows
        if whole_stays is not None:
            if whole_stays.height != union.height:
                rows = _rows_of(union, offsets, whole_stays, None)
                hourly, offsets = hourly[rows], stay_offsets(_stay_hours(whole_stays))
            shared = _whole_stays(common, whole_stays, hourly, offsets, "whole stays: ")
            for task in whole_tasks:
                manifests[task] = _finish_whole_stay(
                    common,
                    tmps[task],
                    task,
                    shared,
                    diagnoses,
                    list(whole_steps),
                    whole_warnings,
                    f"{task}: ",
                )
    return manifests


def _rows_of(
    union: pl.DataFrame, offsets: np.ndarray, stays: pl.DataFrame, hours: int | None
) -> np.ndarray:
    """Indices of the hourly rows of ``stays`` (a subset of ``union``, in its order).

    Args:
        union: The stays the hourly rows were built for.
        offsets: Their offsets.
        stays: Stays of ``union`` to take, in ``union``'s order.
        hours: Take each stay's first ``hours`` rows; None: all of them.
    """
    position = {stay: i for i, stay in enumerate(union["icustay_id"].to_list())}
    picked = np.array([position[s] for s in stays["icustay_id"].to_list()], dtype=np.int64)
    if len(picked) > 1 and np.any(np.diff(picked) <= 0):
        raise AssertionError("task stays are not in the order of the shared stays")
    lengths = np.diff(offsets)[picked] if hours is None else np.full(len(picked), hours)
    starts = np.repeat(offsets[picked], lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return starts + within


def _ihm_candidates(
    root: pl.DataFrame, diagnosed: pl.DataFrame, cohort_steps: list[dict[str, object]]
) -> pl.DataFrame:
    """The in-hospital-mortality stays before the event rule: LOS >= 48 h, with diagnoses."""
    task = root.filter(pl.col("los").is_not_null() & (pl.col("los") * 24.0 >= HOURS - EPS))
    cohort_steps.append(_count("length_of_stay_48h", task))
    task = task.join(diagnosed, on=["subject_id", "hadm_id"], how="semi")
    cohort_steps.append(_count("with_diagnoses", task))
    return task


def _finish_ihm(
    common: _Common,
    tmp: Path,
    task: pl.DataFrame,
    grid: np.ndarray,
    cohort_steps: list[dict[str, object]],
    warnings: list[str],
    label: str = "",
) -> FeatureManifest:
    """Splits, normaliser, stays table and manifest of an in-hospital-mortality folder."""
    steps = common.steps
    with steps.step(f"{label}splits and normaliser"):
        task = common.split_of(task)
        normaliser = fit_normaliser(grid, np.flatnonzero((task["split"] == "train").to_numpy()))
        stays = _stays_table(
            task,
            _read_truth(common.mimic_dir),
            [pl.col("label").cast(pl.Int32), pl.col("split")],
            [(pl.col("los") * 24.0).alias("length_hours")],
        )
    with steps.step(f"{label}write feature folder"):
        sources = common.sources(SOURCE_TABLES)
        _write_data(tmp, stays, grid)
        manifest = _manifest(
            common.mimic_dir,
            stays,
            sources=sources,
            cohort_steps=cohort_steps,
            validation=common.validation,
            warnings=warnings,
            # Timed before this last step ends, as ever: its own time is only in the total.
            timings=steps.with_total(),
            positives=int(stays["label"].sum()),
            split=common.split(stays),
            normaliser=Normaliser(fitted_on="train", **normaliser),
        )
        manifest.write(tmp)
    return manifest


def _whole_stay_cohort(
    root: pl.DataFrame, diagnoses: pl.DataFrame, cohort_steps: list[dict[str, object]]
) -> pl.DataFrame:
    """The whole-stay tasks' stays before the event rule: known diagnoses, LOS present.

    Returns:
        The stays with ``length_hours`` (the LOS in hours) and ``death_hours`` (hours from
        INTIME to DEATHTIME, or null).
    """
    admitted = admissions_with_diagnoses(diagnoses)
    stays = root.join(admitted, on=["subject_id", "hadm_id"], how="semi")
    cohort_steps.append(_count("with_diagnoses", stays))
    stays = stays.filter(pl.col("los").is_not_null())
    cohort_steps.append(_count("length_of_stay_known", stays))
    death = (pl.col("deathtime") - pl.col("intime")).dt.total_microseconds() / 3.6e9
    return stays.with_columns(length_hours=pl.col("los") * 24.0, death_hours=death)


def _whole_stay_events(
    mimic_dir: Path, root: pl.DataFrame, stays: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """Events of whole stays; the stays that have one, with ``first_event_hours``.

    Returns:
        ``(stays, events, validation)``: ``stays`` keeps the stays with an event in
        ``(-1e-6, LOS + 1e-6)`` hours, adding ``n_events`` and ``first_event_hours``.
    """
    whole = stays.with_columns(window_hours=pl.col("length_hours"))
    events, validation = window_events(mimic_dir, root, whole, hours=None, with_hours=True)
    return _with_first_events(stays, events), events.drop("hours"), validation


def _hourly_rows(stays: pl.DataFrame, events: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The hourly rows of whole stays, laid end to end in ``stays``' order, and offsets."""
    lengths = _stay_hours(stays)
    return build_hourly(last_per_bin(events), stays["icustay_id"].to_numpy(), lengths)


def _with_first_events(stays: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
    """The stays with an event, with ``n_events`` and ``first_event_hours`` (events' ``hours``)."""
    first = events.group_by("stay").agg(first_event_hours=pl.col("hours").min())
    stays = _with_event_counts(stays, events)
    return stays.join(first, left_on="icustay_id", right_on="stay", how="left")


def _stay_hours(stays: pl.DataFrame) -> np.ndarray:
    """Hourly rows of each whole stay: the benchmark discretizer's int(LOS + 1 - eps), >= 1."""
    hours = np.floor(stays["length_hours"].to_numpy() + 1.0 - EPS).astype(np.int64)
    return np.maximum(hours, 1)


def _task_samples(
    task: SequenceTask, stays: pl.DataFrame, diagnoses: pl.DataFrame
) -> tuple[pl.DataFrame, int | tuple[int, ...] | None, tuple[str, ...]]:
    """The task's samples, its positives and its label names."""
    if task == "phenotyping":
        samples = phenotype_labels(diagnoses, stays)
        names = phenotype_names()
        return samples, tuple(int(samples[name].sum()) for name in names), names
    samples = hourly_samples(stays, task)
    if task == "decompensation":
        return samples, int(samples["label"].sum()), ("death within 24 h",)
    return samples, None, ("remaining length of stay",)


@dataclass(frozen=True)
class _WholeStays:
    """What the whole-stay task folders of one extraction share: stays, rows, statistics.

    Attributes:
        stays: The task stays with their split.
        table: Their ``stays.parquet`` table.
        hourly: ``(rows, 76)`` hourly rows of ``stays`` laid end to end in their order.
        offsets: ``(stays + 1,)`` their offsets.
        normaliser: The normaliser fitted on every hour of the training stays.
        written: The first ``hourly.npy`` written, which the other folders link to.
    """

    stays: pl.DataFrame
    table: pl.DataFrame
    hourly: np.ndarray
    offsets: np.ndarray
    normaliser: dict[str, list[float]]
    written: list[Path]


def _whole_stays(
    common: _Common, stays: pl.DataFrame, hourly: np.ndarray, offsets: np.ndarray, label: str = ""
) -> _WholeStays:
    """Splits, normaliser and stays table of the whole-stay tasks (the same for all three)."""
    lengths = np.diff(offsets)
    with common.steps.step(f"{label}splits and normaliser"):
        stays = common.split_of(stays)
        in_train = (stays["split"] == "train").to_numpy()
        normaliser = fit_normaliser(hourly, np.flatnonzero(np.repeat(in_train, lengths)))
        table = _stays_table(
            stays.with_columns(hours=pl.Series(lengths, dtype=pl.Int32)),
            _read_truth(common.mimic_dir, every_column=True),
            [pl.col("label").cast(pl.Int32), pl.col("split")],
            [
                pl.col("length_hours"),
                pl.col("hours"),
                pl.Series("offset", offsets[:-1], dtype=pl.Int64),
                pl.col("first_event_hours"),
                pl.col("death_hours"),
            ],
        )
    return _WholeStays(stays, table, hourly, offsets, normaliser, [])


def _finish_whole_stay(
    common: _Common,
    tmp: Path,
    task: SequenceTask,
    shared: _WholeStays,
    diagnoses: pl.DataFrame,
    cohort_steps: list[dict[str, object]],
    warnings: list[str],
    label: str = "",
) -> TaskManifest:
    """The samples and manifest of one whole-stay task folder, and its data files.

    The hourly rows are written once per extraction: a second folder gets a hard link to
    the first one's ``hourly.npy`` (a copy where the file system cannot link).
    """
    steps = common.steps
    with steps.step(f"{task} samples"):
        samples, positives, labels = _task_samples(task, shared.stays, diagnoses)
        if task == "decompensation":
            samples = _with_hourly_truth(common.mimic_dir, samples)
    with steps.step(f"{label}write feature folder"):
        sources = common.sources(SOURCE_TABLES)
        _write_task_data(tmp, shared.table, shared.hourly, samples, shared.written)
        manifest = _task_manifest(
            common.mimic_dir,
            task,
            sources,
            cohort_steps,
            common.validation,
            shared.table,
            shared.offsets,
            samples,
            warnings,
            steps.with_total(),
            positives=positives,
            labels=labels,
            split=common.split(shared.table),
            normaliser=Normaliser(fitted_on="train", **shared.normaliser),
        )
        manifest.write(tmp)
    return manifest


def _shared_manifest_fields(
    mimic_dir: Path,
    sources: dict[str, dict[str, object]],
    cohort_steps: list[dict[str, object]],
    validation: dict[str, int],
) -> dict[str, object]:
    """The manifest fields every feature folder has: version, creation, source, cohort."""
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": Source(
            dir=str(mimic_dir.resolve()),
            tables={name: SourceTable(**found) for name, found in sources.items()},
        ),
        "cohort": Cohort(
            steps=tuple(CohortStep(**step) for step in cohort_steps),
            event_validation=EventValidation(**validation),
        ),
    }


def _task_manifest(
    mimic_dir: Path,
    task: SequenceTask,
    sources: dict[str, dict[str, object]],
    cohort_steps: list[dict[str, object]],
    validation: dict[str, int],
    table: pl.DataFrame,
    offsets: np.ndarray,
    samples: pl.DataFrame,
    warnings: list[str],
    timings: dict[str, float],
    **purpose_fields: object,
) -> TaskManifest:
    """The manifest of a whole-stay folder: the fields of both purposes, plus its own."""
    return TaskManifest(
        task=task,
        **_shared_manifest_fields(mimic_dir, sources, cohort_steps, validation),
        stays=table.height,
        hourly_rows=int(offsets[-1]),
        samples=samples.height,
        channels=tuple(channel_names()),
        files=TaskFiles(stays=STAYS_FILE, hourly=HOURLY_FILE, samples=SAMPLES_FILE),
        truth_columns=tuple(c for c in table.columns if c.startswith("true_")),
        warnings=tuple(warnings),
        timings_s=timings,
        **purpose_fields,
    )


def extract_for_scoring(
    mimic_dir: str | Path,
    out_dir: str | Path,
    *,
    task: Task = "ihm",
    as_of: datetime | None = None,
    progress: bool = True,
) -> FeatureManifest:
    """Extract the 48-hour grids of new patients, to be scored by a trained model.

    The cohort rules and the grid are those of :func:`extract`, except as the module
    docstring's "Scoring mode" says: no outcome is needed, a stay still in the ICU counts
    once it is 48 hours old at ``as_of``, and the "with diagnoses" rule is not applied.

    Args:
        mimic_dir: Folder with the MIMIC-III tables (``.csv`` or ``.csv.gz``); DIAGNOSES_ICD
            is not read, DEATHTIME and DOD may be absent.
        out_dir: Feature folder to write: a new path, an empty folder (filled in place),
            or a scoring folder written by this function holding nothing else (replaced).
            A training feature folder is refused.
        task: ``"ihm"`` (the 48-hour grids) or a whole-stay task (every hour so far of
            every stay; see :func:`_extract_task_for_scoring_into`).
        as_of: The time the export was taken, in the export's (naive) clock: a stay still
            in the ICU counts when ``as_of - INTIME >= 48 h``. None: the newest event time
            of the 17 variables among the cohort's patients.
        progress: Show a progress display on the terminal.

    Returns:
        The manifest that was written (``purpose="scoring"``; ``as_of`` and ``skipped``
        set; no ``split``, ``normaliser`` or ``positives``).

    Raises:
        MimicInputError: For missing or bad input, a refused output folder, or when no
            stay reaches 48 hours with an event (the message counts why stays were
            skipped); nothing is written then.
        ValueError: If ``as_of`` has a time zone (before anything is read).
    """
    if as_of is not None and as_of.tzinfo is not None:
        raise ValueError(
            "as_of must be a naive datetime in the export's clock "
            "(MIMIC-III times carry no time zone)"
        )
    if task not in TASKS:
        raise ValueError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    mimic_dir = Path(mimic_dir)
    output = _output_folder(out_dir, "scoring", task)
    paths = _check_tables(mimic_dir, SCORING_SOURCE_TABLES, SCORING_RULES)
    with output.writing() as tmp:
        if task != "ihm":
            return _extract_task_for_scoring_into(mimic_dir, paths, tmp, task, as_of, progress)
        return _extract_for_scoring_into(mimic_dir, paths, tmp, as_of, progress)


#: The window of a stay still in the ICU while ``as_of`` is unknown: ten years, i.e. all
#: of it; the events are cut to ``as_of`` once the event pass has found it.
_OPEN_WINDOW_HOURS = 24.0 * 365 * 10


def _extract_task_for_scoring_into(
    mimic_dir: Path,
    paths: dict[str, Path],
    tmp: Path,
    task: SequenceTask,
    as_of: datetime | None,
    progress: bool,
) -> TaskManifest:
    """:func:`extract_for_scoring` for a whole-stay task: every hour of every stay so far.

    The training rules apply with the scoring mode's differences (see the module
    docstring): no outcome and no diagnosis is read, and a stay still in the ICU lasts
    until ``as_of``. Its samples are the hours a prediction is made at: for
    decompensation and length of stay every ``t > 4`` after the first event up to the
    stay's length so far (no death is known), for phenotyping one per stay.
    """
    with ThreadPoolExecutor(max_workers=1) as hasher, _Steps(progress) as steps:
        fingerprints = _hash_sources(hasher, paths)
        with steps.step("cohort: stays, admissions, patients"):
            root, cohort_steps = root_stays(mimic_dir, rules=SCORING_RULES)
            root = _with_length(root, as_of)
            window = pl.col("length_hours").fill_null(_OPEN_WINDOW_HOURS)
            candidates = root.filter(pl.col("in_icu") | pl.col("length_hours").is_not_null())
            candidates = candidates.with_columns(window_hours=window)
        with steps.step("events: validate and cut whole stays"):
            if as_of is None:
                events, validation, as_of = window_events_and_newest(
                    mimic_dir, root, candidates, hours=None, with_hours=True
                )
                if as_of is None:
                    raise MimicInputError(f"{mimic_dir}: no event of the 17 variables to score")
                root = _with_length(root, as_of)
            else:
                events, validation = window_events(
                    mimic_dir, root, candidates, hours=None, open_ended=True, with_hours=True
                )
            stays = root.filter(pl.col("length_hours").is_not_null())
            cohort_steps.append(_count("length_of_stay_known", stays))
            length = stays.select(pl.col("icustay_id").alias("stay"), "length_hours")
            events = events.join(length, on="stay", how="inner").filter(
                pl.col("hours") < pl.col("length_hours") + EPS
            )
            stays = _with_first_events(stays, events)
            events = events.drop("hours", "length_hours")
            cohort_steps.append(_count("events_in_stay", stays))
            warnings = _unobserved_variables(events, stays, "in any whole stay")
        if stays.height == 0:
            raise MimicInputError(f"{mimic_dir}: no ICU stay with an event to score")
        with steps.step("hourly rows: bins, forward fill, masks"):
            # hours < length + eps puts every bin below the stay's int(length + 1 - eps).
            hourly, offsets = _hourly_rows(stays, events)
            lengths = np.diff(offsets)
            del events
        with steps.step(f"{task} samples"):
            if task == "phenotyping":
                samples = stays.select("icustay_id")
            else:
                no_death = stays.with_columns(death_hours=pl.lit(None, pl.Float64), label=0)
                samples = hourly_samples(no_death, "length-of-stay").select("icustay_id", "hour")
            table = _stays_table(
                stays.with_columns(hours=pl.Series(lengths, dtype=pl.Int32)),
                _read_truth(mimic_dir, every_column=True),
                [],
                [
                    pl.col("length_hours"),
                    pl.col("in_icu"),
                    pl.col("hours"),
                    pl.Series("offset", offsets[:-1], dtype=pl.Int64),
                    pl.col("first_event_hours"),
                ],
            )
        with steps.step("write feature folder"):
            sources = {name: future.result() for name, future in fingerprints.items()}
            _write_task_data(tmp, table, hourly, samples)
            manifest = _task_manifest(
                mimic_dir,
                task,
                sources,
                cohort_steps,
                validation,
                table,
                offsets,
                samples,
                warnings,
                steps.with_total(),
                purpose="scoring",
                positives=None,
                labels=phenotype_names() if task == "phenotyping" else (),
                as_of=as_of,
            )
            manifest.write(tmp)
    return manifest


def _extract_for_scoring_into(
    mimic_dir: Path, paths: dict[str, Path], tmp: Path, as_of: datetime | None, progress: bool
) -> FeatureManifest:
    """The body of :func:`extract_for_scoring`: compute everything and write it to ``tmp``."""
    with ThreadPoolExecutor(max_workers=1) as hasher, _Steps(progress) as steps:
        fingerprints = _hash_sources(hasher, paths)
        with steps.step("cohort: stays, admissions, patients"):
            root, cohort_steps = root_stays(mimic_dir, rules=SCORING_RULES)
            root = _with_length(root, as_of)
            # Without an as_of yet, every stay still in the ICU is a candidate; the 48-hour
            # rule is applied to them once the event pass has found the newest event.
            waiting = pl.col("in_icu") if as_of is None else pl.lit(False)
            candidates = root.filter(_reached() | waiting)
            if candidates.height == 0:
                raise _nothing_left(mimic_dir, as_of, _skipped(root, root.clear()))
        with steps.step("events: validate and cut the first 48 h"):
            if as_of is None:
                events, validation, as_of = window_events_and_newest(
                    mimic_dir, root, candidates, hours=HOURS
                )
                root = _with_length(root, as_of)
            else:
                events, validation = window_events(
                    mimic_dir, root, candidates, hours=HOURS, open_ended=True
                )
            reached = root.filter(_reached())
            cohort_steps.append(_count("length_of_stay_48h", reached))
            task = _with_event_counts(reached, events)
            cohort_steps.append(_count("events_in_first_48h", task))
            skipped = _skipped(root, task)
            # Candidates in the ICU that turned out under 48 h leave their events behind.
            events = events.filter(pl.col("stay").is_in(task["icustay_id"].implode()))
            warnings = _unobserved_variables(events, task)
        if task.height == 0:
            raise _nothing_left(mimic_dir, as_of, skipped)
        with steps.step("grid: hourly bins, forward fill, masks"):
            grid = _grid(events, task)
            stays = _stays_table(
                task, _read_truth(mimic_dir), [], [pl.col("length_hours"), pl.col("in_icu")]
            )
        with steps.step("write feature folder"):
            sources = {name: future.result() for name, future in fingerprints.items()}
            _write_data(tmp, stays, grid)
            manifest = _manifest(
                mimic_dir,
                stays,
                sources=sources,
                cohort_steps=cohort_steps,
                validation=validation,
                warnings=warnings,
                timings=steps.with_total(),
                purpose="scoring",
                as_of=as_of,
                skipped=skipped,
            )
            manifest.write(tmp)
    return manifest


def _with_length(root: pl.DataFrame, as_of: datetime | None) -> pl.DataFrame:
    """Add ``in_icu`` (no OUTTIME yet) and ``length_hours`` (LOS x 24, or up to ``as_of``).

    A stay that left the ICU is measured by its LOS, exactly as in training, so the two
    modes agree on it; one still in the ICU by the hours from INTIME to ``as_of`` (null
    while ``as_of`` is not known yet).
    """
    in_icu = pl.col("outtime").is_null()
    if as_of is None:
        so_far = pl.lit(None, pl.Float64)
    else:
        so_far = (pl.lit(as_of, DATETIME_US) - pl.col("intime")).dt.total_microseconds() / 3.6e9
    return root.with_columns(
        in_icu=in_icu,
        length_hours=pl.when(in_icu).then(so_far).otherwise(pl.col("los") * 24.0),
    )


def _reached() -> pl.Expr:
    """Whether a stay has lasted 48 hours (the training rule, with the same tolerance)."""
    return pl.col("length_hours").is_not_null() & (pl.col("length_hours") >= HOURS - EPS)


def _skipped(root: pl.DataFrame, task: pl.DataFrame) -> SkippedStays:
    """Count the adult stays of ``root`` that are not in ``task``, by reason."""
    short = root.filter(~_reached())
    reached = root.height - short.height
    return SkippedStays(
        discharged_under_48h=short.filter(~pl.col("in_icu")).height,
        in_icu_under_48h=short.filter(pl.col("in_icu")).height,
        no_event_in_first_48h=reached - task.height,
    )


def _nothing_left(
    mimic_dir: Path, as_of: datetime | None, skipped: SkippedStays
) -> MimicInputError:
    """The one-line error for an export in which no stay can be scored, with the counts."""
    # Without an as_of no stay is in the ICU (or no event was found): nothing to date.
    when = f" as of {as_of:%Y-%m-%d %H:%M:%S}" if as_of is not None else ""
    return MimicInputError(
        f"{mimic_dir}: no ICU stay reaches {HOURS} hours with an event{when}: of the adult "
        f"stays, {skipped.discharged_under_48h} left the ICU under {HOURS} h, "
        f"{skipped.in_icu_under_48h} are still in the ICU under {HOURS} h and "
        f"{skipped.no_event_in_first_48h} have no event in the first {HOURS} h"
    )


def _with_event_counts(task: pl.DataFrame, events: pl.DataFrame) -> pl.DataFrame:
    """Keep the stays with an event in their window, with ``n_events``, in folder order."""
    per_stay = events.group_by("stay").agg(n_events=pl.len())
    task = task.join(per_stay, left_on="icustay_id", right_on="stay", how="inner")
    return task.sort("subject_id", "intime", "icustay_id")


def _grid(events: pl.DataFrame, task: pl.DataFrame) -> np.ndarray:
    """The raw grid of the task's stays, in the task's row order."""
    bins = last_per_bin(events)
    return build_grid(bins, task["icustay_id"].to_numpy(), hours=HOURS)


def _write_data(tmp: Path, stays: pl.DataFrame, grid: np.ndarray) -> None:
    """Write ``stays.parquet`` and ``grid.npy`` owner-only into the temporary folder."""
    with create_private_file(tmp / STAYS_FILE) as handle:
        stays.write_parquet(handle)
    with create_private_file(tmp / GRID_FILE) as handle:
        np.save(handle, grid, allow_pickle=False)


def _write_task_data(
    tmp: Path,
    stays: pl.DataFrame,
    hourly: np.ndarray,
    samples: pl.DataFrame,
    written: list[Path] | None = None,
) -> None:
    """Write ``stays.parquet``, ``hourly.npy`` and ``samples.parquet`` owner-only.

    With ``written`` holding an ``hourly.npy`` of the same rows (another task folder of this
    extraction), that file is hard-linked instead of written again; a link that fails (the
    folders on different file systems) falls back to writing. The first file written is
    appended to ``written``.
    """
    with create_private_file(tmp / STAYS_FILE) as handle:
        stays.write_parquet(handle)
    if written:
        try:
            os.link(written[0], tmp / HOURLY_FILE)
        except OSError:
            written = None
    if not written:
        with create_private_file(tmp / HOURLY_FILE) as handle:
            np.save(handle, hourly, allow_pickle=False)
        if written is not None:
            written.append(tmp / HOURLY_FILE)
    with create_private_file(tmp / SAMPLES_FILE) as handle:
        samples.write_parquet(handle)


def _unobserved_variables(
    events: pl.DataFrame, task: pl.DataFrame, window: str = f"in the first {HOURS} h of any stay"
) -> list[str]:
    """Warn (log and return) about variables never observed in any task stay's window."""
    from features.mimic.variables import load_variables

    in_task = pl.col("stay").is_in(task["icustay_id"].implode())
    kept = events.filter(in_task & pl.col("val").is_not_null())
    seen = set(kept["var"].unique().to_list())
    warnings = [
        f"variable {variable.channel!r} is never observed {window}; "
        "its grid columns hold only its normal value"
        for index, variable in enumerate(load_variables())
        if index not in seen
    ]
    for warning in warnings:
        logger.warning(warning)
    return warnings


def _count(step: str, frame: pl.DataFrame) -> dict[str, object]:
    return {"step": step, "stays": frame.height, "subjects": frame["subject_id"].n_unique()}


def _stays_table(
    task: pl.DataFrame,
    truth: pl.DataFrame | None,
    labels: list[pl.Expr],
    length: list[pl.Expr],
) -> pl.DataFrame:
    """One row per stay: ids, then ``labels`` (training) and ``length``, then the context."""
    stays = task.select(
        "subject_id",
        "hadm_id",
        "icustay_id",
        *labels,
        *length,
        *_CONTEXT_COLUMNS,
        pl.col("n_events").cast(pl.Int64),
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
    warnings: list[str],
    timings: dict[str, float],
    **purpose_fields: object,
) -> FeatureManifest:
    """The manifest's fields common to both purposes, plus that purpose's own."""
    return FeatureManifest(
        task=TASK,
        **_shared_manifest_fields(mimic_dir, sources, cohort_steps, validation),
        stays=stays.height,
        hours=HOURS,
        channels=tuple(channel_names()),
        files=FolderFiles(stays=STAYS_FILE, grid=GRID_FILE),
        has_true_risk="true_risk" in stays.columns,
        warnings=tuple(warnings),
        timings_s=timings,
        **purpose_fields,
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
