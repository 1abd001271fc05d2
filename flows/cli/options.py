"""Options that several ``rank1`` commands share, each defined once.

Each is a type for a command's parameter: ``device: options.Device = None``. An option
whose meaning differs between commands (``--out``, ``--patients``, the demo's ``--steps``
and ``--device``, the demo's ``--seed``) is declared by its command instead. A command passes
each value on by name, so every option can be followed to the code that uses it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows.cli import fail

_EXPERIMENT = typer.Option("--experiment", help="MLflow experiment.")
_DEVICE = typer.Option("--device", help="auto (default) | cpu | cuda[:N].")
_RNN_DIM = typer.Option("--rnn-dim", min=1, help="LSTM units (paper: 256).")
_HIDDEN_DIM = typer.Option("--hidden-dim", min=1, help="Dense units (paper: 128).")
_SEVERITIES = typer.Option("--severities", help="Comma-separated corruption severities, 1-5.")

#: MLflow experiment; ``ExperimentOrDefault``: None takes the recipe's.
Experiment = Annotated[str, _EXPERIMENT]
ExperimentOrDefault = Annotated[str | None, _EXPERIMENT]

#: Where to train or evaluate; ``Device``: None keeps the config's (``auto``).
Device = Annotated[str | None, _DEVICE]
DeviceName = Annotated[str, _DEVICE]

#: Seed of the training (initialisation, data order, sampling).
TrainingSeed = Annotated[int | None, typer.Option("--seed", help="Training seed (default 0).")]
#: Seed of the subject-level train/val/test split of an extraction.
SplitSeed = Annotated[int, typer.Option("--seed", help="Seed of the subject-level split.")]

#: EHR training length and batch: the recipe's proportions are kept (see
#: flows.cli.mimic.train_overrides, the one place that applies them).
Steps = Annotated[
    int | None, typer.Option("--steps", min=1, help="Optimiser steps (recipe: 10000).")
]
EhrBatchSize = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        min=1,
        help="Unique stays per step; the rank-1 model tiles them K times "
        "(recipe: 16 for rank-1, 64 otherwise).",
    ),
]
#: Image batch: the learning rate scales with it (pipeline.recipes.image_preset).
ImageBatchSize = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        min=1,
        help="Unique images per step; the rank-1 model tiles them K times (LR scales).",
    ),
]
#: A YAML file of TrainConfig fields.
TrainConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config", help="YAML TrainConfig fields (default: paper recipe); options override it."
    ),
]

#: EHR model sizes; None keeps rank1.models.EHRConfig's.
RnnDimOrDefault = Annotated[int | None, _RNN_DIM]
HiddenDimOrDefault = Annotated[int | None, _HIDDEN_DIM]

#: The model family and its rank-1 posterior (None: the recipe's).
Method = Annotated[
    str | None, typer.Option("--method", help="rank1 (default) | deterministic | ensemble.")
]
Posterior = Annotated[
    str | None,
    typer.Option("--posterior", help="Rank-1 factor family: normal (default) | cauchy."),
]
EnsembleSize = Annotated[
    int | None, typer.Option("--ensemble-size", min=1, help="K (default: the recipe's).")
]

#: MLflow run name, checkpoints and resuming of a training command.
RunName = Annotated[str | None, typer.Option("--run-name", help="MLflow run name.")]
CheckpointDir = Annotated[
    Path | None, typer.Option("--checkpoint-dir", help="Write checkpoints here.")
]
Resume = Annotated[bool, typer.Option("--resume", help="Continue from --checkpoint-dir.")]

#: The registered model a training adds a version to, and whether to promote it.
RegisterAs = Annotated[
    str,
    typer.Option(
        "--register-as",
        metavar="NAME",
        help="Register the model as a new version of NAME in the MLflow Model Registry "
        "({method}: the method).",
    ),
]
PromoteIfBetter = Annotated[
    bool,
    typer.Option(
        "--promote-if-better",
        help="Make the new version the 'champion' if its validation NLL beats the "
        "champion's (or there is none).",
    ),
]

#: Corruption severities as typed (parse with :func:`severity_levels`).
Severities = Annotated[str, _SEVERITIES]

#: The deployment file and the deployments to act on (``rank1 serve`` / ``deploy``).
DeploymentFile = Annotated[
    Path | None,
    typer.Option("--config", help="Deployment YAML (default: the packaged example)."),
]
Only = Annotated[
    list[str] | None,
    typer.Option("--only", help="Only this deployment (repeatable)."),
]


def severity_levels(text: str) -> list[int]:
    """The integers of a ``--severities`` value; else a one-line error and exit 1."""
    try:
        return [int(level) for level in text.split(",")]
    except ValueError:
        fail(f"--severities must be comma-separated integers, got {text!r}")


#: The benchmark task of a feature folder (``--task``); None: the folder's own.
Task = Annotated[
    str | None,
    typer.Option(
        "--task",
        help="ihm | decompensation | length-of-stay | phenotyping (default: the feature "
        "folder's task; given, it must match).",
    ),
]
