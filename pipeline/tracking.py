"""All MLflow calls of the project, in one place.

* Store: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<cwd>/mlflow.db`` (MLflow 3 has
  no file store by default). For a sqlite store, new experiments keep their artifacts in
  ``mlartifacts/`` beside the database file, so one folder holds a whole local store.
* mlflow is imported lazily inside each function: importing this module stays cheap, and
  callers that also use Prefect can import prefect first (Prefect's logging loses its
  formatting when ``mlflow.pytorch`` is imported before it).
* Patient data never goes into MLflow params, metrics or tags: every key and value passes
  :func:`check_no_patient_data`, which refuses identifier-like keys (subject_id, hadm_id,
  icustay_id, stay_id, patient...), string values that mention an identifier column, and
  long sequences or arrays (which look like per-patient data rather than configuration).
  Experiment and run names are checked the same way. Per-patient outputs belong in the
  owner-only report files (:mod:`pipeline.report`), not in the tracking store.
* Models are logged in MLflow's pickle format with explicit pip requirements, so they load
  back as the original ``nn.Module`` class (MLflow 3's default pt2 format needs an input
  example and loads back as a GraphModule; inferring requirements is slow and noisy).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from importlib import metadata
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import unquote, urlparse

PROJECT_DISTRIBUTION = "rank1-bnn"
DEFAULT_DB_NAME = "mlflow.db"
ARTIFACT_DIR_NAME = "mlartifacts"

# Matched case-insensitively anywhere in a key. String values are checked for the
# identifier column names only: free text such as "predicts patient mortality" is fine.
PATIENT_ID_MARKERS = ("subject_id", "hadm_id", "icustay_id", "stay_id", "patient")
_ID_VALUE_MARKERS = PATIENT_ID_MARKERS[:-1]
_PATIENT_RE = re.compile("|".join(re.escape(m) for m in PATIENT_ID_MARKERS), re.IGNORECASE)
_ID_VALUE_RE = re.compile("|".join(re.escape(m) for m in _ID_VALUE_MARKERS), re.IGNORECASE)
# Configuration lists are short; a longer sequence is more likely a column of patient data.
MAX_SEQUENCE_LENGTH = 64


# --------------------------------------------------------------------------- store


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<absolute cwd>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    # An absolute path keeps the store fixed even if the process later changes directory.
    return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB_NAME}"


def default_artifact_location(uri: str | None = None) -> str | None:
    """Artifact folder for new experiments: ``mlartifacts/`` beside a sqlite database.

    Args:
        uri: tracking URI; defaults to :func:`tracking_uri`.

    Returns:
        A ``file://`` URI for a sqlite store with a file path, else None (let the server
        or MLflow decide).
    """
    uri = tracking_uri() if uri is None else uri
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or not parsed.path or parsed.path == "/:memory:":
        return None
    db_path = Path(unquote(parsed.path))
    return (db_path.parent.resolve() / ARTIFACT_DIR_NAME).as_uri()


def _mlflow():
    import mlflow

    mlflow.set_tracking_uri(tracking_uri())
    return mlflow


def _require_active_run():
    mlflow = _mlflow()
    run = mlflow.active_run()
    if run is None:
        # MLflow's fluent API would silently start a new run instead.
        raise RuntimeError("no active MLflow run: call inside `with tracking.start_run(...)`")
    return mlflow


# --------------------------------------------------------------------------- guard


def _looks_like_patient_data(value: Any) -> str | None:
    """Reason why a value looks like patient data, or None."""
    if isinstance(value, str):
        return "it mentions a patient identifier" if _ID_VALUE_RE.search(value) else None
    size = getattr(value, "size", None)
    if callable(getattr(value, "numel", None)):
        size = value.numel()
    if hasattr(value, "shape") and isinstance(size, int) and size > 1:
        return f"it is an array of {size} values"
    if isinstance(value, list | tuple | set | frozenset):
        if len(value) > MAX_SEQUENCE_LENGTH:
            return f"it is a sequence of {len(value)} values"
        for item in value:
            reason = _looks_like_patient_data(item)
            if reason:
                return reason
    return None


def check_no_patient_data(mapping: Mapping[str, Any], kind: str = "params") -> None:
    """Refuse keys or values that look like patient identifiers or per-patient data.

    Args:
        mapping: params, metrics or tags about to be sent to MLflow.
        kind: what the mapping is, used in the error message.

    Raises:
        ValueError: naming the offending key.
    """
    for key, value in mapping.items():
        if _PATIENT_RE.search(str(key)):
            raise ValueError(
                f"refusing to log MLflow {kind} key {key!r}: it looks like a patient "
                f"identifier ({', '.join(PATIENT_ID_MARKERS)}); patient data must never go "
                "into MLflow params, metrics or tags"
            )
        reason = _looks_like_patient_data(value)
        if reason:
            raise ValueError(
                f"refusing to log MLflow {kind} {key!r}: {reason}, which looks like patient "
                "data; write per-patient outputs to the private report instead"
            )


# --------------------------------------------------------------------------- params


def _plain(value: Any) -> Any:
    """Make config leaves printable: enums by value, paths as strings."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    return value


