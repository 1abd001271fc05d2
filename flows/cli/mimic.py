"""``rank1`` commands of the clinical pipeline: synth to pipeline, promote, score, compare-cohorts.

``synth`` and ``extract`` call :mod:`features.synthetic` and :mod:`features.mimic`, ``train``
and ``report`` call :mod:`pipeline.ehr`, ``promote`` moves a registry alias
(:func:`pipeline.tracking.promote`), ``score`` runs the Prefect flow
:func:`flows.score.score_mimic`, ``compare-cohorts`` runs the Prefect flow
:func:`flows.shift.compare_cohorts` and ``pipeline`` the flow
:func:`flows.mimic.clinical_pipeline`.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Annotated, Any, get_args

import typer

from features.shifts import ShiftName
from flows.cli import error_line, fail, options
from flows.cli.running import print_uis, run_flow
from flows.params import (
    ClinicalParams,
    CompareParams,
    ExtractParams,
    ReportParams,
    ScoreParams,
    TrainParams,
    defaults,
)
from pipeline.tracking.registry import CHAMPION

# The flows' parameter models are the home of the defaults the options show.
_EXTRACT, _REPORT = defaults(ExtractParams), defaults(ReportParams)
_CLINICAL, _COMPARE = defaults(ClinicalParams), defaults(CompareParams)
_TRAIN = defaults(TrainParams)
_SCORE = ScoreParams.model_fields
#: The MLflow experiment of the EHR runs.
EXPERIMENT = _TRAIN.experiment
_METHODS = ",".join(_CLINICAL.methods)


def synth_command(
    patients: Annotated[int, typer.Option("--patients", min=1, help="Number of patients.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write the MIMIC-III tables to.")],
    seed: Annotated[
        int, typer.Option("--seed", help="Seed; the same seed gives the same files.")
    ] = 0,
    shift: Annotated[
        str | None,
        typer.Option(
            "--shift",
            metavar="NAME",
            help=f"Write a shifted cohort ({', '.join(get_args(ShiftName))}; see "
            "features/shifts.py); omit for the base cohort.",
        ),
    ] = None,
) -> None:
    """Write a synthetic MIMIC-III database with a planted, known mortality risk."""
    from rich.console import Console

    from features.synthetic import generate

    console = Console(stderr=True)
    try:
        with console.status(f"generating {patients} patients into {out}"):
            summary = generate(out, patients=patients, seed=seed, shift=shift)
    except (OSError, ValueError) as err:
        fail(str(err))
    rows = ", ".join(f"{name} {count:,}" for name, count in summary["rows"].items())
    shifted = f" (shift {summary['shift']})" if summary["shift"] else ""
    typer.echo(
        f"wrote {out}{shifted}: {summary['patients']:,} patients, "
        f"{summary['icustays']:,} ICU stays, "
        f"{summary['deaths']:,} in-hospital deaths (mean planted risk "
        f"{summary['mean_true_risk']:.3f}); rows: {rows}"
    )


def extract_command(
    mimic_dir: Annotated[Path, typer.Option("--mimic-dir", help="Folder with MIMIC-III CSV(.gz).")],
    out: Annotated[
        Path,
        typer.Option("--out", help="Feature folder to write (--task all: one per task in it)."),
    ],
    task: Annotated[
        str,
        typer.Option(
            "--task",
            help="ihm | decompensation | length-of-stay | phenotyping | all (the four "
            "from one read of the tables, into OUT/<task>).",
        ),
    ] = _EXTRACT.task,
    seed: options.SplitSeed = _EXTRACT.seed,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of subjects.")
    ] = _EXTRACT.val_fraction,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="Share of subjects.")
    ] = _EXTRACT.test_fraction,
) -> None:
    """Extract a benchmark task's features (mimic3-benchmarks definitions)."""
    from features.mimic.extract import extract, extract_all
    from features.mimic.tables import MimicInputError
    from features.mimic.task_names import TASKS

    if task not in (*TASKS, "all"):
        fail(f"--task: expected one of {', '.join(TASKS)} or all, got {task!r}")
    settings = {"seed": seed, "val_fraction": val_fraction, "test_fraction": test_fraction}
    try:
        if task == "all":
            manifests = extract_all(mimic_dir, out, progress=True, **settings)
        else:
            manifests = {task: extract(mimic_dir, out, task=task, progress=True, **settings)}
    except (MimicInputError, OSError, ValueError) as err:
        fail(str(err))
    for name, manifest in manifests.items():
        folder = out / name if task == "all" else out
        _describe_extraction(folder, manifest)


