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
* Models are logged as weights plus config, never as a pickled object: the state dict
  (``torch.save`` of tensors only, read back with ``torch.load(weights_only=True)``) and the
  :class:`rank1.models.ModelSpec` as JSON, rebuilt through :func:`rank1.models.build`. They
  are MLflow logged models all the same (pyfunc "models from code", see
  :mod:`pipeline.mlflow_model`), so they show under the run's Models and can be registered.
  Runs whose model was logged in the old pickle format are refused, not loaded.
* A local sqlite store is created once per process under a lock file beside the database
  (two first runs at once would otherwise both create its tables and one would fail), as
  owner-only files: ``mlflow.db`` 0600 and ``mlartifacts/`` 0700 when this module creates
  them; artifacts it logs are written 0600 in 0700 folders (they include weights trained on
  patient data). A database or folder the user made is never re-permissioned.
* MLflow's own errors (an unknown run, an unreachable server, a missing artifact) leave the
  public functions here as one :class:`TrackingError` with a one-line message, so callers
  catch one documented type instead of MLflow's.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import logging
import os
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import Enum
from importlib import metadata
from pathlib import Path, PurePath
from typing import Any, ParamSpec, TypeVar
from urllib.parse import unquote, urlparse

from features.io import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE

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

# Stores this process has created or checked (see _mlflow), and the umask scope's state.
_STORE_LOCK = threading.Lock()
_READY_STORES: set[str] = set()
_UMASK_LOCK = threading.Lock()
_umask_users = 0
_saved_umask = 0


# --------------------------------------------------------------------------- errors

_P = ParamSpec("_P")
_R = TypeVar("_R")


class TrackingError(RuntimeError):
    """MLflow refused a request: unknown run, unreachable server, missing artifact.

    The message is one line: MLflow's first line and the store it came from.
    """


# ``scheme://user:password@host``: MLflow quotes such URIs in its messages.
_URL_CREDENTIALS_RE = re.compile(r"(?<=://)[^/@\s]+@")


def _without_credentials(text: str) -> str:
    """``text`` with the ``user:password@`` part of every URL in it removed."""
    return _URL_CREDENTIALS_RE.sub("", text)


@contextmanager
def _mlflow_errors() -> Iterator[None]:
    """Re-raise an ``MlflowException`` from the block as a one-line :class:`TrackingError`."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        message = f"{first} (MLflow store {tracking_uri()})"
        raise TrackingError(_without_credentials(message)) from err


def _translates_mlflow_errors(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorate a public function so that MLflow's errors leave it as :class:`TrackingError`."""

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _mlflow_errors():
            return function(*args, **kwargs)

    return wrapper


