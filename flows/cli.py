"""The ``rank1`` command line.

Heavy libraries (torch, polars, MLflow, Prefect) are imported inside each command so that
``rank1 --help`` is instant. Each command exits non-zero with a one-line error on failure.
"""

from __future__ import annotations

import logging
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
def main() -> None:
    """Rank-1 BNNs (Dusenberry et al., ICML 2020) for clinical and image prediction."""
    _interrupt_on_sigterm()


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
    for warning in manifest.get("warnings", []):
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)


# --- end of MIMIC-III commands -------------------------------------------------------------


# --- training and reports (pipeline.ehr) ---------------------------------------------------


@app.command("train")
def train_command(
    features: Annotated[Path, typer.Option("--features", help="Feature folder to train on.")],
    method: Annotated[
        str | None, typer.Option("--method", help="rank1 (default) | deterministic | ensemble.")
    ] = None,
    posterior: Annotated[
        str | None,
        typer.Option("--posterior", help="Rank-1 factor family: normal (default) | cauchy."),
    ] = None,
    steps: Annotated[
        int | None,
        typer.Option("--steps", min=1, help="Optimiser steps (recipe: 10000)."),
    ] = None,
    kl_anneal: Annotated[
        int | None,
        typer.Option("--kl-anneal", min=0, help="KL annealing steps (default: half of --steps)."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Rows per step (recipe: 64).")
    ] = None,
    ensemble_size: Annotated[
        int | None, typer.Option("--ensemble-size", min=1, help="K (recipe: 4).")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Adam learning rate.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed (default 0).")] = None,
    rnn_dim: Annotated[
        int | None, typer.Option("--rnn-dim", min=1, help="LSTM units (paper: 256).")
    ] = None,
    hidden_dim: Annotated[
        int | None, typer.Option("--hidden-dim", min=1, help="Dense units (paper: 128).")
    ] = None,
    num_eval_samples: Annotated[
        int | None, typer.Option("--num-eval-samples", min=1, help="MC samples per member.")
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option("--eval-every", min=0, help="Validate every N steps.")
    ] = None,
    patience: Annotated[
        int | None, typer.Option("--patience", min=0, help="Early-stopping evaluations.")
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto (default) | cpu | cuda[:N].")
    ] = None,
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="YAML training config; options above override it."),
    ] = None,
    experiment: Annotated[str, typer.Option("--experiment", help="MLflow experiment.")] = (
        "mimic-ihm"
    ),
    run_name: Annotated[str | None, typer.Option("--run-name", help="MLflow run name.")] = None,
    checkpoint_dir: Annotated[
        Path | None, typer.Option("--checkpoint-dir", help="Write checkpoints here.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from --checkpoint-dir.")
    ] = False,
) -> None:
    """Train an EHR model (rank-1 BNN, deterministic or deep ensemble) and log it to MLflow."""
    import dataclasses

    from pipeline.config import ConfigError, TrainConfig, check_device

    try:
        config = _config_file(config_file)
        changes = {}
        for name, value in (
            ("method", method),
            ("posterior", posterior),
            ("seed", seed),
            ("device", device),
            ("batch_size", batch_size),
            ("ensemble_size", ensemble_size),
            ("num_eval_samples", num_eval_samples),
            ("eval_every", eval_every),
            ("patience", patience),
        ):
            if value is not None:
                changes[name] = value
        schedule = config.schedule
        if steps is not None:
            # Keep the recipe's proportion: the KL is annealed over the first half.
            schedule = dataclasses.replace(schedule, unit="steps", length=steps)
            schedule.kl_anneal = steps // 2 if kl_anneal is None else kl_anneal
        elif kl_anneal is not None:
            schedule = dataclasses.replace(schedule, kl_anneal=kl_anneal)
        optim = config.optim if lr is None else dataclasses.replace(config.optim, lr=lr)
        config = TrainConfig.from_dict(
            {
                **config.to_dict(),
                **changes,
                "schedule": dataclasses.asdict(schedule),
                "optim": dataclasses.asdict(optim),
            }
        )
        # Before the data is loaded: a missing GPU is known now.
        check_device(config.device)
    except ConfigError as err:
        fail(str(err))

    from features.mimic.loader import FeatureFolderError
    from pipeline.ehr import train_ehr
    from rank1.models import EHRConfig

    sizes = {"rnn_dim": rnn_dim, "hidden_dim": hidden_dim}
    model_config = EHRConfig(**{k: v for k, v in sizes.items() if v is not None})
    try:
        result = train_ehr(
            features,
            config,
            experiment=experiment,
            model_config=model_config,
            run_name=run_name,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
        )
    except (FeatureFolderError, OSError, ValueError, RuntimeError) as err:
        fail(error_line(err))
    typer.echo(f"run_id {result.run_id}")
    for key, value in result.rows().items():
        typer.echo(f"  {key:<34} {value:.4f}")


