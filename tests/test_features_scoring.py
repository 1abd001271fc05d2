"""Scoring-mode extraction: new patients, no outcome, the trained model's normaliser.

The reference is the training extraction of the same tables: for every stay both keep, the
stays' columns and the raw grids must be identical; scoring may keep more stays (no
"with diagnoses" rule, stays still in the ICU) and says, in counts only, why it skipped
the others.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from features.mimic.cohort import root_stays
from features.mimic.extract import extract, extract_for_scoring
from features.mimic.grid import apply_normaliser
from features.mimic.loader import load_for_scoring, load_split
from features.mimic.manifest import (
    MANIFEST_FILE,
    SCORING_SOURCE_TABLES,
    FeatureFolderError,
    load_manifest,
)
from features.mimic.tables import (
    EVENT_TABLES,
    OUTCOME_COLUMNS,
    SCORING_RULES,
    MimicInputError,
    TableRules,
    read_table,
    scan_table,
)
from features.mimic.variables import item_frame
from features.synthetic import generate

#: Columns a scoring stays table shares with a training one.
SHARED_COLUMNS = [
    "subject_id",
    "hadm_id",
    "icustay_id",
    "length_hours",
    "age",
    "gender",
    "dbsource",
    "intime",
    "outtime",
    "ethnicity",
    "n_events",
    "true_risk",
]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def edit_csv(path: Path, change) -> None:
    """Rewrite a CSV with ``change(frame)`` applied; every cell is read and written as text."""
    frame = pl.read_csv(path, infer_schema=False)
    change(frame).write_csv(path)


def without_outcome(src: Path, dst: Path) -> Path:
    """A copy of an export with DEATHTIME and DOD removed from the CSVs entirely."""
    shutil.copytree(src, dst)
    edit_csv(dst / "ADMISSIONS.csv", lambda f: f.drop("DEATHTIME"))
    edit_csv(dst / "PATIENTS.csv", lambda f: f.drop("DOD"))
    return dst


def still_in_icu(folder: Path, icustay_id: int, hadm_id: int) -> None:
    """Blank the stay's OUTTIME and LOS and its admission's DISCHTIME."""
    blank = pl.lit(None, pl.String)
    edit_csv(
        folder / "ICUSTAYS.csv",
        lambda f: f.with_columns(
            [
                pl.when(pl.col("ICUSTAY_ID") == str(icustay_id)).then(blank).otherwise(c).alias(c)
                for c in ("OUTTIME", "LOS")
            ]
        ),
    )
    edit_csv(
        folder / "ADMISSIONS.csv",
        lambda f: f.with_columns(
            DISCHTIME=pl.when(pl.col("HADM_ID") == str(hadm_id))
            .then(blank)
            .otherwise(pl.col("DISCHTIME"))
        ),
    )


def newest_event(mimic_dir: Path) -> datetime:
    """The newest CHARTTIME of the 17 variables' events with an admission of the root
    cohort's patients, computed directly."""
    items = item_frame()["itemid"].to_list()
    subjects = root_stays(mimic_dir, rules=SCORING_RULES)[0]["subject_id"].implode()
    times = [
        scan_table(mimic_dir, table)
        .filter(
            pl.col("itemid").is_in(items)
            & pl.col("hadm_id").is_not_null()
            & pl.col("subject_id").is_in(subjects)
        )
        .select(pl.col("charttime").max())
        .collect()
        .item()
        for table in EVENT_TABLES
    ]
    return max(time for time in times if time is not None)


def steps_of(manifest) -> dict[str, int]:
    return {step.step: step.stays for step in manifest.cohort.steps}


