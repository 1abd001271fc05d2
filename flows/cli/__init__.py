"""The ``rank1`` command line: the typer app, its one-line errors and its commands.

The commands live by area: :mod:`flows.cli.mimic` (synth, extract, train, report,
promote, score, compare-cohorts, pipeline), :mod:`flows.cli.images` (train-images,
validate-images), :mod:`flows.cli.serve` (serve, deploy) and :mod:`flows.cli.demo`; options
used by several commands are defined once in :mod:`flows.cli.options`. Heavy libraries
(torch, polars, MLflow, Prefect) are imported inside each command so that ``rank1 --help``
is instant. Each command exits non-zero with a one-line error on failure.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup, TyperOption


def _hide_flag_types(params: list[Any]) -> None:
    """Blank the ``<bool>`` that typer's help prints beside every on/off flag."""
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""  # shown instead of the type; "" shows nothing


class _QuietFlags:
    """Help that lists flags (``--resume``, ``--help``) without a ``<bool>`` beside them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _hide_flag_types(self.params)

    def get_help_option(self, ctx: Any) -> Any:
        """The ``--help`` option (made on first use), without a type in the help."""
        option = super().get_help_option(ctx)
        _hide_flag_types([option])
        return option


class _Command(_QuietFlags, TyperCommand):
    """Every ``rank1`` command."""


class _Group(_QuietFlags, TyperGroup):
    """The ``rank1`` group itself (its ``--help`` and ``--verbose``)."""


app = typer.Typer(
    name="rank1",
    help="Rank-1 Bayesian neural networks and a clinical-prediction pipeline for MIMIC-III.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_Group,
)


def fail(message: str) -> None:
    """Print a one-line error and exit with status 1."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


def fail_all(problems: list[str]) -> None:
    """Print one ``error:`` line per problem and exit with status 1."""
    for problem in problems:
        typer.secho(f"error: {problem}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


def error_line(err: BaseException) -> str:
    """The one line of an error's message to show the user.

    That is its first line, except for an error re-raised from a DataLoader worker: torch
    puts "Caught <type> in DataLoader worker process N." first and the worker's traceback
    after it, whose last line holds the original message (for example the image's path).
    """
    lines = str(err).strip().splitlines() or [type(err).__name__]
    if lines[0].startswith("Caught ") and "DataLoader worker" in lines[0] and len(lines) > 1:
        kind, _, message = lines[-1].partition(": ")
        return message if message and " " not in kind else lines[-1]
    return lines[0]


def _interrupt_on_sigterm() -> None:
    """Make SIGTERM stop a command the way Ctrl-C does (a ``KeyboardInterrupt``).

    Python's default SIGTERM ends the process at once: MLflow runs would stay RUNNING and
    checkpoints' temporary files would stay behind. As an exception, the MLflow run ends
    KILLED (``tracking.killed_on_interrupt``) and cleanup code runs. Prefect's flow engine
    installs its own SIGTERM handler while a flow runs (the flow run ends Crashed).
    """
    import signal

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except ValueError:
        pass  # not the main thread (an embedding application): its handlers stay


@app.callback()
def main(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose", help="Also print Prefect's 'Finished in state Completed()' per task."
        ),
    ] = False,
) -> None:
    """Rank-1 BNNs (Dusenberry et al., ICML 2020) for clinical and image prediction."""
    from flows.cli import running

    # Set on every invocation: a second command in the same process starts quiet again.
    running.show_task_states(verbose)
    _interrupt_on_sigterm()


# The command modules import fail and error_line from here, so they are imported last.
from flows.cli import demo, images, mimic, serve  # noqa: E402

# Registered in this order, which is the order of `rank1 --help`.
for _name, _command in (
    ("synth", mimic.synth_command),
    ("extract", mimic.extract_command),
    ("train", mimic.train_command),
    ("report", mimic.report_command),
    ("promote", mimic.promote_command),
    ("score", mimic.score_command),
    ("compare-cohorts", mimic.compare_command),
    ("train-images", images.train_images_command),
    ("validate-images", images.validate_images_command),
    ("pipeline", mimic.pipeline_command),
    ("serve", serve.serve_command),
    ("deploy", serve.deploy_command),
    ("demo", demo.demo_command),
):
    app.command(_name, cls=_Command)(_command)
