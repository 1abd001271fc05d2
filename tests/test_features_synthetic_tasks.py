"""The planted truth of decompensation, length of stay and phenotyping in the synthetic cohort.

Every check reads the written tables the way mimic3-benchmarks defines each task and compares
with what the generator says it planted.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from features.mimic.variables import load_variables
from features.synthetic import (
    BASE,
    DECOMPENSATION_HORIZON_H,
    DETERIORATION_WINDOW_H,
    FIRST_SAMPLE_HOUR,
    LONG_STAY_MIN_H,
    PHENOTYPE_COLUMNS,
    PHENOTYPES,
    TRUTH_FILE,
    TRUTH_HOURLY_FILE,
    decompensation_risk,
    generate,
)

PATIENTS = 4000
TIME = "%Y-%m-%d %H:%M:%S"
FLOAT_TRUTH = {
    "true_risk": pl.Float64,
    "true_los_hours": pl.Float64,
    "los_scale_hours": pl.Float64,
    "true_death_hour": pl.Float64,
    "onset_hour": pl.Float64,
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    db = tmp_path_factory.mktemp("tasks") / "mimic"
    summary = generate(db, patients=PATIENTS, seed=17, shift=BASE)  # records the latents
    truth = pl.read_csv(db / TRUTH_FILE, schema_overrides=FLOAT_TRUTH)
    hourly = pl.read_csv(db / TRUTH_HOURLY_FILE)
    return db, summary, truth, hourly


def read(db, table, columns, times=()):
    frame = pl.read_csv(db / f"{table}.csv", columns=columns, infer_schema_length=0)
    casts = [pl.col(c).str.to_datetime(TIME) for c in times]
    casts += [pl.col(c).cast(pl.Int64) for c in columns if c.endswith("_ID") or c == "ITEMID"]
    return frame.with_columns(casts)


def stays_table(db) -> pl.DataFrame:
    """ICU stays with the benchmark's LOS hours, mortality and hours to DEATHTIME."""
    icu = read(db, "ICUSTAYS", ["HADM_ID", "ICUSTAY_ID", "INTIME", "OUTTIME", "LOS"], ["INTIME"])
    adm = read(db, "ADMISSIONS", ["HADM_ID", "DEATHTIME", "HOSPITAL_EXPIRE_FLAG"], ["DEATHTIME"])
    return icu.join(adm, on="HADM_ID").with_columns(
        los_h=pl.col("LOS").cast(pl.Float64) * 24.0,
        mortality=pl.col("HOSPITAL_EXPIRE_FLAG").cast(pl.Int64),
        lived_h=(pl.col("DEATHTIME") - pl.col("INTIME")).dt.total_seconds() / 3600.0,
    )


# ------------------------------------------------------------------------ death times


def test_planted_deaths_lie_in_the_stays_and_agree_with_the_label(cohort):
    db, summary, truth, _ = cohort
    stays = stays_table(db).join(
        truth.rename({"icustay_id": "ICUSTAY_ID"}), on="ICUSTAY_ID", how="inner"
    )
    assert stays.height == truth.height
    # The in-hospital label, the truth's outcome and the planted death hour agree.
    assert (stays["mortality"] == stays["died"]).all()
    assert (stays["true_death_hour"].is_not_null() == (stays["died"] == 1)).all()
    dead = stays.filter(pl.col("died") == 1)
    assert np.allclose(dead["lived_h"], dead["true_death_hour"], atol=1e-6)
    # Deaths in the unit: at OUTTIME, after a deterioration of 24-72 h that starts after
    # the in-hospital-mortality window.
    icu = stays.filter(pl.col("onset_hour").is_not_null())
    assert summary["icu_deaths"] == icu.height > 0.015 * truth.height
    assert (icu["died"] == 1).all()
    assert np.allclose(icu["true_death_hour"], icu["true_los_hours"], atol=1e-9)
    assert (icu["onset_hour"] >= LONG_STAY_MIN_H).all()
    window = (icu["true_death_hour"] - icu["onset_hour"]).to_numpy()
    assert window.min() >= DETERIORATION_WINDOW_H[0] and window.max() <= DETERIORATION_WINDOW_H[1]
    # Every other death is more than 24 h after the stay's end (and after any later stay).
    other = dead.filter(pl.col("onset_hour").is_null())
    assert (other["true_death_hour"] - other["true_los_hours"] > DECOMPENSATION_HORIZON_H).all()
    # The in-hospital mortality stays near its planted level.
    first = truth.filter(pl.col("icustay_id") % 2 == 1)
    assert abs(first["died"].mean() - first["true_risk"].mean()) < 0.02