def assert_same_as_training(scoring_dir: Path, training_dir: Path) -> tuple[set, set]:
    """Shared stays have identical rows and grids; return (scoring ids, training ids)."""
    scoring = pl.read_parquet(scoring_dir / "stays.parquet")
    training = pl.read_parquet(training_dir / "stays.parquet")
    scoring_ids = set(scoring["icustay_id"].to_list())
    training_ids = set(training["icustay_id"].to_list())
    assert training_ids <= scoring_ids
    columns = [c for c in SHARED_COLUMNS if c in training.columns]
    shared = scoring.filter(pl.col("icustay_id").is_in(list(training_ids)))
    assert shared.select(columns).equals(training.select(columns))  # same order too
    rows = np.flatnonzero(scoring["icustay_id"].is_in(list(training_ids)).to_numpy())
    scoring_grid = np.load(scoring_dir / "grid.npy")
    training_grid = np.load(training_dir / "grid.npy")
    np.testing.assert_array_equal(scoring_grid[rows], training_grid)
    assert scoring_grid.dtype == np.float32 and scoring_grid.shape[1:] == (48, 76)
    return scoring_ids, training_ids


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("scoring") / "mimic"
    generate(folder, patients=60, seed=5)
    return folder


@pytest.fixture(scope="module")
def training(synth) -> tuple[Path, object]:
    out = synth.parent / "training"
    return out, extract(synth, out, seed=0, progress=False)


@pytest.fixture(scope="module")
def outcome_free(synth) -> Path:
    return without_outcome(synth, synth.parent / "outcome_free")


@pytest.fixture(scope="module")
def scoring(outcome_free) -> tuple[Path, object]:
    out = outcome_free.parent / "scoring"
    return out, extract_for_scoring(outcome_free, out, progress=False)


def test_an_export_without_outcome_scores_like_training(synth, training, outcome_free, scoring):
    (train_dir, train_manifest), (out, manifest) = training, scoring
    scoring_ids, training_ids = assert_same_as_training(out, train_dir)
    # The extra stays are exactly those of admissions without an ICD-9 code.
    diagnosed = set(read_table(synth, "DIAGNOSES_ICD")["hadm_id"].to_list())
    stays = pl.read_parquet(out / "stays.parquet")
    extra = stays.filter(~pl.col("icustay_id").is_in(list(training_ids)))
    assert not set(extra["hadm_id"].to_list()) & diagnosed
    train_steps, steps = steps_of(train_manifest), steps_of(manifest)
    dropped_for_diagnoses = train_steps["length_of_stay_48h"] - train_steps["with_diagnoses"]
    assert len(scoring_ids - training_ids) == dropped_for_diagnoses > 0
    assert "with_diagnoses" not in steps
    assert steps["length_of_stay_48h"] == train_steps["length_of_stay_48h"]
    assert steps["events_in_first_48h"] == manifest.stays == stays.height


def test_the_scoring_stays_table_and_manifest(outcome_free, scoring):
    out, manifest = scoring
    stays = pl.read_parquet(out / "stays.parquet")
    assert stays.columns == [*SHARED_COLUMNS[:4], "in_icu", *SHARED_COLUMNS[4:]]
    assert not stays["in_icu"].any()  # every synthetic stay has left the ICU
    assert manifest.purpose == "scoring"
    assert manifest.split is None and manifest.normaliser is None and manifest.positives is None
    assert manifest.as_of == newest_event(outcome_free)
    assert set(manifest.source.tables) == set(SCORING_SOURCE_TABLES)  # no DIAGNOSES_ICD
    adults = steps_of(manifest)["adults"]
    skipped = manifest.skipped
    assert skipped.in_icu_under_48h == 0 and skipped.discharged_under_48h > 0
    total = skipped.discharged_under_48h + skipped.in_icu_under_48h
    assert total + skipped.no_event_in_first_48h == adults - manifest.stays
    raw = json.loads((out / MANIFEST_FILE).read_text())
    assert raw["purpose"] == "scoring" and raw["as_of"] == manifest.as_of.isoformat()
    assert not {"split", "normaliser", "positives"} & set(raw)
    assert load_manifest(out) == manifest
    assert manifest.to_json() == (out / MANIFEST_FILE).read_text()


