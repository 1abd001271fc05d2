"""The ``rank1`` command line.

Heavy libraries (torch, polars, MLflow, Prefect) are imported inside each command so that
``rank1 --help`` is instant. Each command exits non-zero with a one-line error on failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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


# --- MIMIC-III extraction and synthetic data (features.mimic, features.synthetic) ---------


@app.command("synth")
def synth_command(
    patients: Annotated[int, typer.Option("--patients", min=1, help="Number of patients.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the MIMIC-III tables to.")],
    seed: Annotated[
        int, typer.Option("--seed", help="Seed; the same seed gives the same files.")
    ] = 0,
) -> None:
    """Write a synthetic MIMIC-III database with a planted, known mortality risk."""
    from rich.console import Console

    from features.synthetic import generate

    console = Console(stderr=True)
    try:
        with console.status(f"generating {patients} patients into {out}"):
            summary = generate(out, patients=patients, seed=seed)
    except (OSError, ValueError) as err:
        fail(str(err))
    rows = ", ".join(f"{name} {count:,}" for name, count in summary["rows"].items())
    typer.echo(
        f"wrote {out}: {summary['patients']:,} patients, {summary['icustays']:,} ICU stays, "
        f"{summary['deaths']:,} in-hospital deaths (mean planted risk "
        f"{summary['mean_true_risk']:.3f}); rows: {rows}"
    )


@app.command("extract")
def extract_command(
    mimic_dir: Annotated[Path, typer.Option("--mimic-dir", help="Folder with MIMIC-III CSV(.gz).")],
    out: Annotated[Path, typer.Option("--out", help="Feature folder to write.")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the subject-level split.")] = 0,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of subjects.")
    ] = 0.15,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="Share of subjects.")
    ] = 0.15,
) -> None:
    """Extract the in-hospital-mortality features (mimic3-benchmarks definitions)."""
    from features.mimic.extract import extract
    from features.mimic.tables import MimicInputError

    try:
        manifest = extract(
            mimic_dir,
            out,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            progress=True,
        )
    except (MimicInputError, OSError, ValueError) as err:
        fail(str(err))
    typer.echo(f"wrote {out} in {manifest['timings_s']['total']:.1f} s")
    typer.echo("cohort (stays / subjects):")
    for step in manifest["cohort"]["steps"]:
        typer.echo(f"  {step['step']:<28} {step['stays']:>8,} / {step['subjects']:,}")
    counts = manifest["split"]["counts"]
    parts = [f"{name} {c['stays']:,} ({c['positives']:,} deaths)" for name, c in counts.items()]
    typer.echo("splits: " + ", ".join(parts))


# --- end of MIMIC-III commands -------------------------------------------------------------


if __name__ == "__main__":
    app()
