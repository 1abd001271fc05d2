"""The ICU-stay cohort of mimic3-benchmarks and the in-hospital-mortality label.

The steps and their order follow mimic3-benchmarks (``extract_subjects``):

1. all ICU stays;
2. drop stays whose first and last ward or care unit differ (transfers inside the ICU);
3. join admissions and patients (inner, on subject and admission);
4. keep admissions with exactly one remaining ICU stay;
5. age at ICU admission in years of 365 days; patients older than 89 have their date of
   birth shifted about 300 years back in MIMIC-III and are set to 90; drop age < 18.

The label is in-hospital mortality: DOD or DEATHTIME inside [ADMITTIME, DISCHTIME].
The task-level exclusions (length of stay under 48 h, no known diagnosis, no event in the
first 48 h) are applied later, once events are known (see :mod:`features.mimic.extract`).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from features.mimic.tables import TRAINING_RULES, TableRules, read_table

#: Computed ages at or above this are MIMIC-III's shifted over-89 patients (real ages are
#: below 90; shifted ones come out near 300). mimic3-benchmarks sees them as negative
#: because its nanosecond arithmetic overflows, and sets them to 90.
SHIFTED_AGE_YEARS = 150.0
SHIFTED_AGE_VALUE = 90.0
MIN_AGE = 18.0


def root_stays(
    mimic_dir: str | Path, *, rules: TableRules = TRAINING_RULES
) -> tuple[pl.DataFrame, list[dict[str, object]]]:
    """Build the benchmark's root cohort of ICU stays.

    Args:
        mimic_dir: Folder with PATIENTS, ADMISSIONS and ICUSTAYS.
        rules: What the tables must hold; ``SCORING_RULES`` reads an export without
            outcome columns (the label is then computed from nulls and meaningless).

    Returns:
        ``(stays, steps)``: one row per kept stay (ids, times, los, dbsource, gender, age,
        ethnicity, ``label`` = in-hospital mortality, ``mortality_inunit``), and the list
        of cohort steps, each ``{"step", "stays", "subjects"}``.
    """
    icu = read_table(mimic_dir, "ICUSTAYS", rules=rules)
    admissions = read_table(mimic_dir, "ADMISSIONS", rules=rules)
    patients = read_table(mimic_dir, "PATIENTS", rules=rules)
    steps: list[dict[str, object]] = []

    def record(step: str, frame: pl.DataFrame) -> None:
        steps.append(
            {"step": step, "stays": frame.height, "subjects": frame["subject_id"].n_unique()}
        )

    record("icu_stays", icu)
    # A null ward or unit compares as unknown and the stay is dropped, as in pandas (NaN).
    stays = icu.filter(
        (pl.col("first_wardid") == pl.col("last_wardid"))
        & (pl.col("first_careunit") == pl.col("last_careunit"))
    )
    record("no_icu_transfers", stays)
    stays = stays.join(admissions, on=["subject_id", "hadm_id"], how="inner")
    stays = stays.join(patients, on="subject_id", how="inner")
    record("with_admission_and_patient", stays)
    per_admission = stays.group_by("hadm_id").agg(pl.len().alias("n_stays"))
    stays = stays.join(per_admission.filter(pl.col("n_stays") == 1).select("hadm_id"), on="hadm_id")
    record("one_icu_stay_per_admission", stays)
    seconds = (pl.col("intime") - pl.col("dob")).dt.total_microseconds() / 1e6
    age = seconds / (60.0 * 60.0 * 24.0 * 365.0)
    stays = stays.with_columns(
        age=pl.when(age >= SHIFTED_AGE_YEARS).then(pl.lit(SHIFTED_AGE_VALUE)).otherwise(age)
    )

    def inside(time: str, start: str, end: str) -> pl.Expr:
        return (
            pl.col(time).is_not_null()
            & (pl.col(start) <= pl.col(time))
            & (pl.col(time) <= pl.col(end))
        )

    stays = stays.with_columns(
        label=(
            inside("dod", "admittime", "dischtime") | inside("deathtime", "admittime", "dischtime")
        ).cast(pl.Int8),
        mortality_inunit=(
            inside("dod", "intime", "outtime") | inside("deathtime", "intime", "outtime")
        ).cast(pl.Int8),
    )
    stays = stays.filter(pl.col("age") >= MIN_AGE)
    record("adults", stays)
    stays = stays.select(
        "subject_id",
        "hadm_id",
        "icustay_id",
        "dbsource",
        "last_careunit",
        "intime",
        "outtime",
        "los",
        "admittime",
        "dischtime",
        "deathtime",
        "dod",
        "gender",
        "ethnicity",
        "age",
        "label",
        "mortality_inunit",
    ).sort("subject_id", "intime")
    return stays, steps


def known_diagnoses(mimic_dir: str | Path) -> pl.DataFrame:
    """Diagnoses whose code D_ICD_DIAGNOSES lists (``subject_id``, ``hadm_id``, ``icd9_code``).

    mimic3-benchmarks reads diagnoses through an inner join with the code dictionary, so a
    code it does not list is neither a phenotype label nor a diagnosis of the stay.
    """
    diagnoses = read_table(mimic_dir, "DIAGNOSES_ICD")
    dictionary = read_table(mimic_dir, "D_ICD_DIAGNOSES").select("icd9_code").unique()
    return diagnoses.join(dictionary, on="icd9_code", how="semi").select(
        "subject_id", "hadm_id", "icd9_code"
    )


def admissions_with_diagnoses(diagnoses: pl.DataFrame) -> pl.DataFrame:
    """Admissions (``subject_id``, ``hadm_id``) with at least one known diagnosis.

    mimic3-benchmarks joins each stay's static data to its diagnosis flags (of the codes
    D_ICD_DIAGNOSES knows, :func:`known_diagnoses`) with an inner join, so a stay whose
    admission has none gets an empty episode file and is skipped by every task builder.
    """
    return diagnoses.select("subject_id", "hadm_id").unique()
