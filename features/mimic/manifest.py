"""The typed ``manifest.json`` of a feature folder: model, reader, writer, is-current check.

:class:`FeatureManifest` describes exactly the JSON that :func:`features.mimic.extract.extract`
writes (schema version 1): the source tables with their sizes and sha256 hashes, the count
at every cohort step, the event-validation counts, the split settings and counts, the
channel names, the normaliser fitted on the training split, warnings and timings. Every
part is a frozen pydantic model that forbids unknown keys, so code reads typed attributes
instead of the folder's private layout, and a manifest that does not match is refused when
it is read, in one line naming the file and the field.

A folder is written for one ``purpose``: ``"training"`` (:func:`features.mimic.extract.extract`:
labels, splits and the normaliser fitted on train) or ``"scoring"``
(:func:`features.mimic.extract.extract_for_scoring`: new patients, no outcome, so no
positives, splits or normaliser; instead the ``as_of`` time and the stays ``skipped``).
A validator enforces that each purpose carries exactly its own fields.

Folders written before ``warnings`` or ``purpose`` was added to the manifest (same schema
version) still load: with no warnings, and as training folders (which they are).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from features.io import write_private_text
from features.mimic.tables import EVENT_TABLES, MimicInputError, file_fingerprint, table_path

SCHEMA_VERSION = 1
TASK = "in-hospital-mortality"
#: The raw tables an extraction reads, in the order the manifest lists them.
SOURCE_TABLES = (
    "PATIENTS",
    "ADMISSIONS",
    "ICUSTAYS",
    "DIAGNOSES_ICD",
    "D_ICD_DIAGNOSES",
    *EVENT_TABLES,
)
#: The raw tables a scoring extraction reads: no diagnoses (codes come at discharge).
SCORING_SOURCE_TABLES = tuple(
    name for name in SOURCE_TABLES if name not in ("DIAGNOSES_ICD", "D_ICD_DIAGNOSES")
)
STAYS_FILE = "stays.parquet"
GRID_FILE = "grid.npy"
HOURLY_FILE = "hourly.npy"
SAMPLES_FILE = "samples.parquet"
MANIFEST_FILE = "manifest.json"
#: The tasks of whole-stay (task) folders, as ``manifest.json`` names them.
WholeStayTask = Literal["decompensation", "length-of-stay", "phenotyping"]

#: The longest schema-version value an error message quotes.
_QUOTED_CHARS = 20

Purpose = Literal["training", "scoring"]


class FeatureFolderError(ValueError):
    """A feature folder is missing a file or its files do not agree."""


class _Part(BaseModel):
    """A frozen part of the manifest that refuses keys it does not know."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceTable(_Part):
    """One raw table as it was when extracted (``features.mimic.tables.file_fingerprint``)."""

    file: str
    bytes: int
    sha256: str


class Source(_Part):
    """Where the raw tables came from.

    Attributes:
        dir: The resolved input folder.
        tables: Per table name (``SOURCE_TABLES``), its file, size and hash.
    """

    dir: str
    tables: dict[str, SourceTable]


class CohortStep(_Part):
    """The cohort after one selection step (mimic3-benchmarks order)."""

    step: str
    stays: int
    subjects: int


class EventValidation(_Part):
    """Event counts at each rule of the benchmark's ``validate_events``."""

    n_events: int
    empty_hadm: int
    no_hadm_in_stay: int
    no_icustay: int
    recovered: int
    icustay_missing_in_stays: int
    kept: int


class Cohort(_Part):
    """The cohort steps, first to last, and the event-validation counts."""

    steps: tuple[CohortStep, ...]
    event_validation: EventValidation


class SplitCount(_Part):
    """Size of one split."""

    stays: int
    subjects: int
    positives: int


class SplitCounts(_Part):
    """Size of each split."""

    train: SplitCount
    val: SplitCount
    test: SplitCount


class Split(_Part):
    """The subject-level split: its settings and the resulting counts."""

    seed: int
    val_fraction: float
    test_fraction: float
    by: Literal["subject_id"]
    counts: SplitCounts