# --------------------------------------------------------------------------- store


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<absolute cwd>/mlflow.db``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    # An absolute path keeps the store fixed even if the process later changes directory.
    return f"sqlite:///{Path.cwd().resolve() / DEFAULT_DB_NAME}"


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URI, else None (server, in-memory...)."""
    parsed = urlparse(uri)
    if parsed.scheme != "sqlite" or not parsed.path or parsed.path == "/:memory:":
        return None
    return Path(unquote(parsed.path))


def default_artifact_location(uri: str | None = None) -> str | None:
    """Artifact folder for new experiments: ``mlartifacts/`` beside a sqlite database.

    Args:
        uri: tracking URI; defaults to :func:`tracking_uri`.

    Returns:
        A ``file://`` URI for a sqlite store with a file path, else None (let the server
        or MLflow decide).
    """
    db_path = _sqlite_path(tracking_uri() if uri is None else uri)
    if db_path is None:
        return None
    return (db_path.parent.resolve() / ARTIFACT_DIR_NAME).as_uri()


def _require_active_run():
    import mlflow

    if mlflow.active_run() is None:  # asked before the store is touched
        # MLflow's fluent API would silently start a new run instead.
        raise RuntimeError("no active MLflow run: call inside `with tracking.start_run(...)`")
    return _mlflow()


def _mlflow():
    """The ``mlflow`` module pointed at :func:`tracking_uri`, its local store created.

    Every MLflow call of this module goes through here, so a local sqlite store is always
    created by ``_create_store`` (once, under a lock, owner-only) and never by MLflow itself
    as a side effect of a first read.
    """
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    db_path = _sqlite_path(uri)
    if db_path is None:
        return mlflow
    with _STORE_LOCK:
        if uri not in _READY_STORES:
            _create_store(mlflow, uri, db_path)
            _READY_STORES.add(uri)
    return mlflow


def _create_store(mlflow, uri: str, db_path: Path) -> None:
    """Create a sqlite store's tables once, under an exclusive lock on ``<db>.lock``.

    MLflow creates the tables on first use; two processes doing that at once both run the
    schema migrations and one fails (``duplicate column name: step``). The lock makes the
    second wait and then find the tables made. The lock file stays: removing it would let a
    third process lock a new file while the second still holds the old one.
    """
    lock_path = db_path.with_name(db_path.name + ".lock")
    lock_fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        _create_private(db_path)
        with _owner_only_files():
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
    finally:
        os.close(lock_fd)  # releases the lock


def _create_private(db_path: Path) -> None:
    """Create the database file (0600) and the artifact folder (0700) if they are missing.

    Only what this function creates gets these modes: an existing database or folder (the
    user's own) is left exactly as it is. An empty file is a valid empty sqlite database.
    """
    artifacts = db_path.parent / ARTIFACT_DIR_NAME
    try:
        artifacts.mkdir(mode=PRIVATE_DIR_MODE)
        os.chmod(artifacts, PRIVATE_DIR_MODE)  # mkdir's mode passes through the umask
    except FileExistsError:
        pass
    try:
        os.close(os.open(db_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE))
    except FileExistsError:
        pass


@contextmanager
def _owner_only_files() -> Iterator[None]:
    """Files and folders created inside are owner-only (umask 077): MLflow's artifact writes.

    The umask is process-wide, so while any thread is inside, every file the process
    creates is owner-only. That is only ever stricter than asked, never looser, and a
    counter under a lock restores the previous umask when the last thread leaves (nested
    and concurrent uses cannot leave the process with the wrong one).
    """
    global _umask_users, _saved_umask
    with _UMASK_LOCK:
        if _umask_users == 0:
            _saved_umask = os.umask(0o077)
            os.umask(_saved_umask | 0o077)
        _umask_users += 1
    try:
        yield
    finally:
        with _UMASK_LOCK:
            _umask_users -= 1
            if _umask_users == 0:
                os.umask(_saved_umask)


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


#: Marks our model config file, so a foreign JSON file is refused rather than guessed at.
MODEL_FORMAT = "rank1-bnn-model"
MODEL_FORMAT_VERSION = 1
WEIGHTS_FILE = "weights.pt"
SPEC_FILE = "model.json"
# Keys of the two files among the pyfunc model's artifacts (recorded in its MLmodel file).
WEIGHTS_ARTIFACT = "weights"
SPEC_ARTIFACT = "spec"
#: The models-from-code file MLflow records as the model's pyfunc implementation.
PYFUNC_CODE = Path(__file__).with_name("mlflow_model.py")
_SPEC_KEYS = {"format", "format_version", "model"}
_MODEL_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_QUOTE_CHARS = 60


class ModelArtifactError(ValueError):
    """A logged model's files are missing, foreign or tampered with (one line, names them)."""


def _short(value: Any) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 3] + "..."


@dataclasses.dataclass(frozen=True)
class StoredModel:
    """A model as stored: its spec and weights, read without unpickling any object.

    Attributes:
        spec: What to build, a :class:`rank1.models.ModelSpec`.
        state_dict: The weights, parameter or buffer name -> CPU tensor.
        source: Where the weights were read from, for error messages.
    """

    spec: Any
    state_dict: dict[str, Any]
    source: str

    def build(self, map_location: Any = None) -> Any:
        """A new module of :attr:`spec` holding these weights, in eval mode.

        The global torch RNG is left as it was (building initialises weights randomly
        before they are overwritten), so loading a model does not shift seeded draws.

        Args:
            map_location: Optional device to move the module to (e.g. 'cpu', 'cuda').

        Returns:
            The ``nn.Module``.

        Raises:
            ModelArtifactError: If the weights do not fit the spec's architecture.
        """
        import torch

        with torch.random.fork_rng(devices=[]):
            model = self.spec.build()
        expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
        stored = {key: tuple(value.shape) for key, value in self.state_dict.items()}
        missing = sorted(expected.keys() - stored.keys())
        unexpected = sorted(stored.keys() - expected.keys())
        reshaped = sorted(k for k in expected.keys() & stored.keys() if expected[k] != stored[k])
        if missing or unexpected or reshaped:
            raise ModelArtifactError(
                f"{self.source}: the weights do not fit the {self.spec.kind} model of its "
                f"config: {len(missing)} missing, {len(unexpected)} unexpected and "
                f"{len(reshaped)} misshaped tensors (first: "
                f"{_short((missing + unexpected + reshaped)[0])})"
            )
        model.load_state_dict(self.state_dict, strict=True)
        if map_location is not None:
            model.to(map_location)
        return model.eval()


