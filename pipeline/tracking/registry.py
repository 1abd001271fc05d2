"""The MLflow Model Registry: register a run's logged model, move an alias, resolve a URI.

A registered version points at one logged model (``models:/<model_id>``), so everything
logged with that model (weights, config, and the documents of ``log_model(documents=...)``)
is reachable from ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` alone, without the
training run's other artifacts or its feature folder.

Every failure leaves as one line: a :class:`RegistryError` for what the user asked wrongly
(an unknown registered model, version or alias, a malformed URI), saying what exists
instead; MLflow's other errors as :class:`~pipeline.tracking.TrackingError`
(``_translates_mlflow_errors``). MLflow's own multi-line messages never get through.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.tracking.errors import _translates_mlflow_errors
from pipeline.tracking.guard import check_no_patient_data
from pipeline.tracking.models import _logged_model
from pipeline.tracking.store import _mlflow

#: The alias of the version in use; :func:`promote` moves it.
CHAMPION = "champion"
#: What :func:`resolve` accepts, as its errors state it.
ACCEPTED_URIS = "models:/NAME@ALIAS or models:/NAME/VERSION"
# Registered names and aliases: plain words (no quotes, so they can go into a filter
# string; no '/' or '@', so a URI splits one way).
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ALIAS_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
# MLflow reserves these aliases for itself ("latest", "v1", ...).
_RESERVED_ALIAS_RE = re.compile(r"latest|v\d+", re.IGNORECASE)
_URI_RE = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[^/@]+))")
_MODEL_ID_SOURCE_RE = re.compile(r"models:/(?P<model_id>m-[0-9a-f]+)")
# Up to this many registered names are listed in an "unknown registered model" error.
_LISTED_NAMES = 10


class RegistryError(ValueError):
    """An unknown registered model, version or alias, or a malformed URI (one line)."""


@dataclass(frozen=True)
class ModelVersionRef:
    """One version of a registered model.

    Attributes:
        name: The registered model's name, e.g. ``mimic-ihm-rank1``.
        version: Its version number (1, 2, ...).
        run_id: The run that trained and logged the model.
        model_id: MLflow's id of the logged model the version points at (``m-...``).
        aliases: The aliases set on this version (e.g. ``("champion",)``), sorted.
    """

    name: str
    version: int
    run_id: str
    model_id: str
    aliases: tuple[str, ...] = ()

    @property
    def uri(self) -> str:
        """``models:/NAME/VERSION``: this version, whatever aliases move later."""
        return f"models:/{self.name}/{self.version}"

    def describe(self) -> str:
        """``models:/mimic-ihm-rank1/3 (champion)``: the version and its aliases, to print."""
        aliases = f" ({', '.join(self.aliases)})" if self.aliases else ""
        return f"{self.uri}{aliases}"


def check_registered_name(name: str) -> str:
    """Refuse a registered-model name that is not a plain word or names a patient.

    Returns:
        The name.

    Raises:
        RegistryError: One line saying what a name may hold.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise RegistryError(
            f"registered model name must be letters, digits, '_', '.' or '-' (starting with "
            f"a letter or digit), got {name!r}"
        )
    try:
        check_no_patient_data({"registered_model": name}, "names")
    except ValueError as err:
        raise RegistryError(str(err)) from None
    return name


def _check_alias(alias: str) -> str:
    if not isinstance(alias, str) or not _ALIAS_RE.fullmatch(alias):
        raise RegistryError(
            f"alias must be letters, digits, '_' or '-' (starting with a letter), got {alias!r}"
        )
    if _RESERVED_ALIAS_RE.fullmatch(alias):
        raise RegistryError(f"alias {alias!r} is reserved by MLflow ('latest', 'v<N>')")
    return alias


def _ref(version: Any) -> ModelVersionRef:
    """A :class:`ModelVersionRef` of MLflow's ``ModelVersion``."""
    # The sqlite store records the logged model in the version's source, not in model_id.
    model_id = version.model_id
    if not model_id:
        match = _MODEL_ID_SOURCE_RE.fullmatch(str(version.source or ""))
        if match is None:
            raise RegistryError(
                f"models:/{version.name}/{version.version} was not registered from a logged "
                f"model (source {version.source!r}); register it with register_model"
            )
        model_id = match["model_id"]
    return ModelVersionRef(
        name=version.name,
        version=int(version.version),
        run_id=str(version.run_id),
        model_id=model_id,
        aliases=tuple(sorted(version.aliases or ())),
    )