class Normaliser(_Part):
    """Per-channel statistics fitted on the training split.

    Columns that are not z-scored (one-hot and mask columns) have mean 0 and std 1, so
    applying the statistics to every column is always correct.
    """

    fitted_on: Literal["train"]
    means: tuple[float, ...]
    stds: tuple[float, ...]
    normalised: tuple[bool, ...]


class SkippedStays(_Part):
    """Adult stays a scoring folder leaves out, by reason (cohort-level counts only).

    Attributes:
        discharged_under_48h: Left the ICU before 48 hours (or has no recorded LOS).
        in_icu_under_48h: Still in the ICU, admitted less than 48 hours before ``as_of``.
        no_event_in_first_48h: Reached 48 hours but has no event of the 17 variables in
            its first 48 hours.
    """

    discharged_under_48h: int
    in_icu_under_48h: int
    no_event_in_first_48h: int


class FolderFiles(_Part):
    """The data files of the folder beside the manifest."""

    stays: Literal[STAYS_FILE]
    grid: Literal[GRID_FILE]


class ManifestHeader(BaseModel):
    """The fields that tell a feature folder this code wrote, of any schema version.

    Only these are read (everything else is ignored), so an older or newer folder of
    ours is still recognised, e.g. to be replaced by a fresh extraction.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int
    task: str
    # A str, not a Purpose: a newer purpose is still read (and is then no purpose of ours).
    purpose: str = "training"
    # Names of the folder's data files (in-hospital mortality: stays and grid; the whole-stay
    # tasks: stays, hourly and samples).
    files: dict[str, str]


class FeatureManifest(_Part):
    """The ``manifest.json`` of a feature folder, field for field.

    Attributes:
        schema_version: Layout version of the folder (:data:`SCHEMA_VERSION`).
        task: Always :data:`TASK`.
        purpose: ``"training"`` or ``"scoring"`` (see the module docstring).
        created: When the folder was written (ISO 8601, UTC, seconds).
        source: The raw tables it was extracted from.
        cohort: Cohort steps and event-validation counts.
        stays: Stays in the folder.
        positives: Stays that died in hospital (training only).
        hours: Hours of the grid.
        split: Split settings and counts (training only).
        channels: The grid's column names.
        normaliser: Statistics applied by :func:`features.mimic.loader.load_split`
            (training only; scoring uses the model's).
        files: The data files beside the manifest.
        has_true_risk: Whether ``stays.parquet`` holds the generator's ``true_risk``.
        warnings: Cohort-level warnings, e.g. a variable never observed.
        timings_s: Seconds per extraction step, and ``"total"``.
        as_of: The time a stay still in the ICU was measured to (scoring only).
        skipped: Adult stays left out, by reason (scoring only).
    """

    schema_version: Literal[SCHEMA_VERSION]
    task: Literal[TASK]
    # Added within schema version 1: every folder written before has no purpose key and is
    # a training folder, so the default reads it unchanged. A training manifest still
    # leaves the key out (see to_json), so older code keeps reading new training folders,
    # and refuses a scoring folder (an unknown key, no split), as it should: no labels.
    purpose: Purpose = "training"
    created: str
    source: Source
    cohort: Cohort
    stays: int
    positives: int | None = None
    hours: int
    split: Split | None = None
    channels: tuple[str, ...]
    normaliser: Normaliser | None = None
    files: FolderFiles
    has_true_risk: bool
    # Folders written before warnings were recorded have none (same schema version).
    warnings: tuple[str, ...] = ()
    timings_s: dict[str, float]
    as_of: datetime | None = None
    skipped: SkippedStays | None = None

    @model_validator(mode="after")
    def _fields_match_the_purpose(self) -> FeatureManifest:
        _check_purpose_fields(self, _PURPOSE_FIELDS)
        return self

    @model_validator(mode="after")
    def _one_statistic_per_channel(self) -> FeatureManifest:
        normaliser = self.normaliser
        if normaliser is None:
            return self
        lengths = {len(normaliser.means), len(normaliser.stds), len(normaliser.normalised)}
        if lengths != {len(self.channels)}:
            raise ValueError(
                f"normaliser: {len(normaliser.means)} means, {len(normaliser.stds)} stds and "
                f"{len(normaliser.normalised)} flags for {len(self.channels)} channels"
            )
        return self

    @property
    def total_seconds(self) -> float:
        """Wall time of the whole extraction."""
        return self.timings_s["total"]

    def to_json(self) -> str:
        """The manifest as ``manifest.json`` holds it (two-space indent, final newline).

        The other purpose's fields are left out rather than written as null, and so is the
        default ``purpose`` of a training folder: a training manifest holds exactly the
        keys it held before scoring folders existed.
        """
        absent = {
            name
            for names in _PURPOSE_FIELDS.values()
            for name in names
            if getattr(self, name) is None
        }
        if self.purpose == "training":
            absent.add("purpose")
        return json.dumps(self.model_dump(mode="json", exclude=absent), indent=2) + "\n"

    def write(self, folder: Path) -> None:
        """Write ``manifest.json`` into ``folder`` owner-only (0600) and atomically."""
        write_private_text(folder / MANIFEST_FILE, self.to_json())

    def outdated_reason(
        self, mimic_dir: str | Path, *, seed: int, val_fraction: float, test_fraction: float
    ) -> str | None:
        """Why extracting ``mimic_dir`` with these settings would write another folder.

        See :func:`outdated_reason`.
        """
        return outdated_reason(self, mimic_dir, seed, val_fraction, test_fraction)


class TaskFiles(_Part):
    """The data files of a whole-stay task folder beside the manifest."""

    stays: Literal[STAYS_FILE]
    hourly: Literal[HOURLY_FILE]
    samples: Literal[SAMPLES_FILE]


class TaskManifest(_Part):
    """The ``manifest.json`` of a whole-stay task folder.

    Written by :func:`features.mimic.extract.extract` for decompensation, length of stay
    and phenotyping (``purpose="training"``), or by
    :func:`features.mimic.extract.extract_for_scoring` for new patients
    (``purpose="scoring"``: no labels, so no ``positives``, ``split`` or ``normaliser``;
    instead ``as_of``).

    Attributes:
        schema_version: Layout version of the folder (:data:`SCHEMA_VERSION`).
        task: The task.
        purpose: ``"training"`` or ``"scoring"``.
        created: When the folder was written (ISO 8601, UTC, seconds).
        source: The raw tables it was extracted from.
        cohort: Cohort steps and event-validation counts.
        stays: Stays in the folder (the task cohort; a stay may have no hourly sample).
        hourly_rows: Rows of ``hourly.npy``: the stays' hours, laid end to end.
        samples: Rows of ``samples.parquet`` (phenotyping: one per stay).
        positives: Positive samples (decompensation) or per-label positives (phenotyping,
            in ``labels`` order); None for length of stay.
        labels: The label names: phenotyping's 25 phenotypes, or the task's one target.
        split: Split settings and counts (``positives``: in-hospital deaths per split).
        channels: The hourly rows' column names.
        normaliser: Statistics fitted on every hour of the training stays.
        files: The data files beside the manifest.
        truth_columns: The generator's planted truth columns carried into the tables.
        warnings: Cohort-level warnings, e.g. a variable never observed.
        timings_s: Seconds per extraction step, and ``"total"``.
        as_of: The time a stay still in the ICU was measured to (scoring only).
    """

    schema_version: Literal[SCHEMA_VERSION]
    task: WholeStayTask
    purpose: Purpose = "training"
    created: str
    source: Source
    cohort: Cohort
    stays: int
    hourly_rows: int
    samples: int
    positives: int | tuple[int, ...] | None
    labels: tuple[str, ...]
    split: Split | None = None
    channels: tuple[str, ...]
    normaliser: Normaliser | None = None
    files: TaskFiles
    truth_columns: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    timings_s: dict[str, float]
    as_of: datetime | None = None

    @model_validator(mode="after")
    def _fields_match_the_purpose(self) -> TaskManifest:
        # A task folder's positives may be None in training too (length of stay has none).
        _check_purpose_fields(
            self, {"training": ("split", "normaliser"), "scoring": ("as_of",)}, ("positives",)
        )
        return self

    @property
    def total_seconds(self) -> float:
        """Wall time of the whole extraction."""
        return self.timings_s["total"]

    def outdated_reason(
        self, mimic_dir: str | Path, *, seed: int, val_fraction: float, test_fraction: float
    ) -> str | None:
        """Why extracting ``mimic_dir`` with these settings would write another folder.

        See :func:`outdated_reason`.
        """
        return outdated_reason(self, mimic_dir, seed, val_fraction, test_fraction)

    def to_json(self) -> str:
        """The manifest as ``manifest.json`` holds it (two-space indent, final newline)."""
        absent = {"split", "normaliser", "as_of"} - {
            name for name in ("split", "normaliser", "as_of") if getattr(self, name) is not None
        }
        return json.dumps(self.model_dump(mode="json", exclude=absent), indent=2) + "\n"

    def write(self, folder: Path) -> None:
        """Write ``manifest.json`` into ``folder`` owner-only (0600) and atomically."""
        write_private_text(folder / MANIFEST_FILE, self.to_json())


def _check_purpose_fields(
    manifest: BaseModel,
    fields: dict[str, tuple[str, ...]],
    training_only: tuple[str, ...] = (),
) -> None:
    """Refuse a manifest that lacks its purpose's fields or has the other purpose's.

    Each purpose has its own fields, present there and absent in the other: a training
    folder without a normaliser, or a scoring folder with labels, is broken.

    Args:
        manifest: A manifest with a ``purpose``.
        fields: Per purpose, the fields only it has (and must have).
        training_only: Fields a scoring folder must not have, which a training one may
            leave empty.
    """
    purpose = manifest.purpose  # type: ignore[attr-defined]
    other = "scoring" if purpose == "training" else "training"
    missing = [name for name in fields[purpose] if getattr(manifest, name) is None]
    if missing:
        raise ValueError(f"a {purpose} folder needs {', '.join(missing)}")
    forbidden = fields[other] + (training_only if purpose == "scoring" else ())
    extra = [name for name in forbidden if getattr(manifest, name) is not None]
    if extra:
        raise ValueError(f"a {purpose} folder has no {', '.join(extra)}")


#: The fields only a folder of one purpose has.
_PURPOSE_FIELDS: dict[str, tuple[str, ...]] = {
    "training": ("positives", "split", "normaliser"),
    "scoring": ("as_of", "skipped"),
}


def outdated_reason(
    manifest: FeatureManifest | TaskManifest,
    mimic_dir: str | Path,
    seed: int,
    val_fraction: float,
    test_fraction: float,
) -> str | None:
    """Why extracting ``mimic_dir`` with these settings would write another folder.

    Compares the split settings, then the byte size of every source table with the
    recorded one (cheap, so a changed table usually costs no hashing), then its sha256.

    Args:
        manifest: The existing folder's manifest.
        mimic_dir: Folder with the MIMIC-III tables.
        seed: Seed of the subject-level split.
        val_fraction: Share of subjects in the validation split.
        test_fraction: Share of subjects in the test split.

    Returns:
        A short reason, or None when re-extracting would write the same feature folder
        (up to its creation time and timings).
    """
    if manifest.split is None:
        return "the folder holds scoring features, not training ones"
    split = manifest.split
    if (split.seed, split.val_fraction, split.test_fraction) != (
        seed,
        val_fraction,
        test_fraction,
    ):
        return "the split settings changed"
    recorded = manifest.source.tables
    expected = SOURCE_TABLES
    if set(recorded) != set(expected):
        return "the manifest records other source tables"
    try:
        paths = {name: table_path(mimic_dir, name) for name in expected}
    except MimicInputError:
        return "a source table is missing"  # extraction reports which, properly
    for name, path in paths.items():
        if path.stat().st_size != recorded[name].bytes:
            return f"{name} changed size"
    for name, path in paths.items():
        if file_fingerprint(path)["sha256"] != recorded[name].sha256:
            return f"{name} changed content"
    return None


def read_manifest_header(feature_dir: str | Path) -> ManifestHeader | None:
    """The header of ``feature_dir``'s manifest, or None if it has none that parses."""
    path = Path(feature_dir) / MANIFEST_FILE
    try:
        return ManifestHeader.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def load_manifest(feature_dir: str | Path) -> FeatureManifest | TaskManifest:
    """Read and check ``manifest.json`` of a feature folder.

    Args:
        feature_dir: A feature folder.

    Returns:
        The typed manifest: :class:`FeatureManifest` for in-hospital mortality,
        :class:`TaskManifest` for a whole-stay task.

    Raises:
        FeatureFolderError: One line naming the file if it is missing, not JSON, of another
            schema version (then it says to re-extract), or if a field is missing, unknown
            or of the wrong type (then it names the field).
    """
    path = Path(feature_dir) / MANIFEST_FILE
    try:
        text = path.read_text("utf-8")
    except FileNotFoundError as err:
        raise FeatureFolderError(f"{path}: manifest not found (not a feature folder?)") from err
    except (OSError, UnicodeDecodeError) as err:
        raise FeatureFolderError(f"{path}: cannot read the manifest: {err}") from err
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise FeatureFolderError(
            f"{path}: line {err.lineno} column {err.colno}: not valid JSON ({err.msg})"
        ) from err
    if not isinstance(raw, dict):
        raise FeatureFolderError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise FeatureFolderError(
            f"{path}: schema_version {repr(version)[:_QUOTED_CHARS]}, this code reads "
            f"{SCHEMA_VERSION}; re-extract the feature folder (rank1 extract)"
        )
    model = FeatureManifest if raw.get("task", TASK) == TASK else TaskManifest
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise FeatureFolderError(f"{path}: {_first_problem(err)}") from None


def _first_problem(err: ValidationError) -> str:
    """One line for a manifest's ``ValidationError``: the field and what was expected.

    pydantic's own ``str(err)`` spans lines and quotes the input; this names the field and
    the expectation only.
    """
    first = err.errors()[0]
    location = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    others = err.error_count() - 1
    more = f" (and {others} more problem{'s' if others > 1 else ''})" if others else ""
    return f"{location}: {message}{more}" if location else f"{message}{more}"


def load_ihm_manifest(feature_dir: str | Path) -> FeatureManifest:
    """:func:`load_manifest` of a folder that must be an in-hospital-mortality one.

    Raises:
        FeatureFolderError: As :func:`load_manifest`, or naming the folder's task if it is a
            whole-stay task folder.
    """
    manifest = load_manifest(feature_dir)
    if not isinstance(manifest, FeatureManifest):
        raise FeatureFolderError(
            f"{Path(feature_dir) / MANIFEST_FILE}: is a {manifest.task} feature folder, not an "
            f"in-hospital-mortality one (use --task {manifest.task})"
        )
    return manifest


def load_task_manifest(feature_dir: str | Path) -> TaskManifest:
    """:func:`load_manifest` of a folder that must be a whole-stay task folder.

    Raises:
        FeatureFolderError: As :func:`load_manifest`, or if it is an in-hospital-mortality
            folder.
    """
    manifest = load_manifest(feature_dir)
    if not isinstance(manifest, TaskManifest):
        raise FeatureFolderError(
            f"{Path(feature_dir) / MANIFEST_FILE}: is an in-hospital-mortality feature folder, "
            "not a decompensation, length-of-stay or phenotyping one (use --task ihm)"
        )
    return manifest
