"""mimic3-benchmarks' whole-stay task stages: decompensation, length of stay, phenotyping.

The shared stage (cohort, validated events, hourly grids; :mod:`features.mimic.extract`)
gives every stay of the task cohort its events over the whole stay and its variable-length
hourly rows. The task stages here turn a stay into samples exactly as the benchmark's
``create_decompensation``, ``create_length_of_stay`` and ``create_phenotyping`` do:

- **Cohort** (all three tasks, the benchmark's order): the root cohort; stays whose
  admission has a diagnosis whose code D_ICD_DIAGNOSES knows (the benchmark inner-joins
  DIAGNOSES_ICD with D_ICD_DIAGNOSES, then the stay's static data with its diagnosis flags;
  a stay with none has an empty label file and is skipped); LOS present; at least one event
  with ``-1e-6 < hours < LOS + 1e-6`` (hours since INTIME, LOS in hours).
- **Hourly samples** (decompensation, length of stay): the integer hours ``t`` in
  ``[0, end + 1e-6]`` with ``t > 4`` and ``t`` after the stay's first event; ``end`` is the
  LOS for length of stay, and ``min(LOS, hours to DEATHTIME)`` for decompensation. The
  prediction at ``t`` sees the stay's first ``t`` hourly rows (events up to ``t``).
- **Decompensation label**: 1 if the stay's in-hospital mortality is 1 and
  ``hours to DEATHTIME - t < 24``. A death known only from PATIENTS.DOD has no DEATHTIME:
  its samples run to the LOS and are all 0, as in the benchmark.
- **Length-of-stay target**: ``LOS - t`` hours, and its bucket in days:
  ``[0,1), [1,2), ..., [7,8), [8,14), [14, inf)`` (:data:`LOS_BUCKET_DAYS`).
- **Phenotyping**: one sample per stay over all its hours; 25 labels, whether the
  admission's diagnoses hold a code of each benchmark phenotype (HCUP CCS 2015 groups,
  ``phenotypes.json``, the benchmark's label order).

The benchmark's fixed train/test subject lists are not used: splits are by subject and
seeded, as for in-hospital mortality.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
import polars as pl

from features.mimic.events import EPS
from features.mimic.task_names import SequenceTask

#: A sample needs more than this many hours since INTIME (the benchmark's shortest_length).
SHORTEST_HOURS = 4.0
#: Decompensation: death within this many hours of the prediction time.
DEATH_HORIZON_HOURS = 24.0
#: Lower edges of the 10 length-of-stay buckets, in days of remaining stay.
LOS_BUCKET_DAYS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 14)


@dataclass(frozen=True)
class Phenotype:
    """One benchmark phenotype: an HCUP CCS 2015 single-level group.

    Attributes:
        name: The group's name (also the label's column name).
        ccs_category: The CCS category number.
        type: ``"acute"``, ``"chronic"`` or ``"mixed"``, as the benchmark labels it.
        codes: Its ICD-9-CM codes, undotted as in MIMIC-III.
    """

    name: str
    ccs_category: int
    type: str
    codes: tuple[str, ...]


@cache
def load_phenotypes() -> tuple[Phenotype, ...]:
    """The 25 benchmark phenotypes in label order (the package file ``phenotypes.json``)."""
    text = resources.files("features.mimic").joinpath("phenotypes.json").read_text("utf-8")
    return tuple(
        Phenotype(p["name"], int(p["ccs_category"]), p["type"], tuple(p["codes"]))
        for p in json.loads(text)["phenotypes"]
    )


def phenotype_names() -> tuple[str, ...]:
    """The 25 label names, in order."""
    return tuple(p.name for p in load_phenotypes())


def los_bucket(remaining_hours: np.ndarray) -> np.ndarray:
    """The benchmark's length-of-stay bucket (0-9) of remaining hours.

    Args:
        remaining_hours: ``(n,)`` hours of stay left.

    Returns:
        ``(n,)`` int8 buckets; a value below 0 (within the 1e-6 slack) is bucket 0.
    """
    edges = np.asarray(LOS_BUCKET_DAYS[1:], dtype=np.float64) * 24.0
    return np.searchsorted(edges, np.asarray(remaining_hours), side="right").astype(np.int8)


def phenotype_labels(diagnoses: pl.DataFrame, stays: pl.DataFrame) -> pl.DataFrame:
    """The 25 phenotype labels of each stay, from its admission's diagnoses.

    Args:
        diagnoses: :func:`features.mimic.cohort.known_diagnoses`.
        stays: The task's stays (``icustay_id``, ``subject_id``, ``hadm_id``), in order.

    Returns:
        ``icustay_id`` and one Int8 column per phenotype (:func:`phenotype_names`), one row
        per stay in the order of ``stays``.
    """
    groups = pl.DataFrame(
        [(code, index) for index, p in enumerate(load_phenotypes()) for code in p.codes],
        schema={"icd9_code": pl.String, "group": pl.Int32},
        orient="row",
    )
    present = (
        diagnoses.join(groups, on="icd9_code", how="inner")
        .select("subject_id", "hadm_id", "group")
        .unique()
    )
    keys = stays.select("icustay_id", "subject_id", "hadm_id")
    hits = keys.join(present, on=["subject_id", "hadm_id"], how="inner")
    labels = np.zeros((stays.height, len(load_phenotypes())), dtype=np.int8)
    row = {stay: i for i, stay in enumerate(stays["icustay_id"].to_list())}
    rows = np.array([row[s] for s in hits["icustay_id"].to_list()], dtype=np.int64)
    labels[rows, hits["group"].to_numpy()] = 1
    columns = {name: labels[:, j] for j, name in enumerate(phenotype_names())}
    return pl.DataFrame({"icustay_id": stays["icustay_id"], **columns})


def hourly_samples(stays: pl.DataFrame, task: SequenceTask) -> pl.DataFrame:
    """The benchmark's hourly samples of decompensation or length of stay.

    Args:
        stays: One row per task stay with ``icustay_id``, ``length_hours`` (LOS in hours),
            ``first_event_hours`` (hours since INTIME of the stay's first event in the
            window), ``label`` (in-hospital mortality) and ``death_hours`` (hours from INTIME
            to DEATHTIME, null without one).
        task: ``"decompensation"`` or ``"length-of-stay"``.

    Returns:
        One row per sample, by stay in the order of ``stays`` then by hour:
        ``icustay_id``, ``hour`` (Int32, the prediction time ``t``) and, for
        decompensation, ``label`` (Int8, death within 24 h); for length of stay,
        ``remaining_hours`` (Float64) and ``bucket`` (Int8).
    """
    if task not in ("decompensation", "length-of-stay"):
        raise ValueError(f"task: expected decompensation or length-of-stay, got {task!r}")
    los = stays["length_hours"].to_numpy().astype(np.float64)
    death = stays["death_hours"].fill_null(np.inf).to_numpy().astype(np.float64)
    end = np.minimum(los, death) if task == "decompensation" else los
    first = stays["first_event_hours"].to_numpy().astype(np.float64)
    # t runs over np.arange(0, end + eps, 1) as in the benchmark, i.e. the integers below
    # end + eps, with t > 4 and t > the first event (t > x is t >= floor(x) + 1).
    last = np.ceil(end + EPS) - 1.0
    start = np.floor(np.maximum(first, SHORTEST_HOURS)) + 1.0
    counts = np.maximum(last - start + 1.0, 0.0).astype(np.int64)
    row = np.repeat(np.arange(stays.height), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    hour = (start[row] + within).astype(np.int32)
    samples = {"icustay_id": stays["icustay_id"].to_numpy()[row], "hour": hour}
    if task == "decompensation":
        died = stays["label"].to_numpy()[row] == 1
        samples["label"] = (died & (death[row] - hour < DEATH_HORIZON_HOURS)).astype(np.int8)
    else:
        remaining = los[row] - hour
        samples["remaining_hours"] = remaining
        samples["bucket"] = los_bucket(remaining)
    return pl.DataFrame(samples)