def _registered_model(client: Any, name: str) -> Any:
    """The registered model ``name``; unknown: a :class:`RegistryError` listing the names."""
    from mlflow.exceptions import MlflowException

    check_registered_name(name)
    try:
        return client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    names = sorted(model.name for model in client.search_registered_models(max_results=100))
    if not names:
        known = "none is registered yet"
    elif len(names) <= _LISTED_NAMES:
        known = f"registered: {', '.join(names)}"
    else:
        known = f"{len(names)} are registered"
    raise RegistryError(f"no registered model {name!r} ({known})")


def _latest_version(client: Any, name: str) -> int | None:
    versions = client.search_model_versions(
        f"name = '{name}'", max_results=1, order_by=["version_number DESC"]
    )
    return int(versions[0].version) if versions else None


def _model_version(client: Any, name: str, version: int | str) -> Any:
    """Version ``version`` of ``name``; unknown: a :class:`RegistryError` naming the latest."""
    from mlflow.exceptions import MlflowException

    _registered_model(client, name)
    number = _version_number(version)
    try:
        return client.get_model_version(name, str(number))
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    latest = _latest_version(client, name)
    has = "has no versions" if latest is None else f"latest version is {latest}"
    raise RegistryError(f"registered model {name!r} has no version {number} ({has})")


def _version_number(version: int | str) -> int:
    text = str(version).strip()
    if isinstance(version, bool) or not text.isdigit() or int(text) < 1:
        raise RegistryError(f"a model version is a whole number from 1, got {version!r}")
    return int(text)


def _version_by_alias(client: Any, name: str, alias: str) -> Any:
    """The version ``alias`` points at; unknown: a :class:`RegistryError` listing the aliases."""
    registered = _registered_model(client, name)
    aliases = dict(registered.aliases or {})
    if alias not in aliases:
        known = f"aliases: {', '.join(sorted(aliases))}" if aliases else "it has no aliases"
        raise RegistryError(f"registered model {name!r} has no alias {alias!r} ({known})")
    return client.get_model_version(name, str(aliases[alias]))


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        # Already there (or made by another process between two calls): add a version.
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise


@_translates_mlflow_errors
def register_model(
    run_id: str,
    name: str,
    *,
    model_name: str = "model",
    tags: Mapping[str, Any] | None = None,
) -> ModelVersionRef:
    """Register a run's logged model as a new version of registered model ``name``.

    The registered model is created on its first version. The version points at the run's
    newest logged model called ``model_name`` (``models:/<model_id>``).

    Args:
        run_id: The run that logged the model.
        name: The registered model, e.g. ``mimic-ihm-rank1``.
        model_name: The model's name within the run (``log_model``'s ``name``).
        tags: Version tags (e.g. task, method, feature fingerprint); checked for patient
            identifiers like params are.

    Returns:
        The new version (no aliases yet).

    Raises:
        RegistryError: A bad name.
        ValueError: A tag that looks like patient data.
        ModelArtifactError: The run has no logged model of that name.
    """
    check_registered_name(name)
    values = {str(key): str(value) for key, value in (tags or {}).items()}
    check_no_patient_data(values, "tags")
    mlflow = _mlflow()
    client = mlflow.MlflowClient()
    logged = _logged_model(mlflow, run_id, model_name)
    _ensure_registered_model(client, name)
    version = client.create_model_version(
        name,
        source=f"models:/{logged.model_id}",
        run_id=run_id,
        tags=values,
        model_id=logged.model_id,
    )
    return _ref(version)


@_translates_mlflow_errors
def promote(name: str, version: int | str, alias: str = CHAMPION) -> ModelVersionRef:
    """Point ``alias`` at a version; MLflow moves it from the version that held it at once.

    Args:
        name: The registered model.
        version: The version to promote.
        alias: The alias to set (default ``champion``).

    Returns:
        The version, with its aliases after the move.

    Raises:
        RegistryError: An unknown model or version, or a bad alias.
    """
    _check_alias(alias)
    client = _mlflow().MlflowClient()
    found = _model_version(client, name, version)
    client.set_registered_model_alias(name, alias, str(found.version))
    return _ref(client.get_model_version(name, str(found.version)))


