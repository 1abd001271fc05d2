"""The synthetic MIMIC-III generator: format, determinism and a learnable planted risk."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from features.mimic.extract import extract
from features.mimic.tables import read_header
from features.mimic.variables import load_variables
from features.synthetic import COEFFICIENTS, INTERCEPT, TASK_COLUMNS, generate, planted_risk

TABLES = [
    "PATIENTS",
    "ADMISSIONS",
    "ICUSTAYS",
    "TRANSFERS",
    "CHARTEVENTS",
    "LABEVENTS",
    "OUTPUTEVENTS",
    "D_ITEMS",
    "D_LABITEMS",
    "DIAGNOSES_ICD",
    "D_ICD_DIAGNOSES",
]


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def cohort_3k(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth") / "mimic"
    summary = generate(folder, patients=3000, seed=11)
    features = folder.parent / "features"
    manifest = extract(folder, features, seed=0, progress=False)
    return folder, summary, features, manifest


def test_writes_every_table_in_mimic_format(tmp_path):
    summary = generate(tmp_path / "db", patients=25, seed=1)
    for table in TABLES:
        header = read_header(tmp_path / "db" / f"{table}.csv")
        assert header[0] == "ROW_ID" and all(name == name.upper() for name in header)
    chart = pl.read_csv(tmp_path / "db" / "CHARTEVENTS.csv", infer_schema=False)
    assert chart.height == summary["rows"]["CHARTEVENTS"]
    assert chart["ROW_ID"].cast(pl.Int64).to_list() == list(range(1, chart.height + 1))
    items = set(chart["ITEMID"].cast(pl.Int64).to_list())
    known = {i for v in load_variables() for i in v.itemids}
    assert items & known and items - known  # the 17 variables and other items, as in MIMIC
    assert any(i < 220000 for i in items) and any(i >= 220000 for i in items)
    truth = pl.read_csv(tmp_path / "db" / "synthetic_truth.csv")
    assert truth.columns[:5] == ["subject_id", "hadm_id", "icustay_id", "true_risk", "died"]
    assert truth.columns[5:] == list(TASK_COLUMNS)
    assert truth.height == summary["icustays"]


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    generate(tmp_path / "a", patients=30, seed=5, batch_patients=7)
    generate(tmp_path / "b", patients=30, seed=5, batch_patients=7)
    generate(tmp_path / "c", patients=30, seed=6, batch_patients=7)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a")["CHARTEVENTS.csv"] != digest(tmp_path / "c")["CHARTEVENTS.csv"]


def test_refuses_foreign_folder(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "mine.txt").write_text("data")
    with pytest.raises(ValueError, match="refusing"):
        generate(tmp_path / "x", patients=3)


def test_planted_risk_formula():
    z = {name: np.zeros(2) for name in COEFFICIENTS}
    z["hr"] = np.array([0.0, 1.0])
    risk = planted_risk(z)
    assert risk[0] == pytest.approx(1 / (1 + np.exp(-INTERCEPT)))
    assert risk[1] == pytest.approx(1 / (1 + np.exp(-(INTERCEPT + COEFFICIENTS["hr"]))))


def test_cohort_size_mortality_and_truth(cohort_3k):
    folder, summary, features, manifest = cohort_3k
    assert manifest.stays >= 2000  # enough usable stays from 3,000 patients
    stays = pl.read_parquet(features / "stays.parquet")
    assert 0.08 <= stays["label"].mean() <= 0.16
    assert stays["true_risk"].null_count() == 0
    # The label in the features is the generator's outcome, stay for stay.
    truth = pl.read_csv(folder / "synthetic_truth.csv")
    joined = stays.join(truth, on="icustay_id")
    assert (joined["label"] == joined["died"]).all()
    # Calibration of the planted risk against the drawn outcomes.
    assert abs(stays["true_risk"].mean() - stays["label"].mean()) < 0.02
    steps = [s.step for s in manifest.cohort.steps]
    counts = [s.stays for s in manifest.cohort.steps]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]
    assert steps[0] == "icu_stays"


def test_planted_risk_is_learnable_from_the_grid(cohort_3k):
    _, _, features, manifest = cohort_3k
    stays = pl.read_parquet(features / "stays.parquet")
    grid = np.load(features / "grid.npy")
    channels = manifest.channels
    # A plain logistic model on the 48-hour means of the continuous channels should come
    # close to the planted risk's own AUROC: the signal is in what the grid keeps.
    columns = [i for i, name in enumerate(channels) if "->" not in name]
    x = grid[:, :, columns].mean(axis=1)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-6)
    y = stays["label"].to_numpy()
    train = (stays["split"] != "test").to_numpy()
    model = LogisticRegression(max_iter=1000).fit(x[train], y[train])
    test = ~train
    learned = roc_auc_score(y[test], model.predict_proba(x[test])[:, 1])
    planted = roc_auc_score(y[test], stays["true_risk"].to_numpy()[test])
    assert planted > 0.75
    assert learned > planted - 0.05


def test_empty_user_folder_is_filled_in_place_and_kept(tmp_path):
    # A folder the user made (mode 0755 here) is the user's: it is filled, never replaced.
    out = tmp_path / "given"
    out.mkdir()
    os.chmod(out, 0o755)
    inode = out.stat().st_ino
    generate(out, patients=3, seed=0)
    assert out.stat().st_ino == inode
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert (out / "synthetic_truth.csv").is_file()
    # Rerunning replaces only the generator's own database, and leaves nothing beside it.
    generate(out, patients=4, seed=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["given"]


def test_a_database_with_a_user_file_is_not_replaced(tmp_path):
    generate(tmp_path / "db", patients=3, seed=0)
    (tmp_path / "db" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="refusing"):
        generate(tmp_path / "db", patients=3, seed=1)
    assert (tmp_path / "db" / "notes.txt").read_text() == "mine"