# --------------------------------------------------------------------- decompensation


def test_decompensation_samples_and_labels_from_the_tables_match_the_truth(cohort):
    db, _, truth, hourly = cohort
    stays = stays_table(db)
    itemids = [i for v in load_variables() for i in v.itemids]
    chart = read(db, "CHARTEVENTS", ["ICUSTAY_ID", "ITEMID", "CHARTTIME"], ["CHARTTIME"])
    first_event = (
        chart.filter(pl.col("ITEMID").is_in(itemids) & pl.col("ICUSTAY_ID").is_not_null())
        .group_by("ICUSTAY_ID")
        .agg(pl.col("CHARTTIME").min().alias("first"))
    )
    stays = stays.join(first_event, on="ICUSTAY_ID", how="left").with_columns(
        first_h=(pl.col("first") - pl.col("INTIME")).dt.total_seconds() / 3600.0,
        end_h=pl.min_horizontal("los_h", pl.col("lived_h").fill_null(float("inf"))),
    )
    # The benchmark's samples: integer t in [0, min(LOS, lived)] with t > 4 and t after the
    # stay's first event; label = mortality and lived - t < 24.
    samples = (
        stays.with_columns(
            hour=pl.int_ranges(0, (pl.col("end_h") + 1e-6).floor().cast(pl.Int64) + 1)
        )
        .explode("hour")
        .filter((pl.col("hour") > 4) & (pl.col("hour") > pl.col("first_h")))
        .with_columns(
            label=(
                (pl.col("mortality") == 1) & (pl.col("lived_h") - pl.col("hour") < 24.0)
            ).fill_null(False)
        )
        .select(pl.col("ICUSTAY_ID").alias("icustay_id"), pl.col("hour").cast(pl.Int64), "label")
    )
    assert samples.height == hourly.height
    joined = samples.join(hourly, on=["icustay_id", "hour"], how="inner")
    assert joined.height == hourly.height and hourly["hour"].min() == FIRST_SAMPLE_HOUR
    label = joined["label"].to_numpy()
    risk = joined["true_decomp_risk"].to_numpy()
    assert 0.005 < label.mean() < 0.05
    # A positive always has a planted risk > 0; a risk of 0 is always a negative.
    assert (risk[label] > 0).all() and not label[risk == 0].any()
    # Agreement with the planted death hour: positive exactly in the 24 h before it.
    death = joined.join(
        truth.select("icustay_id", "true_death_hour", "onset_hour"), on="icustay_id"
    )
    expected = (death["true_death_hour"] - death["hour"] < 24.0).fill_null(False).to_numpy()
    assert np.array_equal(expected, label)
    # Calibration over the hours after an onset, overall and by risk band.
    started = risk > 0
    assert abs(risk[started].mean() - label[started].mean()) < 0.03
    for low, high in ((0.0, 0.5), (0.5, 1.01)):
        band = started & (risk > low) & (risk <= high)
        assert abs(risk[band].mean() - label[band].mean()) < 0.06, (low, high)
    # The planted risk ranks the samples almost perfectly, being the oracle of the onset.
    assert roc_auc_score(label, risk) > 0.95