def parse_model_uri(uri: str) -> tuple[str, str | None, int | None]:
    """Split a registry URI into ``(name, alias, version)``, one of the last two None.

    Raises:
        RegistryError: Not one of :data:`ACCEPTED_URIS`.
    """
    match = _URI_RE.fullmatch(uri.strip()) if isinstance(uri, str) else None
    if match is None:
        raise RegistryError(f"not a registered model URI: {uri!r} (expected {ACCEPTED_URIS})")
    name = check_registered_name(match["name"])
    if match["alias"] is not None:
        return name, _check_alias(match["alias"]), None
    try:
        return name, None, _version_number(match["version"])
    except RegistryError:
        raise RegistryError(
            f"not a registered model URI: {uri!r} (expected {ACCEPTED_URIS}, VERSION a whole "
            "number from 1)"
        ) from None


@_translates_mlflow_errors
def resolve(uri: str) -> ModelVersionRef:
    """The version a registry URI names now.

    Args:
        uri: ``models:/NAME@ALIAS`` (the version the alias points at now) or
            ``models:/NAME/VERSION``. Run URIs (``runs:/...``), logged-model ids
            (``models:/m-...``) and ``models:/NAME/latest`` are not accepted: name a
            version or an alias.

    Returns:
        The version.

    Raises:
        RegistryError: A malformed URI, or an unknown model, version or alias.
    """
    name, alias, version = parse_model_uri(uri)
    client = _mlflow().MlflowClient()
    if alias is not None:
        return _ref(_version_by_alias(client, name, alias))
    return _ref(_model_version(client, name, version))


@_translates_mlflow_errors
def run_versions(run_id: str) -> tuple[ModelVersionRef, ...]:
    """Every registered version made from a run's models, by registered name and version.

    Args:
        run_id: An MLflow run id.

    Returns:
        The versions (none when the run's models were never registered).
    """
    if not re.fullmatch(r"[0-9a-zA-Z_-]+", run_id):
        raise RegistryError(f"not a run id: {run_id[:40]!r}")
    client = _mlflow().MlflowClient()
    found = client.search_model_versions(f"run_id = '{run_id}'")
    # Read each again: a search leaves the versions' aliases out.
    versions = (_ref(client.get_model_version(v.name, v.version)) for v in found)
    return tuple(sorted(versions, key=lambda ref: (ref.name, ref.version)))


@_translates_mlflow_errors
def alias_holder(name: str, alias: str = CHAMPION) -> ModelVersionRef | None:
    """The version ``alias`` points at, or None when no version holds it (or no model exists).

    Raises:
        RegistryError: A bad name or alias.
    """
    _check_alias(alias)
    try:
        return resolve(f"models:/{check_registered_name(name)}@{alias}")
    except RegistryError:
        return None


def _metric(run_id: str, metric: str) -> float | None:
    """A run's latest value of ``metric``; None when missing or not a number."""
    from pipeline.tracking.runs import run_metrics

    value = run_metrics(run_id).get(metric)
    return None if value is None or math.isnan(value) else float(value)


@_translates_mlflow_errors
def promote_if_better(
    candidate: ModelVersionRef, *, metric: str, alias: str = CHAMPION
) -> ModelVersionRef:
    """Promote ``candidate`` when its run's ``metric`` is lower than the alias holder's run's.

    Lower is better (a loss such as the validation NLL). With no holder yet, or a holder
    whose run lacks the metric, the candidate is promoted; a candidate without the metric,
    or with a tie, is not.

    Args:
        candidate: A version, e.g. the one :func:`register_model` just made.
        metric: The run metric to compare, e.g. ``val/nll``.
        alias: The alias at stake (default ``champion``).

    Returns:
        The candidate with its aliases now (``alias`` among them if it was promoted).
    """
    holder = alias_holder(candidate.name, alias)
    ours = _metric(candidate.run_id, metric)
    theirs = None if holder is None else _metric(holder.run_id, metric)
    better = ours is not None and (theirs is None or ours < theirs)
    if better:
        return promote(candidate.name, candidate.version, alias)
    return resolve(candidate.uri)
