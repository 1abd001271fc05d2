"""The three sequence tasks of the MIMIC-III benchmark and their per-split data.

Decompensation and length of stay predict at many hours of a stay (one sample per stay and
hour, from the rows before that hour); phenotyping predicts 25 labels once per stay, from
all its rows. :class:`TaskData` holds one split as the extraction writes it (the hourly rows
of all stays concatenated, plus the samples); :func:`load_task_split` reads it from a
feature folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from features.mimic.task_names import SequenceTask
from features.mimic.tasks import LOS_BUCKET_DAYS
from pipeline.objective import Likelihood

if TYPE_CHECKING:
    from features.mimic.loader import TaskSplit

#: The task names (one place: the extraction's).
TaskName = SequenceTask
#: The hours the benchmark predicts for each bucket (its CustomBins means), for the MAD.
LOS_BUCKET_MEAN_HOURS = (
    11.450379, 35.070846, 59.206531, 83.382723, 107.487817,
    131.579534, 155.643957, 179.660558, 254.306624, 585.325890,
)  # fmt: skip
PHENOTYPES = 25
#: The first prediction hour of decompensation and length of stay.
FIRST_HOUR = 5


@dataclass(frozen=True)
class TaskSpec:
    """What a task predicts and how the model and loss are shaped for it.

    Attributes:
        name: The task.
        output_dim: Units of the model head.
        per_step: Predictions at many hours of a stay (a causal per-step model).
        likelihood: The loss: Bernoulli (per sample, or per label) or categorical.
        labels_per_sample: Bernoulli terms per sample (25 for phenotyping, else 1): the
            objective's mean NLL runs over them, so the KL is divided by samples x labels.
    """

    name: TaskName
    output_dim: int
    per_step: bool
    likelihood: Likelihood
    labels_per_sample: int = 1

    @property
    def experiment(self) -> str:
        """The MLflow experiment of the task, e.g. ``mimic-decompensation``."""
        return f"mimic-{self.name}"


TASKS: dict[str, TaskSpec] = {
    "decompensation": TaskSpec("decompensation", 1, True, "bernoulli"),
    "length-of-stay": TaskSpec("length-of-stay", len(LOS_BUCKET_DAYS), True, "categorical"),
    "phenotyping": TaskSpec("phenotyping", PHENOTYPES, False, "bernoulli", PHENOTYPES),
}


def task_spec(task: str) -> TaskSpec:
    """The :class:`TaskSpec` of a task name; ValueError naming the known ones otherwise."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return TASKS[task]


@dataclass(frozen=True)
class TaskData:
    """One split of a task: the stays' hourly rows and the samples to predict.

    Attributes:
        values: ``(total_hours, F)`` float32 normalised rows, the stays concatenated.
        offsets: ``(n_stays + 1,)`` int64; stay i's rows are ``values[offsets[i]:offsets[i+1]]``
            (at least one).
        stay: ``(n,)`` int64 stay of each sample (decompensation, length of stay).
        hour: ``(n,)`` int32 prediction time t, ``5 <= t <= rows of the stay``; the sample
            may read rows ``0 .. t-1`` only.
        label: ``(n,)`` 0/1 death within 24 h (decompensation) or bucket 0..9 (length of
            stay).
        remaining_hours: ``(n,)`` true remaining length of stay in hours (length of stay).
        labels: ``(n_stays, 25)`` 0/1 phenotypes (phenotyping; then no per-hour samples).
    """

    values: np.ndarray
    offsets: np.ndarray
    stay: np.ndarray | None = None
    hour: np.ndarray | None = None
    label: np.ndarray | None = None
    remaining_hours: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        offsets = np.asarray(self.offsets)
        if self.values.ndim != 2:
            raise ValueError(f"values must be (total_hours, F), got {self.values.shape}")
        if offsets.ndim != 1 or offsets.shape[0] < 1 or offsets[0] != 0:
            raise ValueError("offsets must be (n_stays + 1,) starting at 0")
        if offsets[-1] != self.values.shape[0] or np.any(np.diff(offsets) < 1):
            raise ValueError("offsets must rise by >= 1 row per stay and end at total_hours")
        if self.labels is not None:
            if self.labels.shape != (self.n_stays, PHENOTYPES):
                raise ValueError(
                    f"labels must be ({self.n_stays}, {PHENOTYPES}), got {self.labels.shape}"
                )
            return
        if self.stay is None or self.hour is None or self.label is None:
            raise ValueError("per-hour tasks need stay, hour and label (phenotyping: labels)")
        n = self.stay.shape[0]
        for name in ("hour", "label", "remaining_hours"):
            value = getattr(self, name)
            if value is not None and value.shape != (n,):
                raise ValueError(f"{name} must be ({n},), got {value.shape}")
        if n and (self.stay.min() < 0 or self.stay.max() >= self.n_stays):
            raise ValueError(f"stay indices must lie in [0, {self.n_stays})")
        if n and (self.hour.min() < 1 or np.any(self.hour > self.lengths[self.stay])):
            raise ValueError("each hour must lie in [1, rows of its stay]")

    @property
    def n_stays(self) -> int:
        """Stays of the split."""
        return int(self.offsets.shape[0] - 1)

    @property
    def lengths(self) -> np.ndarray:
        """``(n_stays,)`` rows of each stay."""
        return np.diff(np.asarray(self.offsets)).astype(np.int64)

    def samples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every sample as ``(stay, step, target)``: the model output at ``step`` predicts it.

        Returns:
            ``stay`` ``(n,)`` int64, ``step`` ``(n,)`` int64 (``hour - 1``; the stay's last
            row for phenotyping) and ``target``: ``label`` as stored, or the ``(n_stays, 25)``
            labels as float32.
        """
        if self.labels is not None:
            stays = np.arange(self.n_stays, dtype=np.int64)
            return stays, self.lengths - 1, np.asarray(self.labels, dtype=np.float32)
        step = np.asarray(self.hour, dtype=np.int64) - 1
        return np.asarray(self.stay, dtype=np.int64), step, np.asarray(self.label)

    @property
    def n_samples(self) -> int:
        """Samples of the split (stays for phenotyping)."""
        return self.n_stays if self.labels is not None else int(self.stay.shape[0])  # type: ignore[union-attr]


def load_task_split(features_dir: str | os.PathLike, split: str) -> TaskData:
    """Read one split of a whole-stay task folder as :class:`TaskData`.

    The folder is what ``features.mimic.extract.extract(..., task=...)`` writes; its loader
    (:func:`features.mimic.loader.load_task_split`) normalises the rows with the folder's
    training statistics.

    Args:
        features_dir: The task's feature folder.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        The split's :class:`TaskData` (checked).
    """
    from features.mimic.loader import load_task_split as load

    return task_data(load(features_dir, split))


def task_data(part: TaskSplit) -> TaskData:
    """The :class:`TaskData` of a split the extraction's loader read (labels required)."""
    if part.target is None:
        raise ValueError(f"the {part.task} split has no labels (a scoring folder?)")
    if part.task == "phenotyping":
        return TaskData(part.values, part.offsets, labels=part.target)
    return TaskData(
        part.values,
        part.offsets,
        stay=part.stay,
        hour=part.hour,
        label=part.target,
        remaining_hours=part.remaining_hours,
    )
