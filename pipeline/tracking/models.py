"""Models as weights plus JSON config, logged as MLflow models and loaded without unpickling."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import unquote, urlparse

from pipeline.tracking.errors import _translates_mlflow_errors
from pipeline.tracking.store import _mlflow, _owner_only_files, _require_active_run

if TYPE_CHECKING:
    from pipeline.tracking.registry import ModelVersionRef

#: Where a logged model is read from: the run that logged it (with the model's name), or a
#: registered version of it (:class:`~pipeline.tracking.registry.ModelVersionRef`).
ModelSource = Union[str, "ModelVersionRef"]

PROJECT_DISTRIBUTION = "rank1-bnn"


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
PYFUNC_CODE = Path(__file__).parents[1] / "mlflow_model.py"
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


#: Names of the extra JSON documents of :func:`log_model`: each becomes ``<name>.json``.
_DOCUMENT_NAME_RE = re.compile(r"[a-z][a-z0-9_]*")


def _document_file(document: str) -> str:
    """The file of an extra document, refusing names that would shadow the model's own files."""
    if not _DOCUMENT_NAME_RE.fullmatch(document):
        raise ValueError(
            f"model document name must be lowercase letters, digits and '_', got {document!r}"
        )
    file = f"{document}.json"
    if document in (WEIGHTS_ARTIFACT, SPEC_ARTIFACT) or file in (WEIGHTS_FILE, SPEC_FILE):
        raise ValueError(f"model document name {document!r} is taken by the model's own files")
    return file


def write_model_documents(
    documents: Mapping[str, Mapping[str, Any]], folder: str | os.PathLike
) -> dict[str, Path]:
    """Write each document as ``<name>.json``, owner-only and atomically, like the weights.

    Args:
        documents: Document name (lowercase, e.g. ``scoring_bundle``) -> JSON mapping.
        folder: An existing folder.

    Returns:
        Document name -> the file written.

    Raises:
        ValueError: A bad name, or a value JSON cannot hold (NaN, an object).
    """
    from features.io import write_private_text

    files = {}
    for document, content in documents.items():
        file = _document_file(document)
        try:
            text = json.dumps(dict(content), indent=2, sort_keys=True, allow_nan=False)
        except (TypeError, ValueError) as err:
            raise ValueError(f"model document {document!r} is not plain JSON ({err})") from None
        files[document] = write_private_text(Path(folder) / file, text + "\n")
    return files


