"""The ``rank1`` command line.

Heavy libraries (torch, polars, MLflow, Prefect) are imported inside each command so that
``rank1 --help`` is instant. Each command exits non-zero with a one-line error on failure.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="rank1",
    help="Rank-1 Bayesian neural networks and a clinical-prediction pipeline for MIMIC-III.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str) -> None:
    """Print a one-line error and exit with status 1."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=1)


@app.callback()
def main() -> None:
    """Rank-1 BNNs (Dusenberry et al., ICML 2020) for clinical and image prediction."""


if __name__ == "__main__":
    app()
