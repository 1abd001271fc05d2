"""Readers and bad input: every failure names the file (and line and column where it can)
and leaves no output behind."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features.mimic.extract import extract
from features.mimic.tables import (
    MimicInputError,
    read_header,
    read_table,
    scan_table,
    table_path,
)
from features.synthetic import generate


@pytest.fixture(scope="module")
def small_db(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("db") / "mimic"
    generate(folder, patients=40, seed=3)
    return folder


def copy_db(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def assert_no_output(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def replace_line(path: Path, line_no: int, column: str, new_value: str) -> None:
    """Set ``column`` of data row ``line_no`` (1-based) in a CSV without quoting issues."""
    df = pl.read_csv(path, infer_schema=False)
    names = {c.lower(): c for c in df.columns}
    name = names[column]
    values = df[name].to_list()
    values[line_no - 1] = new_value
    df.with_columns(pl.Series(name, values)).write_csv(path)


def test_table_path_accepts_gz_any_case(tmp_path, small_db):
    db = copy_db(small_db, tmp_path / "db")
    with open(db / "PATIENTS.csv", "rb") as src, gzip.open(db / "patients.csv.gz", "wb") as dst:
        dst.write(src.read())
    (db / "PATIENTS.csv").unlink()
    assert table_path(db, "PATIENTS").name == "patients.csv.gz"
    gz = read_table(db, "PATIENTS")
    assert gz.columns == ["subject_id", "gender", "dob", "dod"]
    assert gz.height == 40 and gz.schema["dob"] == pl.Datetime("us")


def test_gzip_and_plain_give_the_same_features(tmp_path, small_db):
    db = copy_db(small_db, tmp_path / "db")
    for name in ("CHARTEVENTS", "LABEVENTS", "ICUSTAYS"):
        src = db / f"{name}.csv"
        with open(src, "rb") as raw, gzip.open(db / f"{name}.csv.gz", "wb") as packed:
            packed.write(raw.read())
        src.unlink()
    extract(small_db, tmp_path / "plain", progress=False)
    extract(db, tmp_path / "gz", progress=False)
    np.testing.assert_array_equal(
        np.load(tmp_path / "plain" / "grid.npy"), np.load(tmp_path / "gz" / "grid.npy")
    )


def test_scan_uses_explicit_dtypes_and_lowercase(small_db):
    header = read_header(table_path(small_db, "CHARTEVENTS"))
    assert header[0] == "ROW_ID"  # the generator writes MIMIC's uppercase headers
    schema = scan_table(small_db, "CHARTEVENTS").collect_schema()
    assert schema["itemid"] == pl.Int64 and schema["charttime"] == pl.Datetime("us")
    assert schema["value"] == pl.String and "row_id" not in schema


def test_missing_table(tmp_path, small_db):
    db = copy_db(small_db, tmp_path / "db")
    (db / "OUTPUTEVENTS.csv").unlink()
    out = tmp_path / "out"
    with pytest.raises(MimicInputError, match=r"table OUTPUTEVENTS not found"):
        extract(db, out, progress=False)
    assert_no_output(out)


def test_missing_column(tmp_path, small_db):
    db = copy_db(small_db, tmp_path / "db")
    df = pl.read_csv(db / "ICUSTAYS.csv", infer_schema=False).drop("LAST_WARDID")
    df.write_csv(db / "ICUSTAYS.csv")
    out = tmp_path / "out"
    with pytest.raises(MimicInputError, match=r"ICUSTAYS\.csv: table ICUSTAYS lacks column"):
        extract(db, out, progress=False)
    assert_no_output(out)


def test_unparsable_date_in_small_table(tmp_path, small_db):
    db = copy_db(small_db, tmp_path / "db")
    replace_line(db / "ICUSTAYS.csv", 3, "intime", "not-a-date")
    out = tmp_path / "out"
    with pytest.raises(MimicInputError) as info:
        extract(db, out, progress=False)
    message = str(info.value)
    # Data row 3 is line 4: the header is line 1.
    assert "ICUSTAYS.csv: line 4, column intime:" in message
    assert "not-a-date" in message
    assert_no_output(out)


def test_empty_required_cell(tmp_path, small_db):
    db = copy_db(small_db, tmp_path / "db")
    replace_line(db / "ADMISSIONS.csv", 5, "admittime", "")
    with pytest.raises(
        MimicInputError, match=r"ADMISSIONS\.csv: line 6, column admittime: is empty"
    ):
        read_table(db, "ADMISSIONS")


def test_unparsable_number_in_event_table(tmp_path, small_db):
    db = copy_db(small_db, tmp_path / "db")
    replace_line(db / "CHARTEVENTS.csv", 1234, "itemid", "21x1")
    out = tmp_path / "out"
    with pytest.raises(MimicInputError) as info:
        extract(db, out, progress=False)
    message = str(info.value)
    assert "CHARTEVENTS.csv: line 1235, column itemid:" in message and "21x1" in message
    assert_no_output(out)


def test_unparsable_charttime_in_event_table(tmp_path, small_db):
    db = copy_db(small_db, tmp_path / "db")
    # The first heart rate with a value: the first hour of the first stay, a used row.
    chart = pl.read_csv(db / "CHARTEVENTS.csv", infer_schema=False).with_row_index("row", 1)
    used = chart.filter(pl.col("ITEMID").is_in(["211", "220045"]) & pl.col("VALUE").is_not_null())
    row = int(used["row"][0])
    replace_line(db / "CHARTEVENTS.csv", row, "charttime", "2150-13-45 99:00:00")
    with pytest.raises(
        MimicInputError, match=rf"CHARTEVENTS\.csv: line {row + 1}, column charttime:"
    ):
        extract(db, tmp_path / "out", progress=False)


def test_truncated_gzip(tmp_path, small_db):
    db = copy_db(small_db, tmp_path / "db")
    raw = (db / "LABEVENTS.csv").read_bytes()
    packed = gzip.compress(raw)
    (db / "LABEVENTS.csv").unlink()
    (db / "LABEVENTS.csv.gz").write_bytes(packed[: len(packed) // 2])
    out = tmp_path / "out"
    with pytest.raises(MimicInputError, match=r"LABEVENTS\.csv\.gz: .*(truncated|gzip)"):
        extract(db, out, progress=False)
    assert_no_output(out)


def test_failed_run_keeps_the_previous_feature_folder(tmp_path, small_db):
    out = tmp_path / "out"
    extract(small_db, out, progress=False)
    before = (out / "manifest.json").read_text()
    db = copy_db(small_db, tmp_path / "db")
    (db / "PATIENTS.csv").unlink()
    with pytest.raises(MimicInputError):
        extract(db, out, progress=False)
    assert (out / "manifest.json").read_text() == before


def test_refuses_to_replace_a_foreign_folder(tmp_path, small_db):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(MimicInputError, match="refusing"):
        extract(small_db, out, progress=False)
    assert (out / "notes.txt").read_text() == "keep me"
