"""``rank1 demo``: synthetic MIMIC-III and digits end to end (:func:`flows.demo.demo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli import options
from flows.cli.running import print_uis, run_flow
from flows.params import DEMO_EXPERIMENT, DemoParams, defaults

_DEMO = defaults(DemoParams)
_SEVERITIES = ",".join(str(level) for level in _DEMO.severities)


def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Output root.")] = _DEMO.out_dir,
    patients: Annotated[
        int, typer.Option("--patients", min=200, help="Synthetic patients.")
    ] = _DEMO.patients,
    steps: Annotated[
        int, typer.Option("--steps", min=10, help="EHR training steps.")
    ] = _DEMO.steps,
    image_epochs: Annotated[
        float | None,
        typer.Option("--image-epochs", min=0.01, help="Digits training epochs (recipe: 30)."),
    ] = None,
    severities: options.Severities = _SEVERITIES,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic cohort.")] = _DEMO.seed,
    device: Annotated[
        str, typer.Option("--device", help="cpu (default) | auto | cuda.")
    ] = _DEMO.device,
    threads: Annotated[
        int, typer.Option("--threads", min=0, help="torch CPU threads (0: one per core).")
    ] = _DEMO.torch_threads,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            "--tracking-uri", help="MLflow store (default: MLFLOW_TRACKING_URI or ./mlflow.db)."
        ),
    ] = None,
) -> None:
    """Synthetic MIMIC-III and digits end to end through Prefect and MLflow (a few minutes)."""
    import os
    import sys
    import time

    levels = options.severity_levels(severities)
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from flows.demo import demo

    started = time.perf_counter()
    result = run_flow(
        demo,
        DemoParams,
        {
            "out_dir": out,
            "patients": patients,
            "steps": steps,
            "image_epochs": image_epochs,
            "severities": levels,
            "seed": seed,
            "device": device,
            "torch_threads": threads,
            "progress": sys.stderr.isatty(),
        },
    )
    clinical, images, scoring = result["clinical"], result["images"], result["scoring"]

    def row(label: str, value: object) -> None:
        typer.echo(f"{label + ':':<34}{value}")

    typer.echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    row("synthetic MIMIC-III tables", out / "mimic-synthetic")
    row("feature folder", clinical["features_dir"])
    for method, html in clinical["reports"].items():
        row(f"{method} report", f"{Path(html).parent} (report.parquet, report.csv, report.json)")
        row("  HTML summary", html)
    for method, run_id in clinical["runs"].items():
        row(f"MLflow run {method}", f"{run_id} (experiment {DEMO_EXPERIMENT})")
    row("new patients scored", f"{scoring['stays']} stays by {scoring['model']}")
    row("  report", scoring["files"]["html"])
    row("  MLflow scoring run", f"{scoring['run_id']} (experiment {DEMO_EXPERIMENT}-scoring)")
    for method, run_id in images["runs"].items():
        summary = images["validation"][method]
        row(
            f"MLflow run digits {method}",
            f"{run_id} (experiment demo-images; accuracy clean "
            f"{summary['clean/accuracy']:.3f}, corrupted {summary['corrupt/mean/accuracy']:.3f})",
        )
    print_uis([DEMO_EXPERIMENT, f"{DEMO_EXPERIMENT}-scoring", "demo-images"])
