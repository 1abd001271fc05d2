"""What the ``rank1`` commands print besides errors: help, Prefect's console, UI links."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from flows.cli import app

COMMANDS = [
    "synth", "extract", "train", "report", "promote", "train-images", "validate-images", "pipeline",
    "serve", "deploy", "demo",
]  # fmt: skip


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help_shows_no_bool_type_beside_flags(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "--help" in result.output and "<bool>" not in result.output
    # Other types are still shown.
    assert command != ["train"] or "<int range>" in result.output


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_completed_task_lines_stay_off_the_console_unless_verbose():
    from prefect.logging.handlers import PrefectConsoleHandler

    from flows.cli import running

    running._quiet_console()
    console = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    assert console
    done = _record("prefect.task_runs", logging.INFO, "Finished in state Completed()")
    cached = _record("prefect.task_runs", logging.INFO, "Finished in state Cached(type=COMPLETED)")
    failed = _record("prefect.task_runs", logging.ERROR, "Finished in state Failed('boom')")
    flow_done = _record("prefect.flow_runs", logging.INFO, "Finished in state Completed()")
    other = _record("prefect.task_runs", logging.INFO, "training 200 steps")
    try:
        for handler in console:
            assert not handler.filter(done) and not handler.filter(cached)
            assert handler.filter(failed) and handler.filter(flow_done) and handler.filter(other)
        running.show_task_states(True)
        assert all(handler.filter(done) for handler in console)
    finally:
        running.show_task_states(False)
    # Only the console is filtered: Prefect's API handler (the UI's logs) keeps every line.
    from prefect.logging.handlers import APILogHandler

    api = [h for h in logging.getLogger("prefect").handlers if isinstance(h, APILogHandler)]
    api += [
        h
        for name in ("prefect.task_runs", "prefect.flow_runs")
        for h in logging.getLogger(name).handlers
        if isinstance(h, APILogHandler)
    ]
    assert api and all(handler.filter(done) for handler in api)


def test_verbose_option_turns_task_lines_back_on(monkeypatch):
    from flows.cli import running

    seen = []
    monkeypatch.setattr(running, "show_task_states", seen.append)
    CliRunner().invoke(app, ["--verbose", "serve", "--help"])
    CliRunner().invoke(app, ["serve", "--help"])
    assert seen == [True, False]


def test_training_runs_table_link_after_training(tmp_path, monkeypatch, capsys):
    from flows.cli.running import print_uis
    from pipeline import tracking

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    with tracking.start_run("links-test"):
        pass
    experiment = tracking.experiment_id("links-test")
    print_uis(["links-test", "never-used"])
    out = capsys.readouterr().out
    # MLflow 3 opens an experiment on its GenAI "Traces" page; the runs table has its own URL.
    assert f"  runs of links-test: http://127.0.0.1:5000/#/experiments/{experiment}/runs\n" in out
    assert "never-used" not in out and f"mlflow ui --backend-store-uri {store}" in out
    assert "Prefect UI" in out
    print_uis(["links-test"], prefect_runs=False)  # after `rank1 train`: no flow ran
    assert "Prefect UI" not in capsys.readouterr().out
