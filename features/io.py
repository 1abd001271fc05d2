"""Owner-only, atomic file writes for outputs that may hold patient-level data.

One module for the whole project: ``features`` (feature folders) and ``pipeline``
(reports, plots, checkpoints) both write through it.

Reports and plots derived from patient records must not be readable by other users of a
shared machine, and a reader must never see a half-written file. Files are therefore created
with mode 0600 from the start (not chmod-ed afterwards, which would leave a window), written
to a temporary name in the same directory, flushed to disk and moved into place with
``os.replace`` (atomic on POSIX).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` and any missing parents, each created folder owner-only (0700).

    A folder that already exists is left exactly as it is: it may be the user's own or a
    shared one (``.``, a 1777 scratch folder), and changing its mode would be a surprise.
    Only the folders this call creates are made 0700.

    Args:
        path: directory to create.

    Returns:
        The directory as a Path.

    Raises:
        NotADirectoryError: If ``path`` exists and is not a directory.
    """
    directory = Path(path)
    missing = []
    component = directory
    while not component.exists() and component != component.parent:
        missing.append(component)
        component = component.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # made by someone else meanwhile: not ours to change
        # mkdir's mode is filtered by the umask (which can only remove bits): make it exact.
        os.chmod(folder, PRIVATE_DIR_MODE)
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory}: exists and is not a folder")
    return directory


@contextmanager
def create_private_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Create a new owner-only (0600) file and yield it open for binary writing.

    For files written into a fresh private folder that is published as a whole (no
    per-file rename needed); the file must not exist yet (``O_EXCL``, so nothing planted
    at the name is followed or reused).

    Args:
        path: the file to create.

    Yields:
        The open file; it is flushed to disk and closed when the block ends.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), PRIVATE_FILE_MODE)
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def write_private_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` as an owner-only (0600) file.

    Args:
        path: destination file; its directory must exist.
        data: the full file content.

    Returns:
        The destination as a Path.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: never follow or reuse a file someone else planted at the temporary name.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as handle:
            # The umask can only remove bits from 0600; fchmod makes the mode exact anyway.
            os.fchmod(handle.fileno(), PRIVATE_FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def write_private_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`write_private_bytes` for UTF-8 text."""
    return write_private_bytes(path, text.encode("utf-8"))