def flatten_params(params: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config (mappings and dataclasses) into dotted keys.

    Args:
        params: a mapping or dataclass instance, possibly nested.
        prefix: key prefix for recursion.

    Returns:
        {'model.hidden': 128, 'optim.lr': 3e-4, ...} with leaf values unchanged except
        enums (their value) and paths (strings).
    """
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        params = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping or dataclass, got {type(params).__name__}")
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        is_nested = isinstance(value, Mapping) or (
            dataclasses.is_dataclass(value) and not isinstance(value, type)
        )
        if is_nested:
            flat.update(flatten_params(value, name))
        else:
            flat[name] = _plain(value)
    return flat


# --------------------------------------------------------------------------- runs


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
    mlflow = _mlflow()
    with mlflow.start_run(
        experiment_id=_experiment_id(mlflow, experiment), run_name=run_name, tags=tag_values
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
    mlflow = _mlflow()
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def run_metrics(run_id: str) -> dict[str, float]:
    """The latest value of every metric of a run (e.g. to compare two runs in a plot).

    Args:
        run_id: The run to read.

    Returns:
        Metric name -> latest logged value.
    """
    mlflow = _mlflow()
    return dict(mlflow.MlflowClient().get_run(run_id).data.metrics)


def log_params(params: Mapping[str, Any] | Any) -> None:
    """Log more params (nested config flattened to dotted keys) to the active run."""
    flat = flatten_params(params)
    check_no_patient_data(flat, "params")
    _require_active_run().log_params({k: str(v) for k, v in flat.items()})


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


def log_figure(fig: Any, artifact_file: str) -> None:
    """Log a matplotlib figure as an artifact (e.g. 'plots/reliability.png')."""
    _require_active_run().log_figure(fig, artifact_file)


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    """Copy a local file or directory into the active run's artifacts.

    Per-patient reports should stay in their private folder; log only cohort-level files.
    """
    mlflow = _require_active_run()
    path = Path(path)
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path)
    else:
        mlflow.log_artifact(str(path), artifact_path)


def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    """Log a JSON-serialisable mapping (e.g. the temperature scaler) as a JSON artifact."""
    _require_active_run().log_text(json.dumps(data, indent=2, sort_keys=True), artifact_file)


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


# --------------------------------------------------------------------------- models


def pip_requirements(extra: list[str] | None = None) -> list[str]:
    """Explicit requirements recorded with a model: torch, the project, and ``extra``.

    Pinned to the versions running now. The torch local tag (e.g. '+cpu') is dropped so a
    GPU machine can install its own build of the same release.
    """
    import torch

    requirements = [f"torch=={torch.__version__.split('+')[0]}"]
    try:
        requirements.append(f"{PROJECT_DISTRIBUTION}=={metadata.version(PROJECT_DISTRIBUTION)}")
    except metadata.PackageNotFoundError:
        # Running from a source tree without installing; code_paths can carry the code.
        pass
    return requirements + list(extra or [])


def log_model(
    model: Any,
    name: str = "model",
    code_paths: list[str] | None = None,
    extra_requirements: list[str] | None = None,
) -> str:
    """Log a torch ``nn.Module`` to the active run so it reloads as the same class.

    Args:
        model: the module (moved to CPU by the caller if it should load without a GPU).
        name: model name within the run; reload with ``load_model(run_id, name)``.
        code_paths: local source files/folders to bundle (for loading where the project
            is not installed).
        extra_requirements: pip requirements beyond torch and the project.

    Returns:
        The model URI reported by MLflow.
    """
    _require_active_run()
    import mlflow.pytorch

    info = mlflow.pytorch.log_model(
        model,
        name=name,
        code_paths=code_paths,
        pip_requirements=pip_requirements(extra_requirements),
        serialization_format="pickle",
    )
    return info.model_uri


def load_model(run_id: str, name: str = "model", map_location: str | None = None) -> Any:
    """Load a model logged by :func:`log_model` back as its original ``nn.Module`` class.

    Pickle-format models can run code while loading; MLflow 3 therefore refuses them unless
    ``MLFLOW_ALLOW_PICKLE_DESERIALIZATION`` is true. This function enables that for the one
    call, which is only appropriate for a tracking store you control: do not point it at
    runs from untrusted sources.

    Args:
        run_id: the run that logged the model.
        name: the model name given to :func:`log_model`.
        map_location: optional torch device to load onto (e.g. 'cpu').

    Returns:
        The ``nn.Module``.
    """
    _mlflow()
    import mlflow.pytorch

    key = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"
    previous = os.environ.get(key)
    os.environ[key] = "true"
    try:
        kwargs = {} if map_location is None else {"map_location": map_location}
        return mlflow.pytorch.load_model(f"runs:/{run_id}/{name}", **kwargs)
    finally:
        if previous is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = previous


# --------------------------------------------------------------------------- run status

#: Tags that tie a run to its resumable training and to the process that runs it, so a
#: later process can tell a run left RUNNING by a dead process from one still training.
RESUME_KEY_TAG = "rank1.resume_key"
HOST_TAG = "rank1.host"
PID_TAG = "rank1.pid"
PROCESS_START_TAG = "rank1.process_start"


@dataclasses.dataclass(frozen=True)
class ProcessId:
    """One process, told apart from a later process that reuses its pid.

    Attributes:
        host: The machine's hostname.
        pid: The process id.
        start: The process's start time in clock ticks since boot (``/proc/<pid>/stat``),
            or ``""`` where there is no ``/proc``.
    """

    host: str
    pid: int
    start: str


def _process_start(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return stat.rsplit(")", 1)[1].split()[19]


def this_process() -> ProcessId:
    """The :class:`ProcessId` of the calling process."""
    import socket

    return ProcessId(socket.gethostname(), os.getpid(), _process_start(os.getpid()))


def process_alive(process: ProcessId) -> bool | None:
    """Whether ``process`` still runs: None when it ran on another host (cannot tell).

    A pid reused by a newer process counts as dead when start times are available.
    """
    if process.host != this_process().host:
        return None
    try:
        os.kill(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    return not process.start or _process_start(process.pid) in ("", process.start)


def process_tags(resume_key: str) -> dict[str, str]:
    """Tags for a new run: its resume key and the identity of this process."""
    me = this_process()
    return {
        RESUME_KEY_TAG: resume_key,
        HOST_TAG: me.host,
        PID_TAG: str(me.pid),
        PROCESS_START_TAG: me.start,
    }


def fail_stale_runs(experiment: str, resume_key: str) -> list[str]:
    """Mark FAILED the runs with this resume key left RUNNING by a process that is gone.

    A process killed with SIGKILL (or a lost machine) cannot end its run, which then stays
    RUNNING forever. Runs of a process on another host are left alone: whether it is alive
    cannot be told from here.

    Args:
        experiment: The experiment to search.
        resume_key: The :data:`RESUME_KEY_TAG` value of the training being resumed.

    Returns:
        The ids of the runs set to FAILED.
    """
    if not re.fullmatch(r"[0-9a-f]+", resume_key):
        raise ValueError(f"resume key must be lowercase hex, got {resume_key[:20]!r}")
    client = _mlflow().MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{RESUME_KEY_TAG}` = '{resume_key}' and attributes.status = 'RUNNING'",
    )
    failed = []
    for run in runs:
        tags = run.data.tags
        try:
            owner = ProcessId(tags[HOST_TAG], int(tags[PID_TAG]), tags.get(PROCESS_START_TAG, ""))
        except (KeyError, ValueError):
            continue  # not started by train_ehr with a resume key: not ours to judge
        if process_alive(owner) is False:
            client.set_terminated(run.info.run_id, "FAILED")
            failed.append(run.info.run_id)
    return failed


@contextmanager
def killed_on_interrupt() -> Iterator[None]:
    """End the active run as KILLED when the block is interrupted, not FAILED.

    MLflow ends a run FAILED on any exception. Ctrl-C (KeyboardInterrupt), SIGTERM (which
    the CLI and Prefect turn into an exception that is not an ``Exception``) and
    ``SystemExit`` stop a healthy run from outside: those end it KILLED. Use inside
    ``with start_run(...)``.
    """
    try:
        yield
    except (Exception, GeneratorExit):
        raise
    except BaseException:
        mlflow = _mlflow()
        if mlflow.active_run() is not None:
            mlflow.end_run("KILLED")
        raise
