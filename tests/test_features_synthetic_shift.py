"""Named shifts of the synthetic cohort: each changes what it says and nothing else."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features.mimic.extract import extract
from features.mimic.variables import channel_names, load_variables
from features.synthetic import (
    BASE,
    COEFFICIENTS,
    INTERCEPT,
    SHIFT_FILE,
    SHIFT_NAMES,
    SHIFTS,
    TASK_COLUMNS,
    TRUTH_FILE,
    TRUTH_HOURLY_FILE,
    Shift,
    generate,
    planted_risk,
)

REPO = Path(__file__).resolve().parents[1]
#: The commit whose generator is the reference for shift=None: the last one that changed the
#: base cohort on purpose (it planted the decompensation, length-of-stay and phenotype
#: truth; before it, the commit before shifts existed, b58def6). Where that commit is not
#: in the history (a squashed merge, an exported tree) the committed digest is the reference.
REFERENCE_COMMIT: str | None = "d1b6546"
#: sha256 prefixes of generate(patients=40, seed=3, batch_patients=16) from the generator
#: at REFERENCE_COMMIT (with polars 2.1.0 and numpy 2.4.6). Used only where the
#: repository's history is not at hand to rerun that code; the rerun is preferred because
#: it compares under whatever library versions are installed.
REFERENCE_DIGEST = {
    "ADMISSIONS.csv": "65e9b159af84979d",
    "CHARTEVENTS.csv": "b001b5b8b2895490",
    "DIAGNOSES_ICD.csv": "75a207504d247d1f",
    "D_ICD_DIAGNOSES.csv": "37270ca8f7fecee9",
    "D_ITEMS.csv": "833ef747489c6103",
    "D_LABITEMS.csv": "47bcb71fc624fbaa",
    "ICUSTAYS.csv": "220194c48320dcc3",
    "LABEVENTS.csv": "f88795883c545280",
    "OUTPUTEVENTS.csv": "9f9d5ebe4103299f",
    "PATIENTS.csv": "72237fe22527b813",
    "TRANSFERS.csv": "baf21f0d8b637bec",
    "synthetic_truth.csv": "285eb4f891f547c6",
    "synthetic_truth_hourly.csv": "f5dc4972a33525e1",
}
TABLES = sorted(REFERENCE_DIGEST)
Z_COLUMNS = [f"z_{name}" for name in COEFFICIENTS]
LATENTS = ["latent_neuro", "latent_metabolic", "latent_respiratory"]
PATIENTS = 300
SEED = 21


def digest(folder: Path, length: int = 64) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:length]
        for p in sorted(folder.iterdir())
    }


def items_of(channel: str) -> list[int]:
    return next(v for v in load_variables() if v.channel == channel).itemids


def column(channel: str) -> int:
    return channel_names().index(channel)


def z_of(truth: pl.DataFrame) -> dict[str, np.ndarray]:
    return {name: truth[f"z_{name}"].to_numpy() for name in COEFFICIENTS}


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory):
    """The base cohort (also with its truth recorded) and each shift, same seed, extracted."""
    root = tmp_path_factory.mktemp("shifts")
    out = {}
    for name, shift in [("none", None), ("recorded", BASE), *[(n, n) for n in SHIFT_NAMES]]:
        db = root / name / "mimic"
        summary = generate(db, patients=PATIENTS, seed=SEED, shift=shift)
        features = root / name / "features"
        manifest = extract(db, features, seed=0, progress=False)
        out[name] = {
            "db": db,
            "summary": summary,
            "manifest": manifest,
            "truth": pl.read_csv(db / TRUTH_FILE),
            "stays": pl.read_parquet(features / "stays.parquet"),
            "grid": np.load(features / "grid.npy"),
            "record": json.loads((db / SHIFT_FILE).read_text()) if shift else None,
        }
    return out


def chart(db: Path) -> pl.DataFrame:
    return pl.read_csv(
        db / "CHARTEVENTS.csv",
        columns=["ICUSTAY_ID", "ITEMID", "VALUENUM"],
        schema_overrides={"ICUSTAY_ID": pl.Int64, "ITEMID": pl.Int64, "VALUENUM": pl.Float64},
    )


def labs(db: Path) -> pl.DataFrame:
    return pl.read_csv(
        db / "LABEVENTS.csv",
        columns=["HADM_ID", "ITEMID", "VALUENUM"],
        schema_overrides={"HADM_ID": pl.Int64, "ITEMID": pl.Int64, "VALUENUM": pl.Float64},
    )


def raw_age_years(db: Path) -> np.ndarray:
    """Age at each patient's first ICU admission from PATIENTS.DOB (over-89s: ~300 years)."""
    patients = pl.read_csv(db / "PATIENTS.csv", columns=["SUBJECT_ID", "DOB"])
    stays = pl.read_csv(db / "ICUSTAYS.csv", columns=["SUBJECT_ID", "INTIME"])
    when = pl.col("DOB", "INTIME").str.to_datetime("%Y-%m-%d %H:%M:%S")
    first = stays.group_by("SUBJECT_ID").agg(pl.col("INTIME").min())
    joined = first.join(patients, on="SUBJECT_ID").with_columns(when)
    seconds = (joined["INTIME"] - joined["DOB"]).dt.total_seconds().to_numpy()
    return seconds / (365.0 * 86400.0)


