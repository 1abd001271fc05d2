"""``rank1 synth`` and ``rank1 extract`` from the command line."""

from __future__ import annotations

import numpy as np
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_synth_then_extract(tmp_path):
    result = runner.invoke(
        app, ["synth", "--patients", "60", "--out", str(tmp_path / "db"), "--seed", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "60 patients" in result.output
    result = runner.invoke(
        app, ["extract", "--mimic-dir", str(tmp_path / "db"), "--out", str(tmp_path / "features")]
    )
    assert result.exit_code == 0, result.output
    assert "events_in_first_48h" in result.output and "splits: train" in result.output
    grid = np.load(tmp_path / "features" / "grid.npy")
    assert grid.shape[1:] == (48, 76)


def test_extract_on_the_demo(tmp_path, demo_dir):
    result = runner.invoke(
        app, ["extract", "--mimic-dir", str(demo_dir), "--out", str(tmp_path / "f")]
    )
    assert result.exit_code == 0, result.output
    assert "adults" in result.output and "114 / 89" in result.output


def test_bad_input_is_one_line_and_exit_1(tmp_path):
    result = runner.invoke(
        app, ["extract", "--mimic-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "f")]
    )
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "missing" in lines[0]
    assert not (tmp_path / "f").exists()


def test_synth_writes_a_named_shift_and_refuses_an_unknown_one(tmp_path):
    args = ["synth", "--patients", "40", "--seed", "2", "--out"]
    result = runner.invoke(app, [*args, str(tmp_path / "db"), "--shift", "mechanism"])
    assert result.exit_code == 0, result.output
    assert "(shift mechanism)" in result.output
    assert (tmp_path / "db" / "synthetic_shift.json").is_file()
    result = runner.invoke(app, [*args, str(tmp_path / "bad"), "--shift", "third-site"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "second-site" in lines[0] and "third-site" in lines[0]
    assert not (tmp_path / "bad").exists()


def test_extract_all_tasks_then_a_mismatched_task_is_refused(tmp_path):
    runner.invoke(app, ["synth", "--patients", "60", "--out", str(tmp_path / "db")])
    out = tmp_path / "features"
    result = runner.invoke(
        app, ["extract", "--mimic-dir", str(tmp_path / "db"), "--out", str(out), "--task", "all"]
    )
    assert result.exit_code == 0, result.output
    assert "hourly samples:" in result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "decompensation",
        "ihm",
        "length-of-stay",
        "phenotyping",
    ]
    result = runner.invoke(
        app, ["train", "--features", str(out / "phenotyping"), "--task", "ihm", "--steps", "1"]
    )
    assert result.exit_code == 1
    assert "--task ihm:" in result.output and "is a phenotyping feature folder" in result.output
    result = runner.invoke(
        app, ["extract", "--mimic-dir", str(tmp_path / "db"), "--out", str(out), "--task", "x"]
    )
    assert result.exit_code == 1 and "--task: expected one of" in result.output