def test_decompensation_risk_formula_matches_a_simulation_of_the_generator():
    rng = np.random.default_rng(0)
    n = 2_000_000
    for scale in (20.0, 60.0, 150.0):
        # As in the generator: LOS = 48.5 + E * scale, W ~ U(24, 72), a death in the unit
        # only where the onset LOS - W is >= 48.5.
        los = LONG_STAY_MIN_H + rng.exponential(scale, n)
        window = rng.uniform(*DETERIORATION_WINDOW_H, n)
        keep = los - window >= LONG_STAY_MIN_H
        window = window[keep]
        for a in (0.0, 10.0, 30.0, 50.0):
            alive = window > a
            simulated = np.mean(window[alive] < a + 24.0)
            assert decompensation_risk(np.array([a]), scale)[0] == pytest.approx(
                simulated, abs=0.01
            ), (scale, a)
    assert decompensation_risk(np.array([-1.0, np.nan]), 60.0).tolist() == [0.0, 0.0]


# ---------------------------------------------------------------------- length of stay


def test_length_of_stay_grows_with_severity_as_planted(cohort):
    _, _, truth, hourly = cohort
    long = truth.filter(pl.col("los_scale_hours").is_not_null())
    beyond = (long["true_los_hours"] - LONG_STAY_MIN_H).to_numpy()
    scale = long["los_scale_hours"].to_numpy()
    # LOS beyond 48.5 h is Exp(1) times the planted scale: mean 1, sd 1.
    ratio = beyond / scale
    assert ratio.mean() == pytest.approx(1.0, abs=0.06)
    assert ratio.std() == pytest.approx(1.0, abs=0.1)
    severity = long["severity"].to_numpy()
    assert np.corrcoef(severity, np.log(beyond))[0, 1] > 0.2
    # The length-of-stay samples are the decompensation ones: up to LOS, every hour.
    per_stay = hourly.group_by("icustay_id").agg(pl.col("hour").max()).join(truth, on="icustay_id")
    assert (per_stay["hour"] <= per_stay["true_los_hours"] + 0.002).all()
    assert (per_stay["hour"] > per_stay["true_los_hours"] - 1.001).all()


# ---------------------------------------------------------------------- phenotypes


def phenotype_labels(db, truth: pl.DataFrame):
    """The benchmark's 25 labels of each first stay whose admission has a diagnosis."""
    diagnoses = read(db, "DIAGNOSES_ICD", ["HADM_ID", "ICD9_CODE"])
    dictionary = read(db, "D_ICD_DIAGNOSES", ["ICD9_CODE"])
    assert set(diagnoses["ICD9_CODE"]) <= set(dictionary["ICD9_CODE"])
    diagnoses = diagnoses.join(dictionary, on="ICD9_CODE", how="inner")
    code_to_label = {code: k for k, (_, codes) in enumerate(PHENOTYPES) for code in codes}
    first = truth.filter(pl.col("icustay_id") % 2 == 1)  # first stays: odd ids
    first = first.filter(pl.col("hadm_id").is_in(diagnoses["HADM_ID"].unique().to_list()))
    row = {h: i for i, h in enumerate(first["hadm_id"].to_list())}
    labels = np.zeros((first.height, len(PHENOTYPES)), dtype=bool)
    for hadm, code in zip(diagnoses["HADM_ID"], diagnoses["ICD9_CODE"], strict=True):
        if hadm in row and code in code_to_label:
            labels[row[hadm], code_to_label[code]] = True
    return first, labels


def test_planted_phenotype_probabilities_are_calibrated_against_the_codes(cohort):
    db, _, truth, _ = cohort
    first, labels = phenotype_labels(db, truth)
    assert first.height > 0.95 * PATIENTS
    probability = first.select(PHENOTYPE_COLUMNS).to_numpy()
    n = first.height
    for k in range(len(PHENOTYPES)):
        p = probability[:, k].mean()
        tolerance = 4 * np.sqrt(p * (1 - p) / n) + 0.005
        assert abs(labels[:, k].mean() - p) < tolerance, PHENOTYPES[k][0]
    auroc = [roc_auc_score(labels[:, k], probability[:, k]) for k in range(len(PHENOTYPES))]
    # Some labels are easy (a strong latent), some have nothing to learn.
    for k in (1, 22, 24):
        assert auroc[k] > 0.8, PHENOTYPES[k][0]
    for k in (6, 17, 18, 19):
        assert 0.44 < auroc[k] < 0.56, PHENOTYPES[k][0]


