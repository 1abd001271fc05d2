"""Runs: start, resume, read, and log params, metrics and artifacts."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.tracking.errors import _mlflow_errors, _translates_mlflow_errors
from pipeline.tracking.guard import _plain, check_no_patient_data, flatten_params
from pipeline.tracking.store import (
    _mlflow,
    _owner_only_files,
    _require_active_run,
    default_artifact_location,
)


def _experiment_id(mlflow, name: str) -> str:
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=default_artifact_location())
    except MlflowException:
        # Another process created it between our lookup and create.
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


@_translates_mlflow_errors
def experiment_id(name: str) -> str | None:
    """The id of an experiment (as in its MLflow UI links), or None if there is none yet."""
    experiment = _mlflow().MlflowClient().get_experiment_by_name(name)
    return None if experiment is None else experiment.experiment_id


@contextmanager
def start_run(
    experiment: str,
    run_name: str | None = None,
    params: Mapping[str, Any] | Any | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """Start an MLflow run in ``experiment`` (created if needed) and log params and tags.

    Params and tags are checked for patient data *before* MLflow is touched.

    Args:
        experiment: experiment name.
        run_name: optional display name of the run.
        params: nested config (mapping or dataclass); flattened to dotted keys.
        tags: flat mapping of tag names to values.

    Yields:
        The ``mlflow.ActiveRun``; ``run.info.run_id`` identifies it. The run ends with
        status FAILED if the block raises.
    """
    check_no_patient_data({"experiment": experiment, "run_name": run_name or ""}, "names")
    flat = flatten_params(params or {})
    check_no_patient_data(flat, "params")
    tag_values = {str(k): str(_plain(v)) for k, v in (tags or {}).items()}
    check_no_patient_data(tag_values, "tags")
    with _mlflow_errors():
        mlflow = _mlflow()
        experiment_id = _experiment_id(mlflow, experiment)
        with mlflow.start_run(
            experiment_id=experiment_id, run_name=run_name, tags=tag_values
        ) as run:
            if flat:
                mlflow.log_params({k: str(v) for k, v in flat.items()})
            yield run


@contextmanager
def resume_run(run_id: str) -> Iterator[Any]:
    """Reopen an existing run to log more metrics and artifacts (e.g. a later evaluation).

    Args:
        run_id: The run to continue.

    Yields:
        The ``mlflow.ActiveRun``. The run's status is set to FINISHED again at the end (or
        FAILED if the block raises).
    """
    with _mlflow_errors(), _mlflow().start_run(run_id=run_id) as run:
        yield run


@_translates_mlflow_errors
def run_metrics(run_id: str) -> dict[str, float]:
    """The latest value of every metric of a run (e.g. to compare two runs in a plot).

    Args:
        run_id: The run to read.

    Returns:
        Metric name -> latest logged value.
    """
    mlflow = _mlflow()
    return dict(mlflow.MlflowClient().get_run(run_id).data.metrics)


@_translates_mlflow_errors
def run_params(run_id: str) -> dict[str, str]:
    """The params of a run as logged (dotted keys, string values).

    Args:
        run_id: The run to read.

    Returns:
        Param name -> value.
    """
    mlflow = _mlflow()
    return dict(mlflow.MlflowClient().get_run(run_id).data.params)


@_translates_mlflow_errors
def log_params(params: Mapping[str, Any] | Any) -> None:
    """Log more params (nested config flattened to dotted keys) to the active run."""
    flat = flatten_params(params)
    check_no_patient_data(flat, "params")
    _require_active_run().log_params({k: str(v) for k, v in flat.items()})


@_translates_mlflow_errors
def log_metrics(metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
    """Log scalar metrics to the active run.

    Args:
        metrics: name -> real number (python or numpy scalar, 0-d tensor). NaN is allowed
            (e.g. an AUROC undefined on a single-class split).
        step: optional step (e.g. epoch or optimizer step).
        prefix: prepended to each name, e.g. 'test/' or 'val/'.
    """
    named = {f"{prefix}{k}": v for k, v in metrics.items()}
    check_no_patient_data(named, "metrics")
    values = {}
    for key, value in named.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"metric {key!r} must be a real number, got {type(value).__name__}")
        values[key] = float(value)
    _require_active_run().log_metrics(values, step=step)


@_translates_mlflow_errors
def log_figure(fig: Any, artifact_file: str) -> None:
    """Log a matplotlib figure as an artifact (e.g. 'plots/reliability.png'), owner-only."""
    mlflow = _require_active_run()
    with _owner_only_files():
        mlflow.log_figure(fig, artifact_file)


@_translates_mlflow_errors
def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """Copy a local file or directory into the active run's artifacts.

    Per-patient reports should stay in their private folder; log only cohort-level files.
    New folders are owner-only; a copied file keeps its own mode (MLflow copies it), so
    pass owner-only files.
    """
    mlflow = _require_active_run()
    path = Path(path)
    with _owner_only_files():
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path)
        else:
            mlflow.log_artifact(str(path), artifact_path)


@_translates_mlflow_errors
def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    """Log a JSON-serialisable mapping (e.g. the temperature scaler) as a JSON artifact."""
    mlflow = _require_active_run()
    with _owner_only_files():
        mlflow.log_text(json.dumps(data, indent=2, sort_keys=True), artifact_file)


@_translates_mlflow_errors
def has_artifact(run_id: str, artifact_file: str) -> bool:
    """Whether a run holds an artifact file (e.g. one that older runs did not log).

    Args:
        run_id: the run to look in.
        artifact_file: the file's path within the run's artifacts.

    Returns:
        True if the file is listed among the run's artifacts.
    """
    parent = artifact_file.rpartition("/")[0] or None
    listed = _mlflow().MlflowClient().list_artifacts(run_id, parent)
    return any(entry.path == artifact_file and not entry.is_dir for entry in listed)


@_translates_mlflow_errors
def load_dict(run_id: str, artifact_file: str) -> dict[str, Any]:
    """Read back a JSON artifact written by :func:`log_dict` (e.g. the temperature).

    Args:
        run_id: the run that logged it.
        artifact_file: its path within the run's artifacts.

    Returns:
        The parsed mapping.
    """
    _mlflow()  # sets the tracking URI
    import mlflow.artifacts

    return mlflow.artifacts.load_dict(f"runs:/{run_id}/{artifact_file}")