# ------------------------------------------------------------------ the base cohort, unchanged


def _reference_generator(tmp_path: Path):
    """The generator module as it was at REFERENCE_COMMIT, or None without git history."""
    if REFERENCE_COMMIT is None:
        return None
    try:
        source = subprocess.run(
            ["git", "show", f"{REFERENCE_COMMIT}:features/synthetic.py"],
            cwd=REPO,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = tmp_path / "synthetic_reference.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("synthetic_reference", path)
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs: dataclasses look their module up to read annotations.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_no_shift_gives_the_bytes_of_the_reference_generator(tmp_path):
    generate(tmp_path / "now", patients=40, seed=3, batch_patients=16)
    assert SHIFT_FILE not in digest(tmp_path / "now")
    reference = _reference_generator(tmp_path)
    if reference is None:
        # No history to rerun the reference (e.g. an exported tree): the committed digest.
        assert digest(tmp_path / "now", 16) == REFERENCE_DIGEST
        return
    reference.generate(tmp_path / "before", patients=40, seed=3, batch_patients=16)
    assert digest(tmp_path / "now") == digest(tmp_path / "before")


def test_recording_the_base_adds_truth_columns_and_changes_nothing_else(cohorts):
    plain, recorded = cohorts["none"], cohorts["recorded"]
    plain_files, recorded_files = digest(plain["db"]), digest(recorded["db"])
    for table in TABLES:
        if table != TRUTH_FILE:
            assert recorded_files[table] == plain_files[table], table
    truth = recorded["truth"]
    n_plain = 5 + len(TASK_COLUMNS)
    assert truth.columns[:n_plain] == plain["truth"].columns
    assert truth.select(plain["truth"].columns).equals(plain["truth"])
    assert truth.columns[n_plain:] == ["shift", "base_risk", "severity", *Z_COLUMNS, *LATENTS]
    assert (truth["shift"] == "none").all()
    assert np.array_equal(truth["base_risk"].to_numpy(), truth["true_risk"].to_numpy())
    assert recorded["record"]["name"] == "none" and recorded["summary"]["shift"] == "none"
    assert plain["summary"]["shift"] is None


# ------------------------------------------------------------------------------ arguments


@pytest.mark.parametrize("bad", ["second_site", "", 3])
def test_unknown_shift_is_one_line_naming_the_argument_and_the_names(tmp_path, bad):
    with pytest.raises(ValueError) as info:
        generate(tmp_path / "db", patients=5, shift=bad)
    message = str(info.value)
    assert "\n" not in message and message.startswith("shift ")
    assert all(repr(name) in message for name in SHIFT_NAMES)
    assert repr(bad) in message
    assert not (tmp_path / "db").exists()  # refused before anything is written


def test_custom_shift_with_unknown_names_is_refused(tmp_path):
    bad_coefficient = Shift(name="x", summary="x", coefficients=(("lactate", 1.0),))
    with pytest.raises(ValueError, match="lactate"):
        generate(tmp_path / "a", patients=5, shift=bad_coefficient)
    bad_item = Shift(name="x", summary="x", never_charted=("lactate",))
    with pytest.raises(ValueError, match="never_charted"):
        generate(tmp_path / "b", patients=5, shift=bad_item)
    with pytest.raises(ValueError, match="vitals_every_h"):
        generate(tmp_path / "c", patients=5, shift=Shift(name="x", summary="x", vitals_every_h=0))


def test_shifts_are_frozen_and_the_literal_names_them():
    assert tuple(SHIFTS) == SHIFT_NAMES
    assert all(shift.name == name for name, shift in SHIFTS.items())
    with pytest.raises(dataclasses.FrozenInstanceError):
        SHIFTS["mechanism"].severity_mean = 3.0


@pytest.mark.parametrize("name", SHIFT_NAMES)
def test_same_seed_same_bytes_for_each_shift(tmp_path, name):
    generate(tmp_path / "a", patients=30, seed=5, batch_patients=7, shift=name)
    generate(tmp_path / "b", patients=30, seed=5, batch_patients=7, shift=name)
    generate(tmp_path / "c", patients=30, seed=6, batch_patients=7, shift=name)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a")[TRUTH_FILE] != digest(tmp_path / "c")[TRUTH_FILE]


def test_rerun_replaces_the_shift_file_with_the_rest(tmp_path):
    generate(tmp_path / "db", patients=5, seed=0, shift="mechanism")
    assert (tmp_path / "db" / SHIFT_FILE).is_file()  # a shifted folder is still ours
    generate(tmp_path / "db", patients=5, seed=0)
    assert not (tmp_path / "db" / SHIFT_FILE).exists()
    assert digest(tmp_path / "db") == digest(_fresh(tmp_path / "fresh"))


def _fresh(folder: Path) -> Path:
    generate(folder, patients=5, seed=0)
    return folder


# ---------------------------------------------------------------- the shifts, one by one


@pytest.mark.parametrize("name", SHIFT_NAMES)
def test_extraction_runs_on_each_shifted_cohort(cohorts, name):
    cohort = cohorts[name]
    grid, stays = cohort["grid"], cohort["stays"]
    assert cohort["manifest"].stays >= 150
    assert grid.shape == (stays.height, 48, len(channel_names()))
    assert np.isfinite(grid).all()
    # The features carry the true risk the outcomes were drawn from, stay for stay.
    truth = cohort["truth"].select("icustay_id", "true_risk")
    joined = stays.join(truth, on="icustay_id", suffix="_truth")
    assert joined.height == stays.height
    assert (joined["true_risk"] == joined["true_risk_truth"]).all()
    assert cohort["record"]["name"] == name and cohort["record"]["seed"] == SEED
    assert cohort["truth"]["shift"].unique().to_list() == [name]


def test_second_site_keeps_the_patients_and_risk(cohorts):
    base, site = cohorts["recorded"], cohorts["second-site"]
    base_files, site_files = digest(base["db"]), digest(site["db"])
    for table in ("PATIENTS.csv", "ADMISSIONS.csv", "ICUSTAYS.csv", "DIAGNOSES_ICD.csv"):
        assert site_files[table] == base_files[table], table
    keep = ["icustay_id", "true_risk", "died", "base_risk", "severity", *Z_COLUMNS]
    assert site["truth"].select(keep).equals(base["truth"].select(keep))
    assert site["record"]["risk_model"]["coefficients"] == dict(COEFFICIENTS)


def test_second_site_charts_less_often_and_never_mean_bp(cohorts):
    base, site = chart(cohorts["recorded"]["db"]), chart(cohorts["second-site"]["db"])
    mean_bp = items_of("Mean blood pressure")
    assert base.filter(pl.col("ITEMID").is_in(mean_bp)).height > 0
    assert site.filter(pl.col("ITEMID").is_in(mean_bp)).height == 0
    assert sorted(cohorts["second-site"]["record"]["never_charted_itemids"]) == [456, 220181]
    # Heart rate about every 3 h instead of hourly; labs every 12 h instead of 8 h.
    heart = items_of("Heart Rate")
    ratio = (
        site.filter(pl.col("ITEMID").is_in(heart)).height
        / base.filter(pl.col("ITEMID").is_in(heart)).height
    )
    assert 0.25 < ratio < 0.45
    base_labs, site_labs = labs(cohorts["recorded"]["db"]), labs(cohorts["second-site"]["db"])
    assert 0.55 < site_labs.height / base_labs.height < 0.8
    # In the grid: mean BP never observed (normal value throughout), fewer heart rate hours.
    base_grid, site_grid = cohorts["recorded"]["grid"], cohorts["second-site"]["grid"]
    mask = column("mask->Mean blood pressure")
    assert site_grid[:, :, mask].sum() == 0 and base_grid[:, :, mask].mean() > 0.8
    normal = float(next(v for v in load_variables() if v.channel == "Mean blood pressure").normal)
    assert (site_grid[:, :, column("Mean blood pressure")] == normal).all()
    assert any("Mean blood pressure" in w for w in cohorts["second-site"]["manifest"].warnings)
    hr_mask = column("mask->Heart Rate")
    assert site_grid[:, :, hr_mask].mean() < 0.5 * base_grid[:, :, hr_mask].mean()


def test_second_site_temperature_in_fahrenheit_is_converted_by_the_extraction(cohorts):
    site = chart(cohorts["second-site"]["db"])
    base = chart(cohorts["recorded"]["db"])
    temperature = site.filter(pl.col("ITEMID").is_in(items_of("Temperature")))
    assert set(temperature["ITEMID"].unique()) == {678, 223761}  # Fahrenheit items only
    assert temperature["VALUENUM"].drop_nulls().min() > 90.0
    assert 223762 in set(base["ITEMID"].unique()) and 223762 not in set(site["ITEMID"].unique())
    d_items = pl.read_csv(cohorts["second-site"]["db"] / "D_ITEMS.csv")
    labels = dict(zip(d_items["ITEMID"], d_items["LABEL"], strict=True))
    assert labels[223761] == "Temperature Fahrenheit"
    # The grid is in Celsius at both sites, with the same mean up to noise.
    channel, mask = column("Temperature"), column("mask->Temperature")
    means = {}
    for name in ("recorded", "second-site"):
        grid = cohorts[name]["grid"]
        observed = grid[:, :, mask] == 1
        means[name] = grid[:, :, channel][observed].mean()
    assert 36.0 < means["second-site"] < 38.5
    assert abs(means["second-site"] - means["recorded"]) < 0.15


def test_second_site_ph_offset_survives_the_extraction(cohorts):
    def mean_ph(name: str) -> float:
        grid = cohorts[name]["grid"]
        observed = grid[:, :, column("mask->pH")] == 1
        return float(grid[:, :, column("pH")][observed].mean())

    # Same patients and levels, so the difference is the offset (sd of the mean ~0.001).
    assert mean_ph("second-site") - mean_ph("recorded") == pytest.approx(-0.04, abs=0.01)
    assert cohorts["second-site"]["record"]["removed_by_extraction"]["ph_offset"] is False


def test_older_sicker_is_outside_the_base_range_with_the_same_formula(cohorts):
    base, older = cohorts["recorded"], cohorts["older-sicker"]
    severity = older["truth"]["severity"].to_numpy()
    base_severity = base["truth"]["severity"].to_numpy()
    assert severity.mean() == pytest.approx(1.5, abs=0.2)
    assert abs(base_severity.mean()) < 0.2
    assert (severity > np.quantile(base_severity, 0.9)).mean() > 0.45
    assert older["stays"]["age"].min() >= 75.0
    assert (base["stays"]["age"] < 75.0).mean() > 0.6
    # In the raw tables too, where the extraction has not yet dropped minors: none left.
    raw_ages = raw_age_years(older["db"])
    assert raw_ages.min() >= 75.0 and (raw_age_years(base["db"]) < 18.0).any()
    # The planted formula is the base one, recomputed from the recorded levels.
    truth = older["truth"]
    risk = truth["true_risk"].to_numpy()
    assert np.allclose(risk, planted_risk(z_of(truth)), rtol=0, atol=1e-12)
    assert np.array_equal(risk, truth["base_risk"].to_numpy())
    assert older["record"]["risk_model"]["coefficients"] == dict(COEFFICIENTS)
    assert truth["died"].mean() > 0.25 > base["truth"]["died"].mean()


def test_mechanism_changes_only_the_outcome(cohorts):
    base, mech = cohorts["recorded"], cohorts["mechanism"]
    base_files, mech_files = digest(base["db"]), digest(mech["db"])
    # The outcome and its terminal course: who dies where, and the values of the hours
    # before a death in the ICU (always after the first 48 h).
    outcome = {"PATIENTS.csv", "ADMISSIONS.csv", "CHARTEVENTS.csv", "LABEVENTS.csv"}
    for table in TABLES:
        if table not in outcome | {TRUTH_FILE, TRUTH_HOURLY_FILE}:
            assert mech_files[table] == base_files[table], table
    # Same stays, same measurements in the first 48 h, same grid: nothing in the inputs of
    # the in-hospital-mortality task shifts.
    assert np.array_equal(mech["grid"], base["grid"])
    assert mech["stays"]["icustay_id"].equals(base["stays"]["icustay_id"])
    keep = ["icustay_id", "severity", *Z_COLUMNS, "base_risk", "true_los_hours"]
    assert mech["truth"].select(keep).equals(base["truth"].select(keep))
    # The chart rows differ only in stays whose ICU death differs, after their onset.
    onsets = {}
    for name in ("recorded", "mechanism"):
        truth = cohorts[name]["truth"].select("icustay_id", pl.col("onset_hour").cast(pl.Float64))
        onsets[name] = dict(zip(truth["icustay_id"], truth["onset_hour"], strict=True))
    changed = {i for i in onsets["recorded"] if onsets["recorded"][i] != onsets["mechanism"][i]}
    assert changed  # some deaths in the unit differ (and their deterioration with them)
    rows = {
        name: pl.read_csv(
            cohorts[name]["db"] / "CHARTEVENTS.csv",
            columns=["ROW_ID", "ICUSTAY_ID", "VALUE"],
            schema_overrides={"ICUSTAY_ID": pl.Int64, "VALUE": pl.String},
        )
        for name in ("recorded", "mechanism")
    }
    assert rows["recorded"].height == rows["mechanism"].height
    diff = rows["recorded"]["VALUE"].ne_missing(rows["mechanism"]["VALUE"]).to_numpy()
    assert diff.any()
    differing = rows["recorded"].filter(pl.Series(diff))["ICUSTAY_ID"].drop_nulls()
    assert set(differing.to_list()) <= changed


def test_mechanism_records_its_coefficients_and_recomputes_the_risk(cohorts):
    mech = cohorts["mechanism"]
    model = mech["record"]["risk_model"]
    assert model["coefficients"]["glucose"] == 1.0 and model["coefficients"]["hr"] == 0.0
    assert model["base_coefficients"] == dict(COEFFICIENTS)
    changed = {k for k in COEFFICIENTS if model["coefficients"][k] != COEFFICIENTS[k]}
    assert changed == {"glucose", "hr"}
    assert model["intercept"] == INTERCEPT
    truth = mech["truth"]
    z = z_of(truth)
    risk = truth["true_risk"].to_numpy()
    assert np.allclose(risk, planted_risk(z, model["coefficients"], model["intercept"]), atol=1e-12)
    assert np.allclose(truth["base_risk"].to_numpy(), planted_risk(z), atol=1e-12)
    assert np.mean(np.abs(risk - truth["base_risk"].to_numpy()) > 0.01) > 0.3
    # The outcomes follow the new risk: glucose now ranks deaths better than heart rate.
    died = truth["died"].to_numpy() == 1
    assert z["glucose"][died].mean() - z["glucose"][~died].mean() > (
        z["hr"][died].mean() - z["hr"][~died].mean()
    )


def test_shift_record_is_the_frozen_spec(cohorts):
    for name in SHIFT_NAMES:
        record = cohorts[name]["record"]
        spec = SHIFTS[name]
        for field in dataclasses.fields(Shift):
            value = getattr(spec, field.name)
            if field.name == "coefficients":
                value = dict(value)
            elif isinstance(value, tuple):
                value = list(value)
            assert record[field.name] == value, (name, field.name)


def test_a_shifted_database_with_a_user_file_is_not_replaced(tmp_path):
    generate(tmp_path / "db", patients=3, seed=0, shift="second-site")
    (tmp_path / "db" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing"):
        generate(tmp_path / "db", patients=3, seed=1)
    assert (tmp_path / "db" / "notes.txt").read_text() == "mine"
