"""Data safety of the extraction (issue 9): one-line errors that never echo patient rows,
output folders that are replaced only when they are ours, owner-only files, early checks."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import traceback
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from features.io import make_private_dir
from features.mimic import tables
from features.mimic.extract import extract
from features.mimic.tables import MimicInputError, table_path
from features.mimic.variables import load_variables
from features.synthetic import generate
from flows.cli import app

REPO = Path(__file__).resolve().parents[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("safety") / "mimic"
    generate(folder, patients=20, seed=1)
    return folder


def copy_db(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def lines_of(path: Path) -> list[str]:
    return path.read_text("utf-8").splitlines(keepends=True)


def edit_line(path: Path, number: int, old: str, new: str) -> tuple[str, str, str]:
    """Replace ``old`` once in physical line ``number``; return lines number-1..number+1."""
    lines = lines_of(path)
    assert old in lines[number - 1]
    lines[number - 1] = lines[number - 1].replace(old, new, 1)
    path.write_text("".join(lines), "utf-8")
    return lines[number - 2], lines[number - 1], lines[number]


def cells(line: str) -> list[str]:
    return [c.strip('"') for c in line.rstrip("\n").split(",") if len(c.strip('"')) >= 4]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def stray_quote_db(cohort: Path, dst: Path) -> tuple[Path, list[str]]:
    """A copy with a stray quote in a CHARTEVENTS charttime; returns nearby cell values."""
    db = copy_db(cohort, dst)
    # The first '",' of a row closes its charttime: '"2148-12-07 02:00:00"x",'.
    before, bad, after = edit_line(db / "CHARTEVENTS.csv", 501, '",', '"x",')
    return db, cells(before) + cells(bad) + cells(after)


def float_hadm_db(cohort: Path, dst: Path) -> tuple[Path, str, list[str]]:
    """A copy whose ADMISSIONS line 7 has hadm_id 142345.0 (a float, not an integer)."""
    db = copy_db(cohort, dst)
    line = lines_of(db / "ADMISSIONS.csv")[6]
    hadm = line.split(",")[2]
    _, bad, _ = edit_line(db / "ADMISSIONS.csv", 7, f",{hadm},", ",142345.0,")
    return db, "142345", cells(bad)


# --------------------------------------------------------------------- A: reader errors


def test_cli_stray_quote_is_one_line_naming_file_line_and_column(tmp_path, cohort):
    db, nearby = stray_quote_db(cohort, tmp_path / "db")
    result = run_cli("extract", "--mimic-dir", str(db), "--out", str(tmp_path / "f"))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr[:2000]
    assert "CHARTEVENTS.csv: line 501, column charttime" in errors[0]
    for value in nearby:
        assert value not in result.stderr and value not in result.stdout, value
    assert not (tmp_path / "f").exists()


def test_cli_float_hadm_id_is_one_line_without_the_value(tmp_path, cohort):
    db, value, row = float_hadm_db(cohort, tmp_path / "db")
    result = run_cli("extract", "--mimic-dir", str(db), "--out", str(tmp_path / "f"))
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, result.stderr[:2000]
    assert errors[0].endswith("ADMISSIONS.csv: line 7, column hadm_id: not an integer")
    assert value not in result.stderr + result.stdout
    for cell in row:
        assert cell not in result.stderr, cell


@pytest.mark.parametrize("kind", ["quote", "hadm"])
def test_traceback_carries_no_row_text(tmp_path, cohort, kind):
    if kind == "quote":
        db, nearby = stray_quote_db(cohort, tmp_path / "db")
    else:
        db, value, nearby = float_hadm_db(cohort, tmp_path / "db")
        nearby.append(value)
    with pytest.raises(MimicInputError) as info:
        extract(db, tmp_path / "f", progress=False)
    # Prefect logs the whole traceback, chained errors included: polars' text quotes rows.
    text = "".join(traceback.format_exception(info.value))
    assert str(info.value) in text
    for cell in nearby:
        assert cell not in text, cell


def test_extract_flow_keeps_rows_and_ids_out_of_prefect(prefect_harness, tmp_path, cohort):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.logging.handlers import APILogHandler

    from flows.mimic import extract_mimic

    quote_db, nearby = stray_quote_db(cohort, tmp_path / "quote")
    hadm_db, value, row = float_hadm_db(cohort, tmp_path / "hadm")
    run_ids = []
    for db in (quote_db, hadm_db):
        params = {"mimic_dir": db, "out_dir": tmp_path / f"out-{db.name}"}
        state = extract_mimic(params, return_state=True)
        assert state.is_failed()
        run_ids.append(state.state_details.flow_run_id)
    APILogHandler().flush()

    async def stored() -> str:
        async with get_client() as client:
            runs = [await client.read_flow_run(run_id) for run_id in run_ids]
            tasks = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids))
            )
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=run_ids))
            )
        texts = [r.state.message or "" for r in runs] + [t.state.message or "" for t in tasks]
        return "\n".join(texts + [log.message for log in logs])

    text = asyncio.run(stored())
    assert "CHARTEVENTS.csv: line 501, column charttime" in text
    assert "ADMISSIONS.csv: line 7, column hadm_id: not an integer" in text
    for cell in [*nearby, value, *row]:
        assert cell not in text, cell


# --------------------------------------------------------------------- B: encodings


@pytest.mark.parametrize("line", [3, 20000])
def test_non_utf8_byte_names_file_and_line(tmp_path, cohort, line):
    db = copy_db(cohort, tmp_path / "db")
    path = db / "CHARTEVENTS.csv"
    raw = path.read_bytes().split(b"\n")
    raw[line - 1] = raw[line - 1].replace(b'",', b'\xe9",', 1)
    path.write_bytes(b"\n".join(raw))
    with pytest.raises(MimicInputError) as info:
        extract(db, tmp_path / "f", progress=False)
    message = str(info.value)
    assert f"CHARTEVENTS.csv: line {line}, column " in message
    assert "not valid UTF-8" in message and "header" not in message and "\n" not in message


# --------------------------------------------------------------------- C: output folders


def test_foreign_folder_with_a_manifest_is_not_replaced(tmp_path, cohort):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.json").write_text('{"project": "something else"}')
    (out / "thesis.tex").write_text("keep me")
    with pytest.raises(MimicInputError, match="refusing"):
        extract(cohort, out, progress=False)
    assert (out / "thesis.tex").read_text() == "keep me"


def test_feature_folder_with_other_files_is_not_replaced(tmp_path, cohort):
    out = tmp_path / "features"
    extract(cohort, out, progress=False)
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(MimicInputError, match="refusing"):
        extract(cohort, out, progress=False)
    assert (out / "notes.txt").read_text() == "keep me"


def test_own_feature_folder_is_replaced(tmp_path, cohort):
    out = tmp_path / "features"
    first = extract(cohort, out, seed=0, progress=False)
    second = extract(cohort, out, seed=1, progress=False)
    assert json.loads((out / "manifest.json").read_text())["split"]["seed"] == 1
    assert first.split.seed == 0 and second.split.seed == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features"]


def test_empty_user_folder_is_filled_and_keeps_its_mode(tmp_path, cohort):
    out = tmp_path / "given"
    out.mkdir()
    os.chmod(out, 0o755)
    inode = out.stat().st_ino
    extract(cohort, out, progress=False)
    assert mode(out) == 0o755 and out.stat().st_ino == inode
    assert sorted(p.name for p in out.iterdir()) == ["grid.npy", "manifest.json", "stays.parquet"]
    assert all(mode(p) == 0o600 for p in out.iterdir())


# --------------------------------------------------------------------- D: doubled tables


@pytest.mark.parametrize("other", ["ADMISSIONS.csv.gz", "admissions.csv"])
def test_table_present_twice_is_refused_naming_both(tmp_path, cohort, other):
    db = copy_db(cohort, tmp_path / "db")
    data = (db / "ADMISSIONS.csv").read_bytes()
    (db / other).write_bytes(gzip.compress(data) if other.endswith(".gz") else data)
    with pytest.raises(MimicInputError) as info:
        table_path(db, "ADMISSIONS")
    assert "ADMISSIONS.csv" in str(info.value) and other in str(info.value)
    with pytest.raises(MimicInputError, match="more than once"):
        extract(db, tmp_path / "f", progress=False)


# --------------------------------------------------------------------- E: folder modes


def test_make_private_dir_never_changes_an_existing_folder(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    assert make_private_dir(shared) == shared
    assert mode(shared) == 0o1777
    nested = shared / "a" / "b" / "c"
    make_private_dir(nested)
    assert mode(shared) == 0o1777
    for folder in (shared / "a", shared / "a" / "b", nested):
        assert mode(folder) == 0o700, folder


def test_make_private_dir_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        make_private_dir(tmp_path / "f")


# --------------------------------------------------------------------- F: split shares


@pytest.mark.parametrize(
    ("val", "test", "named"),
    [
        (0.0, 0.15, "val_fraction=0.0"),
        (0.15, 0.0, "test_fraction=0.0"),
        (1.0, 0.15, "val_fraction=1.0"),
        (float("nan"), 0.1, "val_fraction=nan"),
        (0.5, 0.5, "sum to less than 1"),
    ],
)
def test_check_split_fractions(val, test, named):
    from features.mimic.splits import check_split_fractions

    with pytest.raises(ValueError, match=named):
        check_split_fractions(val, test)


def test_split_fractions_are_checked_before_anything_is_read(tmp_path):
    with pytest.raises(ValueError, match="val_fraction=0.0 and test_fraction=0.0"):
        extract(tmp_path / "missing", tmp_path / "f", val_fraction=0.0, test_fraction=0.0)
    result = CliRunner().invoke(
        app,
        ["extract", "--mimic-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "f")]
        + ["--val-fraction", "0", "--test-fraction", "0"],
    )
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "val_fraction=0.0" in lines[0]


# --------------------------------------------------------------------- G: empty events


def test_header_only_event_table_is_refused(tmp_path, cohort):
    db = copy_db(cohort, tmp_path / "db")
    header = lines_of(db / "LABEVENTS.csv")[0]
    (db / "LABEVENTS.csv").write_text(header + "\n")
    with pytest.raises(MimicInputError, match=r"LABEVENTS\.csv: table LABEVENTS has a header"):
        extract(db, tmp_path / "f", progress=False)


def test_unobserved_variable_is_warned_in_manifest_and_log(tmp_path, cohort, caplog):
    db = copy_db(cohort, tmp_path / "db")
    heart_rate = next(v for v in load_variables() if v.channel == "Heart Rate")
    chart = pl.read_csv(db / "CHARTEVENTS.csv", infer_schema=False)
    chart = chart.filter(~pl.col("ITEMID").is_in([str(i) for i in heart_rate.itemids]))
    chart.write_csv(db / "CHARTEVENTS.csv")
    with caplog.at_level(logging.WARNING, logger="features.mimic.extract"):
        manifest = extract(db, tmp_path / "f", progress=False)
    warned = [w for w in manifest.warnings if "'Heart Rate'" in w]
    assert len(warned) == 1
    assert json.loads((tmp_path / "f" / "manifest.json").read_text())["warnings"] == list(
        manifest.warnings
    )
    assert warned[0] in caplog.text


# --------------------------------------------------------------------- H: file modes


def test_feature_folder_and_synthetic_tables_are_owner_only(tmp_path, cohort):
    out = tmp_path / "new" / "features"
    extract(cohort, out, progress=False)
    assert mode(tmp_path / "new") == 0o700 and mode(out) == 0o700
    assert all(mode(p) == 0o600 for p in out.iterdir())
    db = tmp_path / "made" / "db"
    generate(db, patients=3, seed=0)
    assert mode(tmp_path / "made") == 0o700 and mode(db) == 0o700
    assert all(mode(p) == 0o600 for p in db.iterdir())


# --------------------------------------------------------------------- I: leftovers


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_a_killed_run_are_removed_next_time(tmp_path, cohort):
    out = tmp_path / "features"
    dead = dead_pid()
    gone = [tmp_path / f".features.tmp-{dead}-abc", tmp_path / f".features.old-{dead}-def"]
    kept = [tmp_path / f".features.tmp-{os.getpid()}-live", tmp_path / ".features.tmp-notes"]
    for folder in gone + kept:
        folder.mkdir()
        (folder / "grid.npy").write_bytes(b"x")
    extract(cohort, out, progress=False)
    assert not any(folder.exists() for folder in gone)
    assert all(folder.exists() for folder in kept)


def test_symlinked_out_is_followed_and_leaves_nothing_behind(tmp_path, cohort):
    real = tmp_path / "real"
    link = tmp_path / "link"
    extract(cohort, real, seed=0, progress=False)
    link.symlink_to(real, target_is_directory=True)
    extract(cohort, link, seed=1, progress=False)
    assert (
        link.is_symlink() and json.loads((real / "manifest.json").read_text())["split"]["seed"] == 1
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "real"]


def test_unwritable_out_fails_before_any_work(tmp_path, cohort):
    db, _ = stray_quote_db(cohort, tmp_path / "db")  # would fail late, in the event tables
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "features"
    with pytest.raises(MimicInputError) as info:
        extract(db, out, progress=False)
    message = str(info.value)
    assert message.startswith(f"{out}: cannot write the output folder") and ".tmp-" not in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_parent_fails_before_any_work(tmp_path, cohort):
    db, _ = stray_quote_db(cohort, tmp_path / "db")
    parent = tmp_path / "ro"
    parent.mkdir()
    os.chmod(parent, 0o500)
    try:
        with pytest.raises(MimicInputError, match="cannot write the output folder"):
            extract(db, parent / "features", progress=False)
    finally:
        os.chmod(parent, 0o700)


# --------------------------------------------------------------------- J: header and rows


def test_duplicated_column_fails_before_any_work(tmp_path, cohort):
    db, _ = stray_quote_db(cohort, tmp_path / "db")
    path = db / "OUTPUTEVENTS.csv"
    lines = lines_of(path)
    lines[0] = lines[0].replace('"CGID"', '"itemid"')
    path.write_text("".join(lines))
    with pytest.raises(MimicInputError) as info:
        extract(db, tmp_path / "f", progress=False)
    assert str(info.value).endswith(
        "OUTPUTEVENTS.csv: line 1 (header): column itemid appears twice"
    )


def test_row_with_extra_fields_names_file_and_line(tmp_path, cohort):
    db = copy_db(cohort, tmp_path / "db")
    edit_line(db / "ICUSTAYS.csv", 5, "\n", ',"extra"\n')
    with pytest.raises(MimicInputError) as info:
        extract(db, tmp_path / "f", progress=False)
    assert str(info.value).endswith("ICUSTAYS.csv: line 5: 13 fields, expected 12 as in the header")
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('3,"2150-01-01 00:00:00,x\n', "line 3, column charttime: stray or unclosed quote"),
        ('3,2150-01-01 00:00:00,x"y\n', "line 3, column value: stray quote"),
        ("3,2150-01-01 00:00:00\n", "line 3: 2 fields, expected 3 as in the header"),
        ("3,2150-01-01 00:00,x\n", "line 3, column charttime: value '2150-01-01 00:00' is not"),
    ],
)
def test_diagnose_table_finds_the_first_bad_line(tmp_path, monkeypatch, bad_line, expected):
    rows = ["subject_id,charttime,value\n", "1,2150-01-01 00:00:00,a\n", bad_line]
    rows += ["4,2150-01-01 00:00:00,b\n"]
    (tmp_path / "T.csv").write_text("".join(rows))
    table = {"subject_id": pl.Int64, "charttime": pl.Datetime("us"), "value": pl.String}
    monkeypatch.setitem(tables.TABLES, "T", table)
    found = tables.diagnose_table(tmp_path, "T")
    assert found is not None and expected in str(found)