@_translates_mlflow_errors
def log_model(
    model: Any,
    name: str = "model",
    code_paths: list[str] | None = None,
    extra_requirements: list[str] | None = None,
    documents: Mapping[str, Mapping[str, Any]] | None = None,
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
        documents: Further JSON documents that travel with the model (and so with every
            registered version of it), e.g. what scoring needs besides the weights: name ->
            mapping, stored as ``<name>.json`` beside the weights and read back with
            :func:`load_model_document`. Cohort-level content only: they are not checked
            for patient data the way params are (a normaliser holds one number per channel).

    Returns:
        The model URI reported by MLflow.

    Raises:
        TypeError: If the model is not one of the library's models.
        ValueError: A bad model or document name, or a document that is not plain JSON.
    """
    import tempfile

    _require_active_run()
    if not _MODEL_NAME_RE.fullmatch(name):
        raise ValueError(f"model name must be letters, digits, '_', '.' or '-', got {name!r}")
    for document in documents or {}:
        _document_file(document)  # before anything is written
    import mlflow.pyfunc

    from features.io import write_private_bytes

    with tempfile.TemporaryDirectory(prefix="rank1-model-") as folder, _owner_only_files():
        weights, spec = write_model_files(model, folder)
        extra = write_model_documents(documents or {}, folder)
        # MLflow copies the code file keeping its mode: an owner-only copy keeps the whole
        # logged model 0600.
        code = write_private_bytes(Path(folder) / PYFUNC_CODE.name, PYFUNC_CODE.read_bytes())
        artifacts = {WEIGHTS_ARTIFACT: str(weights), SPEC_ARTIFACT: str(spec)}
        artifacts |= {document: str(path) for document, path in extra.items()}
        # No signature on purpose: the input is a tensor whose shape depends on the model.
        # MLflow would log "Failed to infer model signature" at every training otherwise.
        pyfunc_logger = logging.getLogger("mlflow.pyfunc")
        level = pyfunc_logger.level
        pyfunc_logger.setLevel(logging.ERROR)
        try:
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=str(code),
                artifacts=artifacts,
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


@_translates_mlflow_errors
def logged_model_id(run_id: str, name: str = "model") -> str:
    """MLflow's id of a run's logged model (e.g. ``m-...``), to state in a report.

    Args:
        run_id: the run that logged the model.
        name: the model name given to :func:`log_model`.

    Returns:
        The newest logged model of that name's id.

    Raises:
        ModelArtifactError: If the run has no logged model of that name.
    """
    mlflow = _mlflow()
    return str(_logged_model(mlflow, run_id, name).model_id)


def _display(uri: str) -> str:
    """A local file URI as a plain path, other URIs as they are."""
    parsed = urlparse(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


def _model_location(mlflow, source: ModelSource, name: str) -> str:
    """The artifact location (no trailing '/') of a run's model or of a registered version."""
    if isinstance(source, str):
        if not _MODEL_NAME_RE.fullmatch(name):
            raise ValueError(f"model name must be letters, digits, '_', '.' or '-', got {name!r}")
        return _logged_model(mlflow, source, name).artifact_location.rstrip("/")
    # A registered version names one logged model by its id: the run's name is not needed.
    return mlflow.MlflowClient().get_logged_model(source.model_id).artifact_location.rstrip("/")


@dataclasses.dataclass(frozen=True)
class _ModelFolder:
    """A logged model's files as its MLmodel lists them, each downloaded only when asked."""

    location: str
    folder: str
    artifacts: dict[str, str]  # pyfunc artifact key -> path relative to the model
    mlmodel: str  # the MLmodel file, for errors

    def display(self, relative: str) -> str:
        """The file as a path (or URI) to name in an error."""
        return _display(f"{self.location}/{relative}")

    def fetch(self, relative: str) -> Path:
        """Download one file of the model; a missing one is a :class:`ModelArtifactError`."""
        import mlflow.artifacts

        uri = f"{self.location}/{relative}"
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=self.folder)
        except Exception as err:  # MLflow raises its own and OS errors for a missing file
            raise ModelArtifactError(f"{_display(uri)}: missing ({_short(err)})") from err
        return Path(local)

    def artifact(self, key: str, what: str) -> tuple[Path, str]:
        """Download the pyfunc artifact ``key``: its local file and the name to show for it."""
        relative = self.artifacts.get(key)
        if relative is None:
            raise ModelArtifactError(f"{self.mlmodel}: the model has no {what}")
        return self.fetch(relative), self.display(relative)


@contextmanager
def _model_folder(source: ModelSource, name: str) -> Iterator[_ModelFolder]:
    """Read a logged model's MLmodel (and refuse the old pickle format) into a temporary folder.

    Only files are read, straight from the model's artifact location: MLflow's model loaders
    (which run the model's code file) are never called.
    """
    import tempfile

    import yaml

    mlflow = _mlflow()
    location = _model_location(mlflow, source, name)
    with tempfile.TemporaryDirectory(prefix="rank1-model-") as folder:
        mlmodel = _display(f"{location}/MLmodel")
        files = _ModelFolder(location, folder, {}, mlmodel)
        try:
            flavors = yaml.safe_load(files.fetch("MLmodel").read_text("utf-8"))["flavors"]
            listed = flavors["python_function"].get("artifacts") or {}
            paths = {str(key): str(entry["path"]) for key, entry in listed.items()}
        except (yaml.YAMLError, UnicodeDecodeError, TypeError, KeyError, AttributeError) as err:
            raise ModelArtifactError(f"{mlmodel}: not an MLflow model description") from err
        if "pytorch" in flavors:
            raise ModelArtifactError(
                f"{mlmodel}: this run's model was logged in the old pickle format; "
                "retrain (a pickled model is never loaded: it could run code)"
            )
        for relative in paths.values():
            if relative.startswith("/") or ".." in relative.split("/"):
                raise ModelArtifactError(f"{mlmodel}: artifact path outside the model")
        yield dataclasses.replace(files, artifacts=paths)


