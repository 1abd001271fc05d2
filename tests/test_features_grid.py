"""The hourly grid on a hand-built stay whose every cell was worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features.mimic.extract import extract
from features.mimic.grid import fit_normaliser
from features.mimic.loader import load_manifest, load_split
from features.mimic.variables import channel_names

INTIME = "2150-01-01 10:00:00"

CHART_HEADER = "row_id,subject_id,hadm_id,icustay_id,itemid,charttime,value,valueuom"
# (itemid, charttime, value, valueuom, icustay_id or "" to test recovery, hadm_id)
CHART_ROWS = [
    # Heart rate (211): bin 0 at 10:30; two values in bin 1 (last by time wins); the same
    # time twice at 12:45 -> the benchmark keeps the text that sorts last ("86" > "100").
    (211, "2150-01-01 10:30:00", "80", "", 1, 11),
    (211, "2150-01-01 11:10:00", "90", "", 1, 11),
    (211, "2150-01-01 11:50:00", "95", "", 1, 11),
    (211, "2150-01-01 12:45:00", "100", "", 1, 11),
    (211, "2150-01-01 12:45:00", "86", "", 1, 11),
    # Exactly 48 h after INTIME: kept, in the last bin (47). 49 h: outside the window.
    (211, "2150-01-03 10:00:00", "70", "", 1, 11),
    (211, "2150-01-03 11:00:00", "60", "", 1, 11),
    # Before INTIME: not in the window.
    (211, "2150-01-01 09:30:00", "150", "", 1, 11),
    # Missing ICUSTAY_ID is recovered from the admission; a foreign admission is dropped.
    (618, "2150-01-01 13:20:00", "22", "", "", 11),
    (618, "2150-01-01 14:20:00", "40", "", 1, 99),
    # Temperature F item (678): 98.6 F -> 37 C. Celsius item (676): 36.0 stays.
    (678, "2150-01-01 10:05:00", "98.6", "Deg. F", 1, 11),
    (676, "2150-01-01 20:05:00", "36.0", "", 1, 11),
    # Systolic BP written as "120/80" gives 120.
    (455, "2150-01-01 15:00:00", "120/80", "", 1, 11),
    # FiO2 in percent -> fraction; NA text is missing in pandas and dropped.
    (3420, "2150-01-01 16:30:00", "50", "", 1, 11),
    (3420, "2150-01-01 17:30:00", "NA", "", 1, 11),
    # GCS eye opening (categorical) and capillary refill text.
    (184, "2150-01-01 12:00:00", "3 To speech", "", 1, 11),
    (115, "2150-01-01 18:10:00", "Abnormal >3 secs", "", 1, 11),
    # An item outside the 17 variables is ignored.
    (212, "2150-01-01 10:10:00", "SR (Sinus Rhythm)", "", 1, 11),
]
LAB_ROWS = [
    # Glucose lab (50931): "ERROR" is dropped, 140 at 21:15 -> bin 11; a lab without
    # admission id is dropped.
    (50931, "2150-01-01 19:00:00", "ERROR", "mg/dL", 11),
    (50931, "2150-01-01 21:15:00", "140", "mg/dL", 11),
    (50931, "2150-01-01 22:15:00", "400", "mg/dL", ""),
    # pH 7.31 at 30.5 h -> bin 30.
    (50820, "2150-01-02 16:30:00", "7.31", "units", 11),
]


def write_tiny_mimic(folder: Path, *, upper: bool = False) -> Path:
    """One adult patient, one admission, one 60-hour ICU stay, hand-picked events."""
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, header: str, rows: list[str]) -> None:
        if upper:
            header = header.upper()
        (folder / f"{name}.csv").write_text("\n".join([header, *rows]) + "\n")

    write("PATIENTS", "row_id,subject_id,gender,dob,dod", ["1,5,F,2080-01-01 00:00:00,"])
    write(
        "ADMISSIONS",
        "row_id,subject_id,hadm_id,admittime,dischtime,deathtime,ethnicity",
        [
            "1,5,11,2150-01-01 08:00:00,2150-01-06 08:00:00,2150-01-06 08:00:00,WHITE",
            "2,5,99,2149-01-01 08:00:00,2149-01-03 08:00:00,,WHITE",
        ],
    )
    write(
        "ICUSTAYS",
        "row_id,subject_id,hadm_id,icustay_id,dbsource,first_careunit,last_careunit,"
        "first_wardid,last_wardid,intime,outtime,los",
        [f"1,5,11,1,carevue,MICU,MICU,7,7,{INTIME},2150-01-03 22:00:00,2.5"],
    )
    write("DIAGNOSES_ICD", "row_id,subject_id,hadm_id,seq_num,icd9_code", ["1,5,11,1,4019"])
    write("D_ICD_DIAGNOSES", "row_id,icd9_code,short_title,long_title", ["1,4019,Hypertension,x"])
    chart = [
        f"{i},5,{hadm},{icu},{item},{time},{value},{uom}"
        for i, (item, time, value, uom, icu, hadm) in enumerate(CHART_ROWS, start=1)
    ]
    write("CHARTEVENTS", CHART_HEADER, chart)
    labs = [
        f"{i},5,{hadm},{item},{time},{value},{uom}"
        for i, (item, time, value, uom, hadm) in enumerate(LAB_ROWS, start=1)
    ]
    write("LABEVENTS", "row_id,subject_id,hadm_id,itemid,charttime,value,valueuom", labs)
    write(
        "OUTPUTEVENTS",
        "row_id,subject_id,hadm_id,icustay_id,charttime,itemid,value,valueuom",
        ["1,5,11,1,2150-01-01 11:00:00,40055,200,ml"],
    )
    return folder


@pytest.fixture(scope="module")
def tiny_features(tmp_path_factory) -> Path:
    src = write_tiny_mimic(tmp_path_factory.mktemp("tiny") / "mimic")
    out = src.parent / "features"
    # Everything in train so the one stay is the one we look at: with one subject, any
    # share below 0.5 rounds to no subject.
    extract(src, out, seed=0, val_fraction=0.01, test_fraction=0.01, progress=False)
    return out


def column(name: str) -> int:
    return channel_names().index(name)


def test_hand_checked_stay(tiny_features):
    grid = np.load(tiny_features / "grid.npy", allow_pickle=False)
    assert grid.shape == (1, 48, 76) and grid.dtype == np.float32
    g = grid[0]
    hr = g[:, column("Heart Rate")]
    hr_mask = g[:, column("mask->Heart Rate")]
    assert hr[0] == 80 and hr[1] == 95 and hr[2] == 86
    assert np.all(hr[3:47] == 86)  # carried forward
    assert hr[47] == 70  # the value at exactly 48 h
    assert hr_mask[:3].tolist() == [1, 1, 1] and hr_mask[3:47].sum() == 0 and hr_mask[47] == 1
    rr = g[:, column("Respiratory rate")]
    assert np.all(rr[:3] == 19)  # normal value until the first observation
    assert np.all(rr[3:] == 22)  # recovered ICUSTAY_ID; the foreign admission's 40 dropped
    temp = g[:, column("Temperature")]
    np.testing.assert_allclose(temp[0], 37.0, atol=1e-5)
    np.testing.assert_allclose(temp[10:], 36.0)
    # 15:00 is exactly 5 h after INTIME: bin int(5 - 1e-6) = 4, as in the benchmark.
    assert np.all(g[:4, column("Systolic blood pressure")] == 118)
    assert np.all(g[4:, column("Systolic blood pressure")] == 120)
    fio2 = g[:, column("Fraction inspired oxygen")]
    np.testing.assert_allclose(fio2[:6], 0.21)
    np.testing.assert_allclose(fio2[6:], 0.5)
    assert g[:, column("mask->Fraction inspired oxygen")].sum() == 1  # "NA" was dropped
    eye_normal = g[:, column("Glascow coma scale eye opening->4 Spontaneously")]
    eye_speech = g[:, column("Glascow coma scale eye opening->3 To speech")]
    assert eye_normal[0] == 1 and np.all(eye_normal[1:] == 0)  # 12:00 = 2 h -> bin 1
    assert eye_speech[0] == 0 and np.all(eye_speech[1:] == 1)
    eye = "Glascow coma scale eye"
    eye_columns = [i for i, n in enumerate(channel_names()) if n.startswith(eye)]
    assert np.all(g[:, eye_columns].sum(axis=1) == 1)  # exactly one category per hour
    assert np.all(g[:8, column("Capillary refill rate->0.0")] == 1)
    assert np.all(g[8:, column("Capillary refill rate->1.0")] == 1)
    glucose = g[:, column("Glucose")]
    assert np.all(glucose[:11] == 128) and np.all(glucose[11:] == 140)
    ph = g[:, column("pH")]
    np.testing.assert_allclose(ph[:30], 7.4)
    np.testing.assert_allclose(ph[30:], 7.31, rtol=1e-6)
    # Variables never observed keep their normal value and an empty mask.
    assert np.all(g[:, column("Weight")] == 81) and g[:, column("mask->Weight")].sum() == 0


def test_stay_row_and_label(tiny_features):
    stays = pl.read_parquet(tiny_features / "stays.parquet")
    row = stays.row(0, named=True)
    assert row["icustay_id"] == 1 and row["label"] == 1  # death at discharge, in hospital
    assert row["length_hours"] == pytest.approx(60.0)
    assert row["split"] == "train"
    assert row["n_events"] == 15


def test_channels_and_normaliser(tiny_features):
    manifest = load_manifest(tiny_features)
    names = manifest.channels
    assert len(names) == 76 and list(names) == channel_names()
    assert sum("->" not in n for n in names) == 12
    assert sum(n.startswith("mask->") for n in names) == 17
    grid = np.load(tiny_features / "grid.npy", allow_pickle=False)
    expected = fit_normaliser(grid)
    assert manifest.normaliser.means == pytest.approx(expected["means"])
    x, y, stays = load_split(tiny_features, "train")
    assert x.shape == (1, 48, 76) and y.tolist() == [1.0]
    means = np.asarray(manifest.normaliser.means)
    stds = np.asarray(manifest.normaliser.stds)
    normalised = np.asarray(manifest.normaliser.normalised)
    np.testing.assert_allclose(
        x.numpy()[0][:, normalised], ((grid[0] - means) / stds)[:, normalised], atol=1e-4
    )
    # Masks and one-hot columns are passed through untouched.
    np.testing.assert_array_equal(x.numpy()[0][:, ~normalised], grid[0][:, ~normalised])


def test_uppercase_headers_give_the_same_grid(tmp_path, tiny_features):
    src = write_tiny_mimic(tmp_path / "upper", upper=True)
    extract(src, tmp_path / "out", val_fraction=0.01, test_fraction=0.01, progress=False)
    a = np.load(tmp_path / "out" / "grid.npy")
    b = np.load(tiny_features / "grid.npy")
    np.testing.assert_array_equal(a, b)


def test_normaliser_uses_training_rows_only():
    rng = np.random.default_rng(0)
    grid = rng.normal(5.0, 2.0, size=(30, 48, 76)).astype(np.float32)
    stats = fit_normaliser(grid)
    flat = grid.reshape(-1, 76).astype(np.float64)
    hr = column("Heart Rate")
    assert stats["means"][hr] == pytest.approx(flat[:, hr].mean())
    assert stats["stds"][hr] == pytest.approx(flat[:, hr].std(ddof=1))
    mask = column("mask->Heart Rate")
    assert stats["means"][mask] == 0.0 and stats["stds"][mask] == 1.0
    # Fitting on a subset of rows (the training split) sees only those rows.
    subset = fit_normaliser(grid, np.arange(10))
    assert subset["means"] == pytest.approx(fit_normaliser(grid[:10])["means"])
    assert subset["means"][hr] == pytest.approx(flat.reshape(30, 48, 76)[:10, :, hr].mean())
