"""Cohort steps, event validation and the feature folder on the MIMIC-III demo.

The expected numbers are what mimic3-benchmarks (commit ea0314c) gives on the same demo
copy, from ../shared/docs/mimic3-notes.md.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import polars as pl
import pytest

from features.mimic.cohort import root_stays
from features.mimic.events import validation_counts
from features.mimic.extract import extract
from features.mimic.grid import fit_normaliser
from features.mimic.loader import load_manifest, load_split

pytestmark = pytest.mark.demo


@pytest.fixture(scope="module")
def demo_root(demo_dir):
    return root_stays(demo_dir)


@pytest.fixture(scope="module")
def demo_features(demo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "features"
    manifest = extract(demo_dir, out, seed=0, progress=False)
    return out, manifest


def test_root_cohort_steps_match_the_benchmark(demo_root):
    _, steps = demo_root
    counts = {s["step"]: (s["stays"], s["subjects"]) for s in steps}
    assert counts["icu_stays"] == (136, 100)
    assert counts["no_icu_transfers"] == (126, 94)
    assert counts["one_icu_stay_per_admission"] == (115, 90)
    assert counts["adults"] == (114, 89)


def test_ages_and_labels(demo_root):
    stays, _ = demo_root
    assert stays["age"].min() >= 18
    # Shifted over-89 patients are set to exactly 90; no other age exceeds 90.
    assert (stays["age"] == 90.0).sum() > 0
    assert stays["age"].max() == 90.0
    assert set(stays["label"].unique().to_list()) <= {0, 1}


def test_event_validation_matches_the_benchmark(demo_dir, demo_root):
    stays, _ = demo_root
    counts = validation_counts(demo_dir, stays)
    assert counts["n_events"] == 747_793
    assert counts["empty_hadm"] == 13_184
    assert counts["no_hadm_in_stay"] == 86_481
    assert counts["no_icustay"] == 45_336 and counts["recovered"] == 45_336
    assert counts["icustay_missing_in_stays"] == 1_200


def test_in_hospital_mortality_task_counts(demo_features):
    out, manifest = demo_features
    steps = {s.step: s.stays for s in manifest.cohort.steps}
    assert steps["adults"] == 114
    # mimic3-benchmarks keeps 46 + 11 = 57 stays for the task; no stay of the demo is lost
    # to missing diagnoses or to an empty first 48 h once the 48-hour rule has run.
    assert steps["length_of_stay_48h"] == 57
    assert steps["with_diagnoses"] == 57
    assert steps["events_in_first_48h"] == 57
    stays = pl.read_parquet(out / "stays.parquet")
    assert stays.height == 57 and int(stays["label"].sum()) == 17
    assert manifest.stays == 57 and manifest.positives == 17
    assert manifest.cohort.event_validation.n_events == 747_793
    assert (stays["length_hours"] >= 48 - 1e-6).all()


def test_feature_folder_contract(demo_dir, demo_features):
    out, manifest = demo_features
    assert sorted(p.name for p in out.iterdir()) == ["grid.npy", "manifest.json", "stays.parquet"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp left
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["schema_version"] == 1 and on_disk["task"] == "in-hospital-mortality"
    assert load_manifest(out) == manifest
    chart = manifest.source.tables["CHARTEVENTS"]
    raw = (demo_dir / "CHARTEVENTS.csv.gz").read_bytes()
    assert chart.bytes == len(raw) and chart.sha256 == hashlib.sha256(raw).hexdigest()
    stays = pl.read_parquet(out / "stays.parquet")
    for name in (
        "subject_id",
        "hadm_id",
        "icustay_id",
        "label",
        "split",
        "length_hours",
        "age",
        "gender",
        "dbsource",
        "intime",
    ):
        assert name in stays.columns
    grid = np.load(out / "grid.npy", allow_pickle=False)
    assert grid.shape == (57, 48, 76) and grid.dtype == np.float32
    assert np.isfinite(grid).all()
    masks = grid[:, :, -17:]
    assert set(np.unique(masks)) <= {0.0, 1.0}
    # Every stay has at least one observation in its 48 hours.
    assert (masks.sum(axis=(1, 2)) > 0).all()
    train = (stays["split"] == "train").to_numpy()
    refit = fit_normaliser(grid[train])
    assert manifest.normaliser.means == pytest.approx(refit["means"])
    assert manifest.normaliser.stds == pytest.approx(refit["stds"])
    counts = [count for _, count in manifest.split.counts]
    assert sum(c.stays for c in counts) == 57
    assert sum(c.positives for c in counts) == 17


def test_loader_splits_cover_the_folder(demo_features):
    out, _ = demo_features
    stays = pl.read_parquet(out / "stays.parquet")
    total = 0
    for split in ("train", "val", "test"):
        x, y, part = load_split(out, split)
        assert x.dtype.is_floating_point and str(x.dtype) == "torch.float32"
        assert x.shape == (part.height, 48, 76) and y.shape == (part.height,)
        assert (part["split"] == split).all()
        assert y.numpy().tolist() == part["label"].cast(pl.Float32).to_list()
        total += part.height
    assert total == stays.height
    x, _, _ = load_split(out, "train")
    # Continuous columns are z-scored on train: mean about 0 over the training hours.
    hr = load_manifest(out).channels.index("Heart Rate")
    assert abs(float(x[:, :, hr].mean())) < 1e-4


def test_extraction_is_deterministic(demo_dir, demo_features, tmp_path):
    out, manifest = demo_features
    again = extract(demo_dir, tmp_path / "again", seed=0, progress=False)
    assert again.split == manifest.split
    np.testing.assert_array_equal(
        np.load(out / "grid.npy"), np.load(tmp_path / "again" / "grid.npy")
    )