def _describe_extraction(folder: Path, manifest: Any) -> None:
    """Print what one extraction wrote: cohort steps, samples and splits, warnings."""
    typer.echo(f"wrote {folder} ({manifest.task}) in {manifest.total_seconds:.1f} s")
    typer.echo("cohort (stays / subjects):")
    for step in manifest.cohort.steps:
        typer.echo(f"  {step.step:<28} {step.stays:>8,} / {step.subjects:,}")
    samples = getattr(manifest, "samples", None)
    if samples is not None and manifest.task != "phenotyping":
        positives = manifest.positives
        of = f" ({positives:,} positive)" if isinstance(positives, int) else ""
        typer.echo(f"hourly samples: {samples:,}{of}")
    counts = manifest.split.counts
    parts = [f"{name} {c.stays:,} ({c.positives:,} deaths)" for name, c in counts]
    typer.echo("splits: " + ", ".join(parts))
    for warning in manifest.warnings:
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)


def train_command(
    features: Annotated[Path, typer.Option("--features", help="Feature folder to train on.")],
    method: options.Method = None,
    posterior: options.Posterior = None,
    steps: options.Steps = None,
    kl_anneal: Annotated[
        int | None,
        typer.Option("--kl-anneal", min=0, help="KL annealing steps (default: half of --steps)."),
    ] = None,
    batch_size: options.EhrBatchSize = None,
    ensemble_size: options.EnsembleSize = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Adam learning rate.")] = None,
    seed: options.TrainingSeed = None,
    rnn_dim: options.RnnDimOrDefault = None,
    hidden_dim: options.HiddenDimOrDefault = None,
    num_eval_samples: Annotated[
        int | None, typer.Option("--num-eval-samples", min=1, help="MC samples per member.")
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option("--eval-every", min=0, help="Validate every N steps.")
    ] = None,
    patience: Annotated[
        int | None, typer.Option("--patience", min=0, help="Early-stopping evaluations.")
    ] = None,
    device: options.Device = None,
    config_file: options.TrainConfigFile = None,
    experiment: options.ExperimentOrDefault = None,
    run_name: options.RunName = None,
    checkpoint_dir: options.CheckpointDir = None,
    resume: options.Resume = False,
    register_as: options.RegisterAs = _TRAIN.register_as,
    promote_if_better: options.PromoteIfBetter = _TRAIN.promote_if_better,
    task: options.Task = None,
) -> None:
    """Train an EHR model (rank-1 BNN, deterministic or deep ensemble), log and register it.

    The task is the feature folder's: in-hospital mortality (logged to mimic-ehr and
    registered), or a whole-stay task (logged to mimic-<task>; not registered, since
    scoring serves in-hospital mortality only).
    """
    from pipeline.config import ConfigError, TrainConfig, check_device

    try:
        overrides = train_overrides(config_file, steps, batch_size, device)
        overrides |= _given(
            method=method,
            posterior=posterior,
            seed=seed,
            ensemble_size=ensemble_size,
            num_eval_samples=num_eval_samples,
            eval_every=eval_every,
            patience=patience,
        )
        if lr is not None:
            overrides["optim"] = {**overrides.get("optim", {}), "lr": lr}
        if kl_anneal is not None:
            overrides["schedule"] = {**overrides.get("schedule", {}), "kl_anneal": kl_anneal}
        config = TrainConfig.from_dict(overrides)
        # Before the data is loaded: a missing GPU is known now.
        check_device(config.device)
    except ConfigError as err:
        fail(str(err))

    from features.mimic.loader import FeatureFolderError
    from pipeline.ehr import train_ehr
    from rank1.models import EHRConfig

    model_config = EHRConfig(**_given(rnn_dim=rnn_dim, hidden_dim=hidden_dim))
    own = folder_task(features, task)
    if own == "ihm":
        experiment = experiment or EXPERIMENT
        job: Any = partial(train_ehr, register_as=register_as, promote_if_better=promote_if_better)
    else:
        from pipeline.tasks import task_spec
        from pipeline.tasks.job import train_task_folder

        experiment, job = experiment or task_spec(own).experiment, train_task_folder
    try:
        result = job(
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
    if result.registered is not None:
        typer.echo(f"registered {result.registered.describe()}")
    print_uis([experiment], prefect_runs=False)


def folder_task(features: Path, task: str | None) -> str:
    """The ``--task`` of a feature folder: its own, checked against a given one."""
    from features.mimic.manifest import TASK, read_manifest_header
    from features.mimic.task_names import TASKS

    if task is not None and task not in TASKS:
        fail(f"--task: expected one of {', '.join(TASKS)}, got {task!r}")
    header = read_manifest_header(features)
    if header is None:
        # The in-hospital-mortality loaders say what is wrong with the folder, in one line.
        return task or "ihm"
    own = "ihm" if header.task == TASK else header.task
    if task is not None and task != own:
        fail(f"--task {task}: {features} is a {own} feature folder")
    return own


def train_overrides(
    config_file: Path | None, steps: int | None, batch_size: int | None, device: str | None
) -> dict[str, Any]:
    """``TrainConfig`` overrides of ``--config``, ``--steps``, ``--batch-size``, ``--device``.

    The one translation of these options, so ``rank1 train`` and ``rank1 pipeline`` build the
    same config from the same options. ``--steps`` keeps the recipe's proportions: the KL is
    annealed over the first half, and a short run still validates (and checkpoints, so a
    killed run resumes from the last evaluation) at least ten times; the file's own
    ``eval_every`` / ``checkpoint_every`` win.

    Raises:
        pipeline.config.ConfigError: A bad file, one line naming it.
    """
    from pipeline.config import ConfigError, TrainConfig, read_yaml

    overrides: dict[str, Any] = {}
    if config_file is not None:
        overrides = read_yaml(config_file) or {}  # its errors name the file, line and column
        try:
            TrainConfig.from_dict(overrides)
        except ConfigError as err:
            raise ConfigError(f"{config_file}: {err}") from None
    if steps is not None:
        overrides["schedule"] = {
            **overrides.get("schedule", {}),
            **{"unit": "steps", "length": steps, "kl_anneal": steps // 2},
        }
        recipe_every = TrainConfig.model_fields["eval_every"].default
        overrides.setdefault("eval_every", min(recipe_every, max(steps // 10, 1)))
        overrides.setdefault("checkpoint_every", overrides["eval_every"])
    return overrides | _given(batch_size=batch_size, device=device)


def _given(**values: Any) -> dict[str, Any]:
    """The options that were given (not None): the others keep the recipe's value."""
    return {name: value for name, value in values.items() if value is not None}


def promote_command(
    model: Annotated[
        str, typer.Option("--model", metavar="NAME", help="Registered model, e.g. mimic-ihm-rank1.")
    ],
    version: Annotated[int, typer.Option("--version", min=1, help="The version to promote.")],
    alias: Annotated[
        str, typer.Option("--alias", help="The alias to point at it (moved from its holder).")
    ] = CHAMPION,
) -> None:
    """Point an alias (default: champion) of a registered model at one of its versions."""
    from pipeline import tracking
    from pipeline.ehr import SELECTION_METRIC

    try:
        promoted = tracking.promote(model, version, alias)
        value = tracking.run_metrics(promoted.run_id).get(SELECTION_METRIC)
    except (ValueError, RuntimeError) as err:
        fail(error_line(err))
    nll = "not recorded" if value is None else f"{value:.4f}"
    typer.echo(
        f"{promoted.name} version {promoted.version} is now @{alias} "
        f"(run {promoted.run_id}, {SELECTION_METRIC} {nll})"
    )


def report_command(
    run: Annotated[str, typer.Option("--run", help="MLflow run id of a `rank1 train` run.")],
    features: Annotated[Path, typer.Option("--features", help="Feature folder.")],
    out: Annotated[Path, typer.Option("--out", help="Report folder (owner-only).")],
    split: Annotated[str, typer.Option("--split", help="train | val | test.")] = _REPORT.split,
    coverage: Annotated[
        float, typer.Option("--coverage", min=0.0, max=1.0, help="Share not referred.")
    ] = _REPORT.coverage,
    task: options.Task = None,
) -> None:
    """Write the per-patient risk and uncertainty report of one split (Parquet/CSV/HTML).

    For a whole-stay task folder: decompensation's hourly risk trajectories, length of
    stay's bucket distributions or phenotyping's per-label risks.
    """
    from features.mimic.loader import FeatureFolderError
    from pipeline.ehr import report_ehr
    from pipeline.tasks.job import report_task

    writer = report_ehr if folder_task(features, task) == "ihm" else report_task
    try:
        paths = writer(run, features, out, split=split, coverage=coverage)
    except (FeatureFolderError, OSError, ValueError, RuntimeError) as err:
        fail(error_line(err))
    for kind, path in paths.items():
        typer.echo(f"wrote {kind}: {path}")


def score_command(
    out: Annotated[Path, typer.Option("--out", help="Report folder (owner-only).")],
    model: Annotated[
        str,
        typer.Option(
            "--model", metavar="URI", help="Registered version: models:/NAME@ALIAS or /VERSION."
        ),
    ] = _SCORE["model_uri"].default,
    mimic_dir: Annotated[
        Path | None,
        typer.Option("--mimic-dir", help="Raw MIMIC-III tables of the patients to score."),
    ] = None,
    exports_dir: Annotated[
        Path | None,
        typer.Option(
            "--exports-dir",
            help="Folder of dated exports: score the newest (report in --out/<its name>).",
        ),
    ] = None,
    features: Annotated[
        Path | None, typer.Option("--features", help="An existing feature folder instead.")
    ] = None,
    split: Annotated[
        str | None, typer.Option("--split", help="With a training --features: one split.")
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            metavar="TIME",
            help="Export time (YYYY-MM-DD HH:MM:SS) for stays still in the ICU; default: "
            "the newest event.",
        ),
    ] = None,
    coverage: Annotated[
        float, typer.Option("--coverage", min=0.0, max=1.0, help="Share not referred.")
    ] = _SCORE["coverage"].default,
    experiment: Annotated[
        str, typer.Option("--experiment", help="MLflow experiment of the scoring run.")
    ] = _SCORE["experiment"].default,
) -> None:
    """Score new patients with a registered model: per-patient report, drift, MLflow run."""
    from flows.score import score_mimic

    result = run_flow(
        score_mimic,
        ScoreParams,
        {
            "model_uri": model,
            "mimic_dir": mimic_dir,
            "exports_dir": exports_dir,
            "features_dir": features,
            "out_dir": out,
            "split": split,
            "as_of": as_of,
            "coverage": coverage,
            "experiment": experiment,
        },
    )
    skipped = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in result["skipped"].items())
    unlike = result["unlike_training"]
    typer.echo(
        f"{result['model']} scored {result['stays']} stays"
        + (f" as of {result['as_of']}" if result["as_of"] else "")
        + f": mean risk {result['mean_risk']:.3f}, {result['referred']} referred, "
        + ("unlike training: n/a" if unlike is None else f"{unlike} unlike training")
        + (f"; skipped: {skipped}" if skipped else "")
    )
    for line in result["drifted"]:
        typer.echo(f"drift: {line}")
    for kind, path in result["files"].items():
        typer.echo(f"wrote {kind}: {path}")
    typer.echo(f"MLflow run {result['run_id']}")
    print_uis([experiment])


#: The columns of compare-cohorts' table: (heading, CohortScore field).
_COMPARE_COLUMNS = (
    ("stays", "stays"),
    ("deaths", "deaths"),
    ("AUROC", "auroc"),
    ("NLL", "nll"),
    ("ECE vs true risk", "ece_true_risk"),
    ("detect total", "detect_total"),
    ("detect aleatoric", "detect_aleatoric"),
    ("detect epistemic", "detect_epistemic"),
    ("detect interval", "detect_interval"),
    ("Spearman(epistemic, risk)", "spearman_epistemic_risk"),
)


def compare_command(
    run_id: Annotated[
        str, typer.Option("--run-id", help="MLflow run id of a `rank1 train` / pipeline run.")
    ],
    features: Annotated[
        Path, typer.Option("--features", help="Feature folder the run trained on.")
    ],
    shifted: Annotated[
        Path,
        typer.Option(
            "--shifted",
            help="Feature folder to compare with (may be --features itself, with "
            "--shifted-split and filters).",
        ),
    ],
    split: Annotated[
        str, typer.Option("--split", help="In-distribution split: train | val | test.")
    ] = _COMPARE.split,
    shifted_split: Annotated[
        str | None,
        typer.Option("--shifted-split", help="Split of --shifted (default: every stay)."),
    ] = _COMPARE.shifted_split,
    in_dist_where: Annotated[
        str | None,
        typer.Option(
            "--in-dist-where",
            metavar="COLUMN=VALUE",
            help="Only in-distribution stays with this stays column value, e.g. dbsource=carevue.",
        ),
    ] = _COMPARE.in_dist_where,
    shifted_where: Annotated[
        str | None,
        typer.Option(
            "--shifted-where",
            metavar="COLUMN=VALUE",
            help="Only shifted stays with this value, e.g. dbsource=metavision.",
        ),
    ] = _COMPARE.shifted_where,
    experiment: options.Experiment = _COMPARE.experiment,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write comparison.json here (owner-only)."),
    ] = _COMPARE.out_dir,
) -> None:
    """Does a run's uncertainty flag another cohort? Detection AUROCs, logged to MLflow."""
    from flows.shift import compare_cohorts

    result = run_flow(
        compare_cohorts,
        CompareParams,
        {
            "run_id": run_id,
            "features_dir": features,
            "shifted_dir": shifted,
            "split": split,
            "shifted_split": shifted_split,
            "in_dist_where": in_dist_where,
            "shifted_where": shifted_where,
            "experiment": experiment,
            "out_dir": out,
        },
    )
    typer.echo(compare_table(result))
    typer.echo(
        "\ndetect: AUROC with which each uncertainty separates the shifted stays from the "
        "in-distribution ones (0.5: chance)"
    )
    typer.echo(f"MLflow run {result['comparison_run_id']} (source run {run_id})")
    if result["json"] is not None:
        typer.echo(f"wrote {result['json']}")
    print_uis([experiment])


def compare_table(result: dict[str, Any]) -> str:
    """The two cohorts of a ``compare_cohorts`` result as a markdown table."""
    import math

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "n/a" if math.isnan(value) else f"{value:.4f}"
        return str(value)

    header = ("cohort", *(title for title, _ in _COMPARE_COLUMNS))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for key in ("in_distribution", "shifted"):
        score = result[key]
        cells = [score["cohort"], *(cell(score[field]) for _, field in _COMPARE_COLUMNS)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _methods(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def pipeline_command(
    mimic_dir: Annotated[
        Path,
        typer.Option(
            "--mimic-dir", help="MIMIC-III tables: the full database, the demo or synthetic."
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Output root: features/ and reports/<method>/.")
    ] = _CLINICAL.out_dir,
    methods: Annotated[
        str, typer.Option("--methods", help="Comma-separated: rank1, deterministic, ensemble.")
    ] = _METHODS,
    config_file: options.TrainConfigFile = None,
    steps: options.Steps = None,
    batch_size: options.EhrBatchSize = None,
    device: options.Device = None,
    rnn_dim: options.RnnDimOrDefault = None,
    hidden_dim: options.HiddenDimOrDefault = None,
    experiment: options.Experiment = EXPERIMENT,
    seed: options.SplitSeed = _CLINICAL.seed,
    coverage: Annotated[
        float, typer.Option("--coverage", help="Share of stays not referred in the report.")
    ] = _CLINICAL.coverage,
    force_extract: Annotated[
        bool, typer.Option("--force-extract", help="Extract even if the tables are unchanged.")
    ] = False,
    register_as: options.RegisterAs = _CLINICAL.register_as,
    promote_if_better: options.PromoteIfBetter = _CLINICAL.promote_if_better,
    task: Annotated[
        str,
        typer.Option(
            "--task", help="ihm | decompensation | length-of-stay | phenotyping (default ihm)."
        ),
    ] = _CLINICAL.task,
) -> None:
    """Run the clinical pipeline flow: extract, train, calibrate, report (Prefect + MLflow).

    A whole-stay task logs to mimic-<task> (unless --experiment names another) and is not
    registered.
    """
    import sys

    from flows.mimic import clinical_pipeline
    from pipeline.config import ConfigError

    try:
        overrides = train_overrides(config_file, steps, batch_size, device)
    except ConfigError as err:
        fail(str(err))
    result = run_flow(
        clinical_pipeline,
        ClinicalParams,
        {
            "mimic_dir": mimic_dir,
            "out_dir": out,
            "methods": _methods(methods),
            "train": overrides,
            "model": _given(rnn_dim=rnn_dim, hidden_dim=hidden_dim),
            "experiment": experiment,
            "seed": seed,
            "coverage": coverage,
            "force_extract": force_extract,
            "register_as": register_as,
            "promote_if_better": promote_if_better,
            "task": task,
            "progress": sys.stderr.isatty(),
        },
    )
    if task != "ihm" and experiment == EXPERIMENT:
        experiment = f"mimic-{task}"
    state = "extracted" if result["extracted"] else "unchanged inputs, kept"
    typer.echo(f"features: {result['features_dir']} ({state})")
    for method, run_id in result["runs"].items():
        typer.echo(f"{method}: MLflow run {run_id}, report {result['reports'][method]}")
    print_uis([experiment])