@_translates_mlflow_errors
def load_stored_model(source: ModelSource, name: str = "model") -> StoredModel:
    """Download a logged model's weights and config and read them; nothing is unpickled.

    Only the two files are read, straight from the model's artifact location: MLflow's
    model loaders (which run the model's code file) are never called.

    Args:
        source: The run that logged the model, or a registered version of it
            (:func:`pipeline.tracking.resolve`).
        name: the model name given to :func:`log_model` (for a run; a registered version
            names its model itself).

    Returns:
        The :class:`StoredModel`; ``.build()`` gives the module.

    Raises:
        ModelArtifactError: One line naming the file for a model logged in the old pickle
            format, a foreign model, or missing or tampered files.
    """
    with _model_folder(source, name) as files:
        if not {WEIGHTS_ARTIFACT, SPEC_ARTIFACT} <= files.artifacts.keys():
            raise ModelArtifactError(
                f"{files.mlmodel}: not a {MODEL_FORMAT} model (no weights and config artifacts)"
            )
        weights, weights_name = files.artifact(WEIGHTS_ARTIFACT, "weights")
        spec, spec_name = files.artifact(SPEC_ARTIFACT, "config")
        return read_model_files(weights, spec, weights_name=weights_name, spec_name=spec_name)


@dataclasses.dataclass(frozen=True)
class StoredDocument:
    """One JSON document logged with a model (``log_model(documents=...)``), as read.

    Attributes:
        content: The parsed JSON object.
        source: The file it was read from, to name in errors about its content.
    """

    content: dict[str, Any]
    source: str


@_translates_mlflow_errors
def load_model_document(source: ModelSource, document: str, name: str = "model") -> StoredDocument:
    """Read one JSON document logged with a model; nothing else of the model is read or run.

    Args:
        source: The run that logged the model, or a registered version of it.
        document: The document's name as given to :func:`log_model`.
        name: the model name given to :func:`log_model` (for a run).

    Returns:
        The :class:`StoredDocument` (its content and the file it came from).

    Raises:
        ModelArtifactError: One line naming the file: the model has no such document
            (logged before it existed), or the file is not a JSON object.
    """
    _document_file(document)
    with _model_folder(source, name) as files:
        path, shown = files.artifact(document, f"{document!r} document")
        try:
            content = json.loads(path.read_text("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ModelArtifactError(f"{shown}: not a JSON document ({_short(err)})") from err
        if not isinstance(content, dict):
            raise ModelArtifactError(f"{shown}: expected a JSON object")
        return StoredDocument(content, shown)


def load_model(source: ModelSource, name: str = "model", map_location: str | None = None) -> Any:
    """Load a model logged by :func:`log_model` back as its ``rank1.models`` class.

    The weights are read with ``torch.load(weights_only=True)`` and the module is rebuilt
    from its JSON config through :func:`rank1.models.build`: a tampered or foreign
    artifact fails with one line naming the file and runs nothing.

    Args:
        source: The run that logged the model, or a registered version of it.
        name: the model name given to :func:`log_model` (for a run).
        map_location: optional torch device to load onto (e.g. 'cpu').

    Returns:
        The ``nn.Module``, in eval mode.

    Raises:
        ModelArtifactError: See :func:`load_stored_model`.
    """
    return load_stored_model(source, name).build(map_location)
