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
from pathlib import Path

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def make_private_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) and set its mode to 0700.

    An existing directory is tightened to 0700 too, so point this at a directory dedicated
    to the output, not at a shared parent.

    Args:
        path: directory to create.

    Returns:
        The directory as a Path.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR_MODE)
    # mkdir's mode is filtered by the umask and ignored for existing directories.
    os.chmod(directory, PRIVATE_DIR_MODE)
    return directory


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