def _config_file(config_file: Path | None):
    """The ``TrainConfig`` of a YAML file (the defaults without one); errors name the file.

    Raises:
        pipeline.config.ConfigError: One line naming the file.
    """
    from pipeline.config import ConfigError, TrainConfig, read_yaml

    if config_file is None:
        return TrainConfig()
    data = read_yaml(config_file)  # its errors name the file, line and column
    try:
        return TrainConfig.from_dict({} if data is None else data)
    except ConfigError as err:
        raise ConfigError(f"{config_file}: {err}") from None


@app.command("report")
def report_command(
    run: Annotated[str, typer.Option("--run", help="MLflow run id of a `rank1 train` run.")],
    features: Annotated[Path, typer.Option("--features", help="Feature folder.")],
    out: Annotated[Path, typer.Option("--out", help="Report folder (owner-only).")],
    split: Annotated[str, typer.Option("--split", help="train | val | test.")] = "test",
    coverage: Annotated[
        float, typer.Option("--coverage", min=0.0, max=1.0, help="Share not referred.")
    ] = 0.8,
) -> None:
    """Write the per-patient risk and uncertainty report of one split (Parquet/CSV/HTML)."""
    from features.mimic.loader import FeatureFolderError
    from pipeline.ehr import report_ehr

    try:
        paths = report_ehr(run, features, out, split=split, coverage=coverage)
    except (FeatureFolderError, OSError, ValueError, RuntimeError) as err:
        fail(error_line(err))
    except Exception as err:  # MLflow raises its own exception types for unknown runs
        _mlflow_error(err)
    for kind, path in paths.items():
        typer.echo(f"wrote {kind}: {path}")


# --- end of training commands --------------------------------------------------------------


# --- image benchmarks (pipeline.images) -----------------------------------------------------

_DEFAULT_IMAGE_PRESETS = {
    "digits": "cnn-digits",
    "cifar10": "wrn28-10-cifar10",
    "cifar100": "wrn28-10-cifar100",
    "imagenet": "resnet50-imagenet",
}


def _mlflow_error(err: Exception) -> None:
    """Turn MLflow's own exceptions (unknown run, missing artifact) into a one-line error."""
    if type(err).__name__ != "MlflowException":
        raise err
    fail(str(err).splitlines()[0])


@app.command("train-images")
def train_images_command(
    dataset: Annotated[
        str, typer.Option("--dataset", help="digits | cifar10 | cifar100 | imagenet.")
    ] = "digits",
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Clean data folder (not for digits).")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="cnn-digits | wrn28-10-cifar10 | wrn28-10-cifar100 | resnet50-imagenet "
            "(default: the dataset's).",
        ),
    ] = None,
    method: Annotated[
        str | None, typer.Option("--method", help="rank1 (default) | deterministic | ensemble.")
    ] = None,
    posterior: Annotated[
        str | None, typer.Option("--posterior", help="normal (default) | cauchy.")
    ] = None,
    epochs: Annotated[
        float | None, typer.Option("--epochs", min=0.01, help="Epochs (schedule scales).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", min=1, help="Unique images per step.")
    ] = None,
    ensemble_size: Annotated[int | None, typer.Option("--ensemble-size", min=1, help="K.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Training seed.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda[:N].")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=0, help="DataLoader workers.")
    ] = None,
    experiment: Annotated[
        str | None, typer.Option("--experiment", help="MLflow experiment.")
    ] = None,
    run_name: Annotated[str | None, typer.Option("--run-name", help="MLflow run name.")] = None,
    checkpoint_dir: Annotated[
        Path | None, typer.Option("--checkpoint-dir", help="Write checkpoints here.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from --checkpoint-dir.")
    ] = False,
) -> None:
    """Train an image classifier (rank-1, deterministic or deep ensemble); log it to MLflow."""
    from pipeline.config import ConfigError
    from pipeline.images import image_preset, train_images

    if dataset not in _DEFAULT_IMAGE_PRESETS:
        fail(f"unknown dataset {dataset!r}; choose from {', '.join(_DEFAULT_IMAGE_PRESETS)}")
    try:
        job = image_preset(
            preset or _DEFAULT_IMAGE_PRESETS[dataset],
            dataset=dataset,
            data_dir=data_dir,
            method=method,
            posterior=posterior,
            epochs=epochs,
            batch_size=batch_size,
            ensemble_size=ensemble_size,
            seed=seed,
            device=device,
            num_workers=workers,
            experiment=experiment,
        )
    except ConfigError as err:
        fail(str(err))
    try:
        result = train_images(job, run_name=run_name, checkpoint_dir=checkpoint_dir, resume=resume)
    except (OSError, ValueError, RuntimeError) as err:
        fail(error_line(err))
    if result is None:  # a non-main torchrun process: the main one logs and prints
        return
    typer.echo(f"run_id {result.run_id}")
    for key, value in result.rows().items():
        typer.echo(f"  {key:<20} {value:.4f}")