def write_model_files(model: Any, folder: str | os.PathLike) -> tuple[Path, Path]:
    """Write a model as ``weights.pt`` (its state dict) and ``model.json`` (its spec).

    Both are owner-only (they hold weights trained on patient data) and written atomically.

    Args:
        model: A :mod:`rank1.models` model or ``DeepEnsemble`` of them.
        folder: An existing folder.

    Returns:
        The weights file and the config file.

    Raises:
        TypeError: If the model is not one :func:`rank1.models.model_spec` describes.
    """
    import io

    import torch

    from features.io import write_private_bytes, write_private_text
    from rank1.models import model_spec

    spec = model_spec(model)
    document = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "model": spec.to_dict(),
    }
    buffer = io.BytesIO()
    # A state dict holds tensors only: torch.load(weights_only=True) reads it back without
    # unpickling any object (safetensors is not installed here; this needs nothing more).
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    torch.save(state, buffer)
    weights = write_private_bytes(Path(folder) / WEIGHTS_FILE, buffer.getvalue())
    config = write_private_text(Path(folder) / SPEC_FILE, json.dumps(document, indent=2) + "\n")
    return weights, config


def read_model_files(
    weights_path: str | os.PathLike,
    spec_path: str | os.PathLike,
    *,
    weights_name: str | None = None,
    spec_name: str | None = None,
) -> StoredModel:
    """Read the two files of :func:`write_model_files`; nothing in them is executed.

    Args:
        weights_path: The ``weights.pt`` file.
        spec_path: The ``model.json`` file.
        weights_name: How to name the weights file in errors (default: its path).
        spec_name: How to name the config file in errors (default: its path).

    Returns:
        The :class:`StoredModel` (call ``.build()`` for the module).

    Raises:
        ModelArtifactError: One line naming the file that is missing, not ours, or holds
            anything but tensors (e.g. a pickle that would run code: it is refused unrun).
    """
    from rank1.models import ModelSpec, ModelSpecError

    weights_name = weights_name or str(weights_path)
    spec_name = spec_name or str(spec_path)
    try:
        document = json.loads(Path(spec_path).read_text("utf-8"))
    except OSError as err:
        raise ModelArtifactError(f"{spec_name}: cannot read the model config ({err})") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelArtifactError(f"{spec_name}: not a JSON model config ({err})") from err
    if not isinstance(document, dict) or document.get("format") != MODEL_FORMAT:
        raise ModelArtifactError(f"{spec_name}: not a {MODEL_FORMAT} model config")
    if document.get("format_version") != MODEL_FORMAT_VERSION or set(document) != _SPEC_KEYS:
        raise ModelArtifactError(
            f"{spec_name}: expected format_version {MODEL_FORMAT_VERSION} with keys format, "
            f"format_version and model, got version {_short(document.get('format_version'))}"
        )
    try:
        spec = ModelSpec.from_dict(document["model"])
    except ModelSpecError as err:
        raise ModelArtifactError(f"{spec_name}: {err}") from err
    return StoredModel(spec, _load_weights(weights_path, weights_name), weights_name)


def _load_weights(path: str | os.PathLike, name: str) -> dict[str, Any]:
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as err:
        raise ModelArtifactError(f"{name}: the weights file is missing") from err
    except pickle.UnpicklingError as err:
        # weights_only refuses every global outside torch's tensor allow-list before
        # calling it: a __reduce__ payload is rejected here, never run.
        raise ModelArtifactError(
            f"{name}: refusing to load it: it holds Python objects other than tensors "
            "(not a weights file written by this project)"
        ) from err
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise ModelArtifactError(f"{name}: not a readable weights file ({_short(err)})") from err
    if not isinstance(state, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
    ):
        raise ModelArtifactError(f"{name}: expected a mapping of names to tensors")
    return state


@_translates_mlflow_errors
def log_model(
    model: Any,
    name: str = "model",
    code_paths: list[str] | None = None,
    extra_requirements: list[str] | None = None,
) -> str:
    """Log a model to the active run as an MLflow logged model of weights plus config.

    Nothing is pickled: MLflow records the weights and config files as the pyfunc model's
    artifacts and :mod:`pipeline.mlflow_model` (models from code) as its implementation.

    Args:
        model: A :mod:`rank1.models` model or ``DeepEnsemble`` of them (any device).
        name: model name within the run; reload with ``load_model(run_id, name)``.
        code_paths: local source files/folders to bundle (for serving where the project is
            not installed).
        extra_requirements: pip requirements beyond torch and the project.

    Returns:
        The model URI reported by MLflow.

    Raises:
        TypeError: If the model is not one of the library's models.
    """
    import tempfile

    _require_active_run()
    if not _MODEL_NAME_RE.fullmatch(name):
        raise ValueError(f"model name must be letters, digits, '_', '.' or '-', got {name!r}")
    import mlflow.pyfunc

    from features.io import write_private_bytes

    with tempfile.TemporaryDirectory(prefix="rank1-model-") as folder, _owner_only_files():
        weights, spec = write_model_files(model, folder)
        # MLflow copies the code file keeping its mode: an owner-only copy keeps the whole
        # logged model 0600.
        code = write_private_bytes(Path(folder) / PYFUNC_CODE.name, PYFUNC_CODE.read_bytes())
        # No signature on purpose: the input is a tensor whose shape depends on the model.
        # MLflow would log "Failed to infer model signature" at every training otherwise.
        pyfunc_logger = logging.getLogger("mlflow.pyfunc")
        level = pyfunc_logger.level
        pyfunc_logger.setLevel(logging.ERROR)
        try:
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=str(code),
                artifacts={WEIGHTS_ARTIFACT: str(weights), SPEC_ARTIFACT: str(spec)},
                code_paths=code_paths,
                pip_requirements=pip_requirements(extra_requirements),
            )
        finally:
            pyfunc_logger.setLevel(level)
    return info.model_uri


