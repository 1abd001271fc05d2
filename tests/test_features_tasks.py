"""The whole-stay tasks (decompensation, length of stay, phenotyping) on hand-built stays.

Every expected sample below was worked out by hand from the benchmark's definitions
(features/mimic/tasks.py's docstring): hours t with 4 < t, t after the first event and
t < end + 1e-6, where end is the LOS (length of stay) or min(LOS, DEATHTIME) (decompensation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features.mimic.extract import extract, extract_all
from features.mimic.loader import FeatureFolderError, load_split, load_task_split
from features.mimic.tables import MimicInputError
from features.mimic.tasks import los_bucket, phenotype_names
from features.mimic.variables import channel_names

T0 = "2150-01-01 10:00:00"
# subject, hadm, icustay, intime, outtime, los (days), deathtime, dod
STAYS = [
    # A: dies 30.5 h after INTIME, LOS 31 h.
    (1, 11, 101, T0, "2150-01-02 17:00:00", 31 / 24, "2150-01-02 16:30:00", ""),
    # B: survives, LOS 200 h, first event at 6.5 h.
    (2, 12, 102, T0, "2150-01-09 18:00:00", 200 / 24, "", ""),
    # C: in-hospital death known only from DOD (no DEATHTIME), LOS 10 h.
    (3, 13, 103, T0, "2150-01-01 20:00:00", 10 / 24, "", "2150-01-01 00:00:00"),
    # D: its only diagnosis code is unknown to D_ICD_DIAGNOSES: not in the cohort.
    (4, 14, 104, T0, "2150-01-03 10:00:00", 2.0, "", ""),
]
# subject, hadm, icustay, hours after T0, heart rate
EVENTS = [
    (1, 11, 101, 0.5, 80),
    (1, 11, 101, 10.0, 90),
    (1, 11, 101, 20.25, 100),
    (2, 12, 102, 6.5, 70),
    (2, 12, 102, 150.0, 75),
    (3, 13, 103, 1.0, 60),
    (4, 14, 104, 1.0, 60),
]
# subject, hadm, code: A has hypertension (4019) and acute renal failure (5849) and a code
# the dictionary lacks (labelled nothing); B has diabetes without complication (25000).
DIAGNOSES = [(1, 11, "4019"), (1, 11, "5849"), (1, 11, "99999"), (2, 12, "25000"), (3, 13, "4019")]
DIAGNOSES += [(4, 14, "99999")]
KNOWN_CODES = ["4019", "5849", "25000"]


def _time(hours: float) -> str:
    base = np.datetime64("2150-01-01T10:00:00")
    stamp = base + np.timedelta64(int(round(hours * 3600)), "s")
    return str(stamp).replace("T", " ")


def write_stays(folder: Path) -> Path:
    """Four patients, one admission and one ICU stay each, heart rate events only."""
    folder.mkdir(parents=True, exist_ok=True)

    def write(name: str, header: str, rows: list[str]) -> None:
        (folder / f"{name}.csv").write_text("\n".join([header, *rows]) + "\n")

    write(
        "PATIENTS",
        "row_id,subject_id,gender,dob,dod",
        [f"{s},{s},F,2080-01-01 00:00:00,{dod}" for s, *_, dod in STAYS],
    )
    write(
        "ADMISSIONS",
        "row_id,subject_id,hadm_id,admittime,dischtime,deathtime,ethnicity",
        [
            f"{s},{s},{h},2150-01-01 08:00:00,{death or '2150-01-20 08:00:00'},{death},WHITE"
            for s, h, _, _, _, _, death, _ in STAYS
        ],
    )
    write(
        "ICUSTAYS",
        "row_id,subject_id,hadm_id,icustay_id,dbsource,first_careunit,last_careunit,"
        "first_wardid,last_wardid,intime,outtime,los",
        [
            f"{s},{s},{h},{i},carevue,MICU,MICU,7,7,{intime},{outtime},{los!r}"
            for s, h, i, intime, outtime, los, _, _ in STAYS
        ],
    )
    write(
        "DIAGNOSES_ICD",
        "row_id,subject_id,hadm_id,seq_num,icd9_code",
        [f"{n},{s},{h},1,{code}" for n, (s, h, code) in enumerate(DIAGNOSES, start=1)],
    )
    write(
        "D_ICD_DIAGNOSES",
        "row_id,icd9_code,short_title,long_title",
        [f"{n},{code},t,t" for n, code in enumerate(KNOWN_CODES, start=1)],
    )
    write(
        "CHARTEVENTS",
        "row_id,subject_id,hadm_id,icustay_id,itemid,charttime,value,valueuom",
        [
            f"{n},{s},{h},{i},211,{_time(t)},{v},bpm"
            for n, (s, h, i, t, v) in enumerate(EVENTS, start=1)
        ],
    )
    # One glucose lab for A; one urine output (not one of the 17 variables).
    write(
        "LABEVENTS",
        "row_id,subject_id,hadm_id,itemid,charttime,value,valueuom",
        [f"1,1,11,50931,{_time(2.0)},140,mg/dL"],
    )
    write(
        "OUTPUTEVENTS",
        "row_id,subject_id,hadm_id,icustay_id,charttime,itemid,value,valueuom",
        [f"1,1,11,101,{_time(3.0)},40055,200,ml"],
    )
    return folder


@pytest.fixture(scope="module")
def task_folders(tmp_path_factory) -> Path:
    src = write_stays(tmp_path_factory.mktemp("tasks") / "mimic")
    out = src.parent / "features"
    # Everything in train: each stay is one subject; tiny shares give no val/test subject.
    extract_all(src, out, val_fraction=0.01, test_fraction=0.01, progress=False)
    return out


def _samples(folder: Path) -> pl.DataFrame:
    return pl.read_parquet(folder / "samples.parquet")


def test_decompensation_samples_and_labels(task_folders):
    samples = _samples(task_folders / "decompensation")
    a = samples.filter(pl.col("icustay_id") == 101)
    # Up to the death at 30.5 h: t = 5..30; death within 24 h from t = 7 (30.5 - 7 < 24).
    assert a["hour"].to_list() == list(range(5, 31))
    assert a["label"].to_list() == [0, 0] + [1] * 24
    b = samples.filter(pl.col("icustay_id") == 102)
    # First event at 6.5 h: from t = 7; t = 200 < 200 + 1e-6 is the last.
    assert b["hour"].to_list() == list(range(7, 201)) and b["label"].sum() == 0
    c = samples.filter(pl.col("icustay_id") == 103)
    # Died in hospital (DOD) but without a DEATHTIME: samples to the LOS, all 0.
    assert c["hour"].to_list() == list(range(5, 11)) and c["label"].sum() == 0
    assert 104 not in samples["icustay_id"].to_list()


def test_length_of_stay_samples_and_buckets(task_folders):
    samples = _samples(task_folders / "length-of-stay")
    a = samples.filter(pl.col("icustay_id") == 101)
    # Not cut at death: t = 5..31, remaining 31 - t.
    assert a["hour"].to_list() == list(range(5, 32))
    np.testing.assert_allclose(a["remaining_hours"].to_numpy(), 31.0 - np.arange(5, 32), atol=1e-6)
    # 26 h and 24 h left are day 1 (24 <= x < 48); 23 h is day 0.
    assert a["bucket"].to_list()[:4] == [1, 1, 1, 0]
    b = samples.filter(pl.col("icustay_id") == 102)
    assert b["bucket"][0] == 8 and b["bucket"][-1] == 0  # 193 h = 8.04 days; 0 h
    assert los_bucket(
        np.array([-1e-7, 23.9, 24.0, 191.9, 192.0, 335.9, 336.0, 5000.0])
    ).tolist() == [
        0,
        0,
        1,
        7,
        8,
        8,
        9,
        9,
    ]


def test_phenotype_labels_use_known_codes_only(task_folders):
    samples = _samples(task_folders / "phenotyping")
    assert samples["icustay_id"].to_list() == [101, 102, 103]  # D has no known diagnosis
    names = phenotype_names()
    assert len(names) == 25 and names == tuple(sorted(names))
    rows = {row["icustay_id"]: row for row in samples.iter_rows(named=True)}
    positive = {stay: {n for n in names if row[n]} for stay, row in rows.items()}
    assert positive[101] == {"Essential hypertension", "Acute and unspecified renal failure"}
    assert positive[102] == {"Diabetes mellitus without complication"}
    assert positive[103] == {"Essential hypertension"}


def test_hourly_rows_per_stay_do_not_leak(task_folders):
    folder = task_folders / "decompensation"
    stays = pl.read_parquet(folder / "stays.parquet")
    hourly = np.load(folder / "hourly.npy")
    assert stays["hours"].to_list() == [31, 200, 10]  # int(LOS + 1 - 1e-6)
    assert stays["offset"].to_list() == [0, 31, 231] and hourly.shape == (241, 76)
    hr = hourly[:, channel_names().index("Heart Rate")]
    assert hr[0] == 80 and hr[30] == 100  # A: observed, then carried to its end
    # B starts with the normal value until its first event at 6.5 h (bin 6), not A's 100.
    assert np.all(hr[31 : 31 + 6] == 86) and hr[31 + 6] == 70 and hr[31 + 149] == 75


def test_loader_gives_the_samples_their_stay(task_folders):
    split = load_task_split(task_folders / "decompensation", "train")
    assert split.values.shape == (241, 76) and split.offsets.tolist() == [0, 31, 231, 241]
    lengths = np.diff(split.offsets)
    assert np.all(split.hour <= lengths[split.stay]) and np.all(split.hour >= 5)
    assert split.target.sum() == 24
    pheno = load_task_split(task_folders / "phenotyping", "train")
    assert pheno.target.shape == (3, 25) and pheno.hour.tolist() == [31, 200, 10]
    los = load_task_split(task_folders / "length-of-stay", "train")
    assert los.remaining_hours is not None and len(los.remaining_hours) == len(los.target)


def test_ihm_folder_of_extract_all_equals_extract(task_folders, tmp_path):
    # In-hospital mortality keeps the stays of 48 h or more with a known diagnosis: B (D is
    # 48 h long, but its only code is unknown to D_ICD_DIAGNOSES, as in the benchmark).
    src = task_folders.parent / "mimic"
    alone = tmp_path / "ihm"
    extract(src, alone, val_fraction=0.01, test_fraction=0.01, progress=False)
    np.testing.assert_array_equal(
        np.load(alone / "grid.npy"), np.load(task_folders / "ihm" / "grid.npy")
    )
    ihm = pl.read_parquet(alone / "stays.parquet")["icustay_id"].to_list()
    assert ihm == [102]


def test_folders_of_one_task_are_refused_by_another(task_folders, tmp_path):
    with pytest.raises(FeatureFolderError, match="is a decompensation feature folder"):
        load_split(task_folders / "decompensation", "train")
    with pytest.raises(FeatureFolderError, match="in-hospital-mortality feature folder"):
        load_task_split(task_folders / "ihm", "train")
    src = task_folders.parent / "mimic"
    with pytest.raises(MimicInputError, match="holds the feature folder of task phenotyping"):
        extract(src, task_folders / "phenotyping", task="decompensation", progress=False)
    with pytest.raises(ValueError, match="task: expected one of"):
        extract(src, tmp_path / "x", task="sepsis", progress=False)


def test_missing_code_dictionary_is_named(tmp_path):
    src = write_stays(tmp_path / "mimic")
    (src / "D_ICD_DIAGNOSES.csv").unlink()
    with pytest.raises(MimicInputError, match="D_ICD_DIAGNOSES"):
        extract(src, tmp_path / "out", task="phenotyping", progress=False)
    assert not (tmp_path / "out").exists()


def test_scoring_a_stay_still_in_the_icu_reads_every_hour_so_far(tmp_path):
    from datetime import datetime

    from features.mimic.extract import extract_for_scoring
    from features.mimic.loader import load_manifest, load_task_for_scoring

    src = write_stays(tmp_path / "mimic")
    # B is still in the ICU: no OUTTIME or LOS, and no outcome columns at all.
    icu = (src / "ICUSTAYS.csv").read_text().splitlines()
    icu = [line if not line.startswith("2,") else line.rsplit(",", 2)[0] + ",," for line in icu]
    (src / "ICUSTAYS.csv").write_text("\n".join(icu) + "\n")
    out = tmp_path / "ward"
    manifest = extract_for_scoring(
        src, out, task="decompensation", as_of=datetime(2150, 1, 2, 10, 0), progress=False
    )
    assert manifest.purpose == "scoring" and manifest.split is None
    stays = pl.read_parquet(out / "stays.parquet")
    b = stays.filter(pl.col("icustay_id") == 102)
    # 24 h since INTIME at as_of: 24 hourly rows; no diagnosis rule, so D is scored too.
    assert b["in_icu"][0] and b["hours"][0] == 24 and 104 in stays["icustay_id"].to_list()
    samples = pl.read_parquet(out / "samples.parquet")
    assert samples.filter(pl.col("icustay_id") == 102)["hour"].to_list() == list(range(7, 25))
    assert "label" not in samples.columns
    trained = tmp_path / "trained"
    extract(write_stays(tmp_path / "train-src"), trained, task="decompensation", progress=False)
    split = load_task_for_scoring(out, load_manifest(trained).normaliser)
    assert split.target is None and split.values.shape == (int(stays["hours"].sum()), 76)
    with pytest.raises(FeatureFolderError, match="is a scoring folder"):
        load_task_split(out, "train")


def test_synthetic_truth_reaches_the_task_folders(tmp_path):
    from features.synthetic import generate

    generate(tmp_path / "mimic", patients=300, seed=1)
    extract_all(
        tmp_path / "mimic", tmp_path / "f", tasks=("decompensation", "phenotyping"), progress=False
    )
    samples = pl.read_parquet(tmp_path / "f" / "decompensation" / "samples.parquet")
    # Every sample has its planted 24-h risk, and the positives are where it is high.
    assert samples["true_decomp_risk"].null_count() == 0
    positives = samples.filter(pl.col("label") == 1)["true_decomp_risk"]
    assert positives.len() > 0 and positives.min() > 0
    assert samples["true_decomp_risk"].mean() == pytest.approx(samples["label"].mean(), abs=0.01)
    stays = pl.read_parquet(tmp_path / "f" / "phenotyping" / "stays.parquet")
    assert {"true_los_hours", "true_pheno_0", "true_pheno_24"} <= set(stays.columns)


def test_extract_all_writes_the_hourly_rows_once(task_folders):
    # The three whole-stay folders share one hourly.npy (hard links), owner-only.
    files = [task_folders / task / "hourly.npy" for task in ("decompensation", "phenotyping")]
    first, second = (path.stat() for path in files)
    assert first.st_ino == second.st_ino and first.st_nlink == 3
    assert first.st_mode & 0o777 == 0o600