@app.command("validate-images")
def validate_images_command(
    run: Annotated[str, typer.Option("--run", help="Run id of a `rank1 train-images` run.")],
    corruptions: Annotated[
        str | None,
        typer.Option("--corruptions", help="Comma-separated names (default: all generated)."),
    ] = None,
    severities: Annotated[
        str, typer.Option("--severities", help="Comma-separated, 1-5.")
    ] = "1,2,3,4,5",
    compare: Annotated[
        str | None, typer.Option("--compare", help="Run id drawn beside this one in the plot.")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Clean data folder (default: the run's).")
    ] = None,
    corrupted_dir: Annotated[
        Path | None,
        typer.Option("--corrupted-dir", help="Official CIFAR-C / ImageNet-C (else generated)."),
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda[:N].")] = "auto",
) -> None:
    """Evaluate a run on clean and corrupted test images; log the metrics and plot to it."""
    from pipeline.config import ConfigError, check_device
    from pipeline.images import validate_images

    try:
        names = None if corruptions is None else [c.strip() for c in corruptions.split(",")]
        levels = [int(s) for s in severities.split(",")]
    except ValueError:
        fail(f"--severities must be comma-separated integers, got {severities!r}")
    try:
        check_device(device, "--device")  # before the run's model is fetched
    except ConfigError as err:
        fail(str(err).removeprefix("config field "))
    try:
        metrics = validate_images(
            run,
            names,
            levels,
            data_dir=data_dir,
            corrupted_dir=corrupted_dir,
            compare_run_id=compare,
            device=device,
        )
    except (OSError, ValueError, RuntimeError) as err:
        fail(error_line(err))
    except Exception as err:  # MLflow raises its own exception types for unknown runs
        _mlflow_error(err)
    typer.echo(f"run_id {run}")
    for key in sorted(k for k in metrics if k.startswith(("clean/", "corrupt/mean/"))):
        typer.echo(f"  {key:<28} {metrics[key]:.4f}")


# --- end of image-benchmark commands ---------------------------------------------------------


# --- Prefect flows: pipeline, serve, demo (flows.mimic, flows.deployments, flows.demo) --


def _methods(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


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


def _console_without_tracebacks() -> None:
    """Keep Prefect's run logs on the terminal but drop their tracebacks there.

    A failed task or flow run logs its exception with a traceback; on the terminal the
    command's own one-line error says what went wrong, and the full traceback stays in the
    run's logs in the Prefect UI.
    """
    from prefect.logging.configuration import setup_logging
    from prefect.logging.handlers import PrefectConsoleHandler

    setup_logging()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not isinstance(
            handler.formatter, _WithoutTraceback
        ):
            handler.setFormatter(_WithoutTraceback(handler.formatter))


def _run_flow(flow_fn, params_model, **kwargs):
    """Check a flow's parameters, run it, turn errors a user can fix into one line.

    The parameters are checked here first, so a bad value fails at once (the flow checks
    them again for runs started from the Prefect UI or a schedule). Parameter errors, bad
    input data, unreadable files and MLflow errors (unknown run, unreachable server) become
    ``error: ...`` and exit status 1; anything else is a bug and keeps its traceback.
    """
    from flows.params import ParameterError, validate

    try:
        validate(flow_fn.__name__, params_model, kwargs)
    except ParameterError as err:
        fail(str(err))
    _console_without_tracebacks()
    from flows.runs import owned_by_this_process

    try:
        # Tagged with this process, so a rerun after kill -9 can set its runs Crashed.
        with owned_by_this_process():
            return flow_fn(**kwargs)
    except ParameterError as err:
        fail(str(err))
    except (OSError, ValueError, RuntimeError) as err:
        fail(f"{type(err).__name__}: {error_line(err)}")
    except Exception as err:  # MLflow raises its own exception types
        if type(err).__name__ != "MlflowException":
            raise
        fail(str(err).splitlines()[0])


def _train_overrides(
    config_file: Path | None, steps: int | None, batch_size: int | None, device: str | None
) -> dict:
    """TrainConfig overrides from a YAML file and the shortcut options."""
    from pipeline.config import ConfigError, read_yaml

    overrides: dict = {}
    if config_file is not None:
        try:
            overrides = read_yaml(config_file) or {}  # its errors name file, line, column
        except ConfigError as err:
            fail(str(err))
        if not isinstance(overrides, dict):
            fail(f"{config_file}: must hold a mapping of TrainConfig fields")
    if steps is not None:
        # Keep the recipe's proportion: the KL is annealed over the first half.
        schedule = dict(overrides.get("schedule") or {})
        schedule.update(unit="steps", length=steps, kl_anneal=steps // 2)
        overrides["schedule"] = schedule
        overrides.setdefault("eval_every", max(steps // 10, 1))
        # Checkpoints as often as evaluations: a killed run resumes from the last one.
        overrides.setdefault("checkpoint_every", max(steps // 10, 1))
    if batch_size is not None:
        overrides["batch_size"] = batch_size
    if device is not None:
        overrides["device"] = device
    return overrides


@app.command("pipeline")
def pipeline_command(
    mimic_dir: Annotated[
        Path,
        typer.Option(
            "--mimic-dir", help="MIMIC-III tables: the full database, the demo or synthetic."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output root: features/ and reports/<method>/.")
    ] = Path("outputs/mimic"),
    methods: Annotated[
        str, typer.Option("--methods", help="Comma-separated: rank1, deterministic, ensemble.")
    ] = "rank1,deterministic",
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="YAML TrainConfig overrides (default: paper recipe)."),
    ] = None,
    steps: Annotated[
        int | None, typer.Option("--steps", min=1, help="Training steps (recipe: 10000).")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, help="Rows per step (recipe: 64; rank-1: K x unique)."),
    ] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="auto (default) | cpu | cuda[:N].")
    ] = None,
    rnn_dim: Annotated[int, typer.Option("--rnn-dim", min=1, help="LSTM units.")] = 256,
    hidden_dim: Annotated[int, typer.Option("--hidden-dim", min=1, help="Dense units.")] = 128,
    experiment: Annotated[str, typer.Option("--experiment", help="MLflow experiment.")] = (
        "mimic-ihm"
    ),
    seed: Annotated[int, typer.Option("--seed", help="Seed of the subject split.")] = 0,
    coverage: Annotated[
        float, typer.Option("--coverage", help="Share of stays not referred in the report.")
    ] = 0.8,
    force_extract: Annotated[
        bool, typer.Option("--force-extract", help="Extract even if the tables are unchanged.")
    ] = False,
) -> None:
    """Run the clinical pipeline flow: extract, train, calibrate, report (Prefect + MLflow)."""
    import sys

    from flows.mimic import clinical_pipeline
    from flows.params import ClinicalParams

    result = _run_flow(
        clinical_pipeline,
        ClinicalParams,
        mimic_dir=mimic_dir,
        out_dir=out,
        methods=_methods(methods),
        train=_train_overrides(config_file, steps, batch_size, device),
        model={"rnn_dim": rnn_dim, "hidden_dim": hidden_dim},
        experiment=experiment,
        seed=seed,
        coverage=coverage,
        force_extract=force_extract,
        progress=sys.stderr.isatty(),
    )
    state = "extracted" if result["extracted"] else "unchanged inputs, kept"
    typer.echo(f"features: {result['features_dir']} ({state})")
    for method, run_id in result["runs"].items():
        typer.echo(f"{method}: MLflow run {run_id}, report {result['reports'][method]}")
    _print_uis()


@app.command("serve")
def serve_command(
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="Deployment YAML (default: the packaged example)."),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Serve only this deployment (repeatable)."),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Check the file and list the schedules; serve nothing.")
    ] = False,
) -> None:
    """Register scheduled deployments with the Prefect server (PREFECT_API_URL) and run them."""
    from flows.deployments import DeploymentError, entrypoint_problems, load_config, serve

    try:
        config = load_config(config_file)
    except DeploymentError as err:
        fail_all(err.problems)
    for entry in config.deployments:
        when = (
            f"cron '{entry.cron}' {entry.timezone}"
            if entry.cron
            else f"every {entry.interval_seconds:g} s"
        )
        typer.echo(f"{entry.name}: {entry.flow}, {when}{' (paused)' if entry.paused else ''}")
    try:
        # Import every flow now, with or without --check, and report each that fails.
        problems = entrypoint_problems(config, only)
    except DeploymentError as err:
        fail_all(err.problems)
    if problems:
        fail_all(problems)
    if check:
        return
    try:
        serve(config, only=only)
    except DeploymentError as err:
        fail_all(err.problems)
    except KeyboardInterrupt:
        pass  # Ctrl-C or SIGTERM: a normal way to stop serving
    typer.echo("stopped serving; the schedules are paused until the next `rank1 serve`")


@app.command("deploy")
def deploy_command(
    pool: Annotated[str, typer.Option("--pool", help="Work pool whose workers run the flows.")],
    config_file: Annotated[
        Path | None,
        typer.Option("--config", help="Deployment YAML (default: the packaged example)."),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Register only this deployment (repeatable)."),
    ] = None,
) -> None:
    """Register the scheduled deployments with a work pool (run by `prefect worker start`)."""
    from flows.deployments import DeploymentError, deploy_to_pool, load_config

    try:
        # The workers run the flows, perhaps on other machines: they check the devices.
        config = load_config(config_file, runs_here=False)
        ids = deploy_to_pool(config, pool, only=only)
    except DeploymentError as err:
        fail_all(err.problems)
    typer.echo(f"registered {len(ids)} deployment(s) with work pool {pool!r}")
    typer.echo(f"start a worker where the flows should run: prefect worker start --pool {pool}")


@app.command("demo")
def demo_command(
    out: Annotated[Path, typer.Option("--out", help="Output root.")] = Path("outputs"),
    patients: Annotated[
        int, typer.Option("--patients", min=200, help="Synthetic patients.")
    ] = 1000,
    steps: Annotated[int, typer.Option("--steps", min=10, help="EHR training steps.")] = 300,
    image_epochs: Annotated[
        float | None,
        typer.Option("--image-epochs", min=0.01, help="Digits training epochs (recipe: 30)."),
    ] = None,
    severities: Annotated[
        str, typer.Option("--severities", help="Comma-separated corruption severities, 1-5.")
    ] = "1,3,5",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic cohort.")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu (default) | auto | cuda.")] = "cpu",
    threads: Annotated[
        int, typer.Option("--threads", min=0, help="torch CPU threads (0: one per core).")
    ] = 1,
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

    try:
        levels = [int(level) for level in severities.split(",")]
    except ValueError:
        fail(f"--severities must be comma-separated integers, got {severities!r}")
    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    from flows.demo import demo
    from flows.params import DemoParams

    started = time.perf_counter()
    result = _run_flow(
        demo,
        DemoParams,
        out_dir=out,
        patients=patients,
        steps=steps,
        image_epochs=image_epochs,
        severities=levels,
        seed=seed,
        device=device,
        torch_threads=threads or None,
        progress=sys.stderr.isatty(),
    )
    clinical, images = result["clinical"], result["images"]

    def row(label: str, value: object) -> None:
        typer.echo(f"{label + ':':<34}{value}")

    typer.echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    row("synthetic MIMIC-III tables", out / "mimic-synthetic")
    row("feature folder", clinical["features_dir"])
    for method, html in clinical["reports"].items():
        row(f"{method} report", f"{Path(html).parent} (report.parquet, report.csv)")
        row("  HTML summary", html)
    for method, run_id in clinical["runs"].items():
        row(f"MLflow run {method}", f"{run_id} (experiment demo-mimic-ihm)")
    for method, run_id in images["runs"].items():
        summary = images["validation"][method]
        row(
            f"MLflow run digits {method}",
            f"{run_id} (experiment demo-images; accuracy clean "
            f"{summary['clean/accuracy']:.3f}, corrupted {summary['corrupt/mean/accuracy']:.3f})",
        )
    _print_uis()


def _print_uis() -> None:
    """Where the MLflow store is and how to open the MLflow and Prefect UIs."""
    from pipeline.tracking import tracking_uri

    uri = tracking_uri()
    typer.echo(f"\nMLflow store: {uri}")
    if uri.startswith("sqlite:"):
        typer.echo(
            f"  open the MLflow UI: mlflow ui --backend-store-uri {uri} "
            "--host 127.0.0.1 --port 5000  ->  http://127.0.0.1:5000"
        )
    typer.echo(
        "  open the Prefect UI: prefect server start --host 127.0.0.1 --port 4200 "
        "--analytics-off  ->  http://127.0.0.1:4200 (it shows these runs: same PREFECT_HOME)"
    )


# --- end of Prefect flow commands ---------------------------------------------------------

if __name__ == "__main__":
    app()