def _logged_model(mlflow, run_id: str, name: str):
    """The newest logged model called ``name`` of a run."""
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    models = client.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"name = '{name}'"
    )
    # Compared here, as MLflow itself does: not every backend filters on source_run_id.
    ours = [m for m in models if m.source_run_id == run_id]
    if not ours:
        raise ModelArtifactError(f"run {run_id} has no logged model named {name!r}")
    return max(ours, key=lambda m: m.creation_timestamp)


def _display(uri: str) -> str:
    """A local file URI as a plain path, other URIs as they are."""
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


@_translates_mlflow_errors
def load_stored_model(run_id: str, name: str = "model") -> StoredModel:
    """Download a logged model's weights and config and read them; nothing is unpickled.

    Only the two files are read, straight from the model's artifact location: MLflow's
    model loaders (which run the model's code file) are never called.

    Args:
        run_id: the run that logged the model.
        name: the model name given to :func:`log_model`.

    Returns:
        The :class:`StoredModel`; ``.build()`` gives the module.

    Raises:
        ModelArtifactError: One line naming the file for a model logged in the old pickle
            format, a foreign model, or missing or tampered files.
    """
    import tempfile

    import yaml

    _mlflow()
    import mlflow
    import mlflow.artifacts

    if not _MODEL_NAME_RE.fullmatch(name):
        raise ValueError(f"model name must be letters, digits, '_', '.' or '-', got {name!r}")
    location = _logged_model(mlflow, run_id, name).artifact_location.rstrip("/")
    with tempfile.TemporaryDirectory(prefix="rank1-model-") as folder:

        def fetch(relative: str) -> Path:
            uri = f"{location}/{relative}"
            try:
                local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=folder)
            except Exception as err:  # MLflow raises its own and OS errors for a missing file
                raise ModelArtifactError(f"{_display(uri)}: missing ({_short(err)})") from err
            return Path(local)

        mlmodel_name = _display(f"{location}/MLmodel")
        try:
            flavors = yaml.safe_load(fetch("MLmodel").read_text("utf-8"))["flavors"]
            artifacts = flavors["python_function"].get("artifacts") or {}
        except (yaml.YAMLError, UnicodeDecodeError, TypeError, KeyError) as err:
            raise ModelArtifactError(f"{mlmodel_name}: not an MLflow model description") from err
        if "pytorch" in flavors:
            raise ModelArtifactError(
                f"{mlmodel_name}: this run's model was logged in the old pickle format; "
                "retrain (a pickled model is never loaded: it could run code)"
            )
        try:
            paths = {key: str(artifacts[key]["path"]) for key in (WEIGHTS_ARTIFACT, SPEC_ARTIFACT)}
        except (KeyError, TypeError) as err:
            raise ModelArtifactError(
                f"{mlmodel_name}: not a {MODEL_FORMAT} model (no weights and config artifacts)"
            ) from err
        for relative in paths.values():
            if relative.startswith("/") or ".." in relative.split("/"):
                raise ModelArtifactError(f"{mlmodel_name}: artifact path outside the model")
        return read_model_files(
            fetch(paths[WEIGHTS_ARTIFACT]),
            fetch(paths[SPEC_ARTIFACT]),
            weights_name=_display(f"{location}/{paths[WEIGHTS_ARTIFACT]}"),
            spec_name=_display(f"{location}/{paths[SPEC_ARTIFACT]}"),
        )


def load_model(run_id: str, name: str = "model", map_location: str | None = None) -> Any:
    """Load a model logged by :func:`log_model` back as its ``rank1.models`` class.

    The weights are read with ``torch.load(weights_only=True)`` and the module is rebuilt
    from its JSON config through :func:`rank1.models.build`: a tampered or foreign
    artifact fails with one line naming the file and runs nothing.

    Args:
        run_id: the run that logged the model.
        name: the model name given to :func:`log_model`.
        map_location: optional torch device to load onto (e.g. 'cpu').

    Returns:
        The ``nn.Module``, in eval mode.

    Raises:
        ModelArtifactError: See :func:`load_stored_model`.
    """
    return load_stored_model(run_id, name).build(map_location)


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


@_translates_mlflow_errors
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
