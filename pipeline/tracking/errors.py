"""MLflow's own errors leave the public functions as one-line :class:`TrackingError`."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from pipeline.tracking.store import tracking_uri

_P = ParamSpec("_P")
_R = TypeVar("_R")


class TrackingError(RuntimeError):
    """MLflow refused a request: unknown run, unreachable server, missing artifact.

    The message is one line: MLflow's first line and the store it came from.
    """


class TrackingNotFoundError(TrackingError, ValueError):
    """The run, model or artifact asked for does not exist (or the request was malformed).

    Also a ``ValueError``: asking again gives the same answer, so the flows do not retry
    it (``flows.tasks.retry_transient``) and the user sees the error at once.
    """


#: MLflow error codes that no retry can change.
_PERMANENT_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"})

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
        message = _without_credentials(f"{first} (MLflow store {tracking_uri()})")
        if getattr(err, "error_code", None) in _PERMANENT_CODES:
            raise TrackingNotFoundError(message) from err
        raise TrackingError(message) from err


def _translates_mlflow_errors(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorate a public function so that MLflow's errors leave it as :class:`TrackingError`."""

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _mlflow_errors():
            return function(*args, **kwargs)

    return wrapper
