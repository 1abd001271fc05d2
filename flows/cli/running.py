"""Running a Prefect flow from a command: checked parameters, a quiet console, one-line errors.

Used by ``rank1 pipeline`` and ``rank1 demo``; :func:`print_uis` also by the training
commands. Prefect is imported only when a flow runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import typer

from flows.cli import error_line, fail

# Whether the console shows Prefect's INFO "Finished in state Completed()" line of every
# task run (``rank1 --verbose``); the Prefect API (its UI) keeps them either way.
_show_task_states = False


def show_task_states(shown: bool) -> None:
    """Show (True) or hide (False, the default) completed task runs' state lines."""
    global _show_task_states
    _show_task_states = shown


class _WithoutTraceback(logging.Formatter):
    """Format a log record as another formatter would, minus its traceback."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        # The record is shared with Prefect's API handler, which keeps the traceback for
        # the UI: hide it only while this handler formats the record.
        saved = record.exc_info, record.exc_text
        record.exc_info, record.exc_text = None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text = saved


class _HideCompletedTasks(logging.Filter):
    """Drop task runs' INFO "Finished in state ..." lines (a failed one logs ERROR: kept)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return (
            _show_task_states
            or record.name != "prefect.task_runs"
            or record.levelno != logging.INFO
            or not record.getMessage().startswith("Finished in state ")
        )


def _quiet_console() -> None:
    """Keep Prefect's run logs on the terminal, minus tracebacks and completed-task lines.

    A failed task or flow run logs its exception with a traceback; on the terminal the
    command's own one-line error says what went wrong, and the full traceback stays in the
    run's logs in the Prefect UI. A pipeline has dozens of tasks: their "Finished in state
    Completed()" lines also stay in the UI only, unless ``rank1 --verbose``.
    """
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    setup_logging()
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, PrefectConsoleHandler):
            continue
        if not isinstance(handler.formatter, _WithoutTraceback):
            handler.setFormatter(_WithoutTraceback(handler.formatter))
        if not any(isinstance(f, _HideCompletedTasks) for f in handler.filters):
            handler.addFilter(_HideCompletedTasks())


def run_flow(flow_fn: Callable[..., Any], params_model: type, values: dict[str, Any]) -> Any:
    """Check a flow's parameters, run it, turn errors a user can fix into one line.

    The parameters (``values``: the command's options by parameter name) are checked here
    first, so a bad value fails at once; the flow receives the checked model (it checks a
    mapping itself, for runs started from the Prefect UI or a schedule). Parameter errors, bad
    input data, unreadable files and MLflow errors (unknown run, unreachable server: a
    ``pipeline.tracking.TrackingError``) become ``error: ...`` and exit status 1; anything
    else is a bug and keeps its traceback.
    """
    from flows.params import ParameterError, validate

    try:
        params = validate(flow_fn.__name__, params_model, values)
    except ParameterError as err:
        fail(str(err))
    _quiet_console()
    from flows.runs import owned_by_this_process

    try:
        # Tagged with this process, so a rerun after kill -9 can set its runs Crashed.
        with owned_by_this_process():
            return flow_fn(params)
    except ParameterError as err:
        fail(str(err))
    except (OSError, ValueError, RuntimeError) as err:
        fail(f"{type(err).__name__}: {error_line(err)}")


def print_uis(experiments: list[str], *, prefect_runs: bool = True) -> None:
    """Where the MLflow store is, how to open the MLflow and Prefect UIs, and where to look.

    MLflow 3 opens an experiment on its GenAI "Traces" page, which is empty for these runs:
    the link of each experiment's training-runs table is printed instead.

    Args:
        experiments: The MLflow experiments the command logged to.
        prefect_runs: Whether the command ran Prefect flows (then the Prefect UI shows them).
    """
    from pipeline.tracking import experiment_id, tracking_uri

    uri = tracking_uri()
    typer.echo(f"\nMLflow store: {uri}")
    ui = uri if uri.startswith(("http://", "https://")) else None
    if uri.startswith("sqlite:"):
        ui = "http://127.0.0.1:5000"
        typer.echo(
            f"  open the MLflow UI: mlflow ui --backend-store-uri {uri} "
            f"--host 127.0.0.1 --port 5000  ->  {ui}"
        )
    for name in experiments:
        found = experiment_id(name)
        if ui is not None and found is not None:
            typer.echo(f"  runs of {name}: {ui.rstrip('/')}/#/experiments/{found}/runs")
    if not prefect_runs:
        return
    typer.echo(
        "  open the Prefect UI: prefect server start --host 127.0.0.1 --port 4200 "
        "--analytics-off  ->  http://127.0.0.1:4200 (it shows these runs: same PREFECT_HOME)"
    )