def test_phenotype_latents_show_in_the_values(cohort):
    db, _, truth, _ = cohort
    chart = read(db, "CHARTEVENTS", ["ICUSTAY_ID", "ITEMID", "VALUENUM"]).with_columns(
        pl.col("VALUENUM").cast(pl.Float64)
    )

    def per_stay(itemids, how="mean"):
        rows = chart.filter(pl.col("ITEMID").is_in(itemids) & pl.col("ICUSTAY_ID").is_not_null())
        agg = pl.col("VALUENUM").mean() if how == "mean" else pl.len().cast(pl.Float64)
        frame = rows.group_by("ICUSTAY_ID").agg(agg.alias("v"))
        return truth.join(frame, left_on="icustay_id", right_on="ICUSTAY_ID", how="left")

    # neuro lowers GCS (CareVue's total), metabolic raises weight, respiratory brings
    # mechanical ventilation (FiO2 charted), each on its own variable.
    gcs = per_stay([198]).drop_nulls("v")
    assert np.corrcoef(gcs["latent_neuro"], gcs["v"])[0, 1] < -0.3
    weight = per_stay([763, 226512]).drop_nulls("v")
    assert np.corrcoef(weight["latent_metabolic"], weight["v"])[0, 1] > 0.5
    fio2 = per_stay([3420, 223835], how="count")
    ventilated = fio2["v"].fill_null(0).to_numpy() > 0
    respiratory = fio2["latent_respiratory"].to_numpy()
    assert respiratory[ventilated].mean() - respiratory[~ventilated].mean() > 0.5
    # The phenotype with the glucose coefficient is more frequent with high glucose.
    glucose = per_stay([807, 225664]).drop_nulls("v")
    assert np.corrcoef(glucose["true_pheno_11"], glucose["v"])[0, 1] > 0.5


def test_heart_rate_and_blood_pressure_deteriorate_before_a_death_in_the_unit(cohort):
    db, _, truth, _ = cohort
    icu = read(db, "ICUSTAYS", ["ICUSTAY_ID", "INTIME"], ["INTIME"])
    chart = read(
        db, "CHARTEVENTS", ["ICUSTAY_ID", "ITEMID", "CHARTTIME", "VALUENUM"], ["CHARTTIME"]
    )
    dying = truth.filter(pl.col("onset_hour").is_not_null()).select(
        pl.col("icustay_id").alias("ICUSTAY_ID"), "onset_hour", "true_death_hour"
    )
    rows = (
        chart.join(dying, on="ICUSTAY_ID")
        .join(icu, on="ICUSTAY_ID")
        .with_columns(
            hour=(pl.col("CHARTTIME") - pl.col("INTIME")).dt.total_seconds() / 3600.0,
            value=pl.col("VALUENUM").cast(pl.Float64),
        )
        .with_columns(
            phase=pl.when(pl.col("hour") < pl.col("onset_hour"))
            .then(pl.lit("before"))
            .when(pl.col("hour") > pl.col("true_death_hour") - 6.0)
            .then(pl.lit("last6h"))
            .otherwise(None)
        )
        .drop_nulls("phase")
    )

    def change(itemids):
        means = (
            rows.filter(pl.col("ITEMID").is_in(itemids))
            .group_by("ICUSTAY_ID", "phase")
            .agg(pl.col("value").mean())
            .pivot(on="phase", index="ICUSTAY_ID", values="value")
            .drop_nulls()
        )
        return float((means["last6h"] - means["before"]).mean())

    # Full drift is 2 sd of z: +28 bpm, -20 mmHg; at least half of it (W >= 24 h, ramp 48 h).
    assert change([211, 220045]) > 14.0
    assert change([456, 220181]) < -10.0