def test_training_still_requires_the_outcome(tmp_path, outcome_free, training):
    with pytest.raises(MimicInputError, match=r"table PATIENTS lacks column\(s\) dod"):
        extract(outcome_free, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    raw = json.loads((training[0] / MANIFEST_FILE).read_text())
    # A training manifest holds the keys it always held.
    assert "purpose" not in raw and not {"as_of", "skipped"} & set(raw)
    assert training[1].purpose == "training"


def test_optional_columns_are_read_as_null(outcome_free):
    patients = read_table(outcome_free, "PATIENTS", rules=SCORING_RULES)
    assert patients["dod"].dtype == pl.Datetime("us") and patients["dod"].is_null().all()
    with pytest.raises(MimicInputError, match=r"lacks column\(s\) dod"):
        read_table(outcome_free, "PATIENTS")


def _in_icu_case(outcome_free, scoring, tmp_path) -> tuple[Path, dict]:
    """A copy of the export with one scored stay edited to be still in the ICU."""
    stays = pl.read_parquet(scoring[0] / "stays.parquet").sort("intime")
    stay = stays.row(0, named=True)  # the earliest: the newest event is long after it
    folder = tmp_path / "mimic"
    shutil.copytree(outcome_free, folder)
    still_in_icu(folder, stay["icustay_id"], stay["hadm_id"])
    return folder, stay


def test_a_stay_in_the_icu_counts_once_48_hours_old(tmp_path, outcome_free, scoring):
    folder, stay = _in_icu_case(outcome_free, scoring, tmp_path)
    # Training's rules (were the outcome columns there) need DISCHTIME; scoring's do not.
    with pytest.raises(MimicInputError, match=r"line \d+, column dischtime: is empty"):
        read_table(folder, "ADMISSIONS", rules=TableRules(optional=OUTCOME_COLUMNS))

    as_of = stay["intime"] + timedelta(hours=50)
    manifest = extract_for_scoring(folder, tmp_path / "in", as_of=as_of, progress=False)
    stays = pl.read_parquet(tmp_path / "in" / "stays.parquet")
    row = stays.filter(pl.col("icustay_id") == stay["icustay_id"]).row(0, named=True)
    assert row["in_icu"] and row["outtime"] is None
    assert row["length_hours"] == pytest.approx(50.0)
    assert manifest.as_of == as_of and manifest.skipped.in_icu_under_48h == 0
    assert manifest.stays == scoring[1].stays
    # Its events are those of the discharged original: its first 48 h lie inside the stay.
    before = pl.read_parquet(scoring[0] / "stays.parquet")["icustay_id"].to_list()
    after = stays["icustay_id"].to_list()
    np.testing.assert_array_equal(
        np.load(tmp_path / "in" / "grid.npy")[after.index(stay["icustay_id"])],
        np.load(scoring[0] / "grid.npy")[before.index(stay["icustay_id"])],
    )

    early = stay["intime"] + timedelta(hours=47)
    manifest = extract_for_scoring(folder, tmp_path / "early", as_of=early, progress=False)
    stays = pl.read_parquet(tmp_path / "early" / "stays.parquet")
    assert stay["icustay_id"] not in stays["icustay_id"].to_list()
    assert manifest.skipped.in_icu_under_48h == 1
    assert manifest.stays == scoring[1].stays - 1


def test_the_default_as_of_is_the_newest_event(tmp_path, outcome_free, scoring):
    folder, stay = _in_icu_case(outcome_free, scoring, tmp_path)
    manifest = extract_for_scoring(folder, tmp_path / "out", progress=False)
    assert manifest.as_of == newest_event(folder)
    stays = pl.read_parquet(tmp_path / "out" / "stays.parquet")
    row = stays.filter(pl.col("icustay_id") == stay["icustay_id"]).row(0, named=True)
    hours = (manifest.as_of - stay["intime"]).total_seconds() / 3600
    assert hours >= 48 and row["in_icu"] and row["length_hours"] == pytest.approx(hours)


def _all_short(folder: Path) -> datetime | None:
    edit_csv(folder / "ICUSTAYS.csv", lambda f: f.with_columns(LOS=pl.lit("1.5")))
    return None


def _all_in_icu_at_first_intime(folder: Path) -> datetime:
    blank = pl.lit(None, pl.String)
    edit_csv(folder / "ICUSTAYS.csv", lambda f: f.with_columns(OUTTIME=blank, LOS=blank))
    return read_table(folder, "ICUSTAYS")["intime"].min()


@pytest.mark.parametrize(
    ("edit", "counts"),
    [
        (_all_short, "{adults} left the ICU under 48 h, 0 are still in the ICU under 48 h"),
        (_all_in_icu_at_first_intime, "0 left the ICU under 48 h, {adults} are still in the ICU"),
    ],
)
def test_no_stay_reaching_48_hours_is_one_line_and_writes_nothing(
    tmp_path, outcome_free, scoring, edit, counts
):
    folder = tmp_path / "mimic"
    shutil.copytree(outcome_free, folder)
    as_of = edit(folder)
    out = tmp_path / "parent" / "features"
    with pytest.raises(MimicInputError) as info:
        extract_for_scoring(folder, out, as_of=as_of, progress=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{folder}: no ICU stay reaches 48 hours")
    assert counts.format(adults=steps_of(scoring[1])["adults"]) in message
    assert "0 have no event in the first 48 h" in message
    assert not out.exists()
    assert not out.parent.exists() or not list(out.parent.iterdir())


def test_a_time_zone_in_as_of_is_refused_before_any_work(tmp_path):
    from datetime import UTC

    with pytest.raises(ValueError, match="as_of must be a naive datetime"):
        extract_for_scoring(tmp_path / "nowhere", tmp_path / "out", as_of=datetime.now(UTC))


def test_load_for_scoring_on_a_training_folder_equals_load_split(training):
    folder, manifest = training
    normaliser = manifest.normaliser.model_dump()
    for split in ("train", "val", "test"):
        x, _, part = load_split(folder, split)
        same, stays = load_for_scoring(folder, normaliser, split=split)
        assert same.dtype == torch.float32 and torch.equal(same, x)
        assert stays.equals(part)
    every, stays = load_for_scoring(folder, manifest.normaliser)
    assert every.shape == (manifest.stays, 48, 76) and stays.height == manifest.stays


def test_load_for_scoring_applies_the_given_normaliser(training, scoring):
    (train_dir, train_manifest), (out, manifest) = training, scoring
    normaliser = train_manifest.normaliser.model_dump()
    x, stays = load_for_scoring(out, normaliser)
    assert x.shape == (manifest.stays, 48, 76) and x.dtype == torch.float32
    expected = apply_normaliser(np.load(out / "grid.npy"), normaliser)
    assert torch.equal(x, torch.from_numpy(expected))
    # A stay in both folders is seen by the model exactly as in training.
    x_train, _, part = load_split(train_dir, "train")
    ids = stays["icustay_id"].to_list()
    rows = [ids.index(stay) for stay in part["icustay_id"].to_list()]
    assert torch.equal(x[rows], x_train)


def test_loading_a_scoring_folder_wrongly_is_one_line(scoring, training):
    out, _ = scoring
    normaliser = training[1].normaliser.model_dump()
    with pytest.raises(FeatureFolderError) as info:
        load_split(out, "train")
    message = str(info.value)
    assert message.startswith(f"{out / MANIFEST_FILE}: is a scoring folder (no labels or splits)")
    with pytest.raises(FeatureFolderError, match="is a scoring folder"):
        load_for_scoring(out, normaliser, split="test")
    short = {**normaliser, "means": normaliser["means"][:-1]}
    with pytest.raises(ValueError, match=r"normaliser: 75 means, 76 stds, 76 normalised, but "):
        load_for_scoring(out, short)
    with pytest.raises(ValueError, match="stds must be finite numbers > 0"):
        load_for_scoring(out, {**normaliser, "stds": [0.0] * 76})
    with pytest.raises(ValueError, match="normaliser: lacks stds"):
        load_for_scoring(out, {"means": normaliser["means"]})


def test_scoring_files_are_owner_only(scoring):
    out, _ = scoring
    assert mode(out) == 0o700
    for name in ("stays.parquet", "grid.npy", MANIFEST_FILE):
        assert mode(out / name) == 0o600


def test_a_scoring_folder_is_replaced_but_never_a_training_one(tmp_path, outcome_free, training):
    out = tmp_path / "scoring"
    first = extract_for_scoring(outcome_free, out, progress=False)
    again = extract_for_scoring(outcome_free, out, progress=False)  # ours: replaced
    assert again.stays == first.stays and load_manifest(out) == again
    train_copy = tmp_path / "training"
    shutil.copytree(training[0], train_copy)
    before = {p.name: p.read_bytes() for p in train_copy.iterdir()}
    with pytest.raises(MimicInputError) as info:
        extract_for_scoring(outcome_free, train_copy, progress=False)
    assert str(info.value) == (
        f"{train_copy}: output folder holds a training feature folder; refusing to replace "
        "it with a scoring one (choose another output folder)"
    )
    assert {p.name: p.read_bytes() for p in train_copy.iterdir()} == before
    with pytest.raises(MimicInputError, match="holds a scoring feature folder; refusing"):
        extract(training[0].parent / "mimic", out, progress=False)
    assert load_manifest(out) == again
    assert load_manifest(out).outdated_reason(
        outcome_free, seed=0, val_fraction=0.15, test_fraction=0.15
    ) == ("the folder holds scoring features, not training ones")


def _manifest_folder(tmp_path: Path, raw: dict) -> Path:
    folder = tmp_path / "features"
    folder.mkdir()
    (folder / MANIFEST_FILE).write_text(json.dumps(raw))
    return folder


@pytest.mark.parametrize(
    ("source", "change", "expected"),
    [
        ("training", lambda raw: raw.pop("normaliser"), "a training folder needs normaliser"),
        ("training", lambda raw: raw.update(as_of="2150-01-01T00:00:00"), "has no as_of"),
        ("scoring", lambda raw: raw.pop("skipped"), "a scoring folder needs skipped"),
        ("scoring", lambda raw: raw.update(positives=3), "a scoring folder has no positives"),
        ("scoring", lambda raw: raw.pop("purpose"), "a training folder needs positives, split"),
    ],
)
def test_each_purpose_has_exactly_its_own_fields(
    tmp_path, training, scoring, source, change, expected
):
    folder = training[0] if source == "training" else scoring[0]
    raw = json.loads((folder / MANIFEST_FILE).read_text())
    change(raw)
    with pytest.raises(FeatureFolderError, match=expected) as info:
        load_manifest(_manifest_folder(tmp_path, raw))
    assert "\n" not in str(info.value)


@pytest.mark.demo
def test_on_the_demo_scoring_keeps_every_training_stay(demo_dir, tmp_path):
    train_manifest = extract(demo_dir, tmp_path / "training", seed=0, progress=False)
    manifest = extract_for_scoring(demo_dir, tmp_path / "scoring", progress=False)
    scoring_ids, training_ids = assert_same_as_training(tmp_path / "scoring", tmp_path / "training")
    train_steps, steps = steps_of(train_manifest), steps_of(manifest)
    # The only rule scoring leaves out is "with diagnoses"; the demo has no stay in the ICU.
    dropped_for_diagnoses = train_steps["length_of_stay_48h"] - train_steps["with_diagnoses"]
    assert len(scoring_ids - training_ids) == dropped_for_diagnoses
    for step in ("icu_stays", "no_icu_transfers", "one_icu_stay_per_admission", "adults"):
        assert steps[step] == train_steps[step]
    assert steps["length_of_stay_48h"] == train_steps["length_of_stay_48h"] == 57
    assert manifest.skipped.in_icu_under_48h == 0
    assert manifest.skipped.discharged_under_48h == train_steps["adults"] - 57
    assert manifest.cohort.event_validation == train_manifest.cohort.event_validation
