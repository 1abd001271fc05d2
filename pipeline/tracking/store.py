"""The tracking store: its URI, and a local sqlite store created once, owner-only."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlparse

from features.io import PRIVATE_DIR_MODE, PRIVATE_FILE_MODE

DEFAULT_DB_NAME = "mlflow.db"
ARTIFACT_DIR_NAME = "mlartifacts"

# Stores this process has created or checked (see _mlflow), and the umask scope's state.
_STORE_LOCK = threading.Lock()
_READY_STORES: set[str] = set()
_UMASK_LOCK = threading.Lock()
_umask_users = 0
_saved_umask = 0


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
