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
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


# --------------------------------------------------------------------------- output folders


class OutputFolderError(ValueError):
    """An output folder cannot be written, or holds something that is not ours to replace."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine (anyone's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@dataclass(frozen=True)
class OutputFolder:
    """A folder that a program writes whole and publishes atomically.

    The target may be a new path, an empty folder (the user's: filled in place, its mode
    kept) or a folder this program wrote before (``is_ours``: swapped out whole). Anything
    else is refused, so a folder holding the user's files is never deleted. The content is
    first written to a temporary sibling ``.NAME.tmp-PID-*``; an interrupted run's siblings
    are removed at the next run once their process is gone.

    Args:
        path: The target folder; a symbolic link is followed.
        is_ours: Whether an existing, non-empty folder was written by this program and
            holds nothing else.
        what: What ``is_ours`` recognises, for the error message
            (e.g. "a feature folder written by rank1 extract").
        marker: The file that makes a folder recognisably ours (e.g. its manifest): moved
            last into an existing empty folder, so a half-filled folder is never ours.
        error: The exception class raised for a refused or unwritable folder.
    """

    path: Path
    is_ours: Callable[[Path], bool]
    what: str
    marker: str | None = None
    error: type[Exception] = OutputFolderError

    @property
    def target(self) -> Path:
        """The folder written: ``path``, or where it points if it is a symbolic link."""
        return self.path.resolve() if self.path.is_symlink() else self.path

    def check(self) -> None:
        """Refuse a target that is neither new, empty, nor ours, or that cannot be written.

        Raises:
            error: One line naming the folder and why.
        """
        out = self.target
        if not out.exists():
            return
        if not out.is_dir():
            raise self.error(f"{out}: output path exists and is not a folder")
        if any(out.iterdir()) and not self.is_ours(out):
            raise self.error(
                f"{out}: output folder is not empty and is not {self.what} (or holds other "
                "files); refusing to replace it"
            )
        if not os.access(out, os.W_OK | os.X_OK):
            raise self.error(f"{out}: output folder is not writable")

    @contextmanager
    def writing(self) -> Iterator[Path]:
        """Check the target, then yield a fresh owner-only temporary folder beside it.

        When the block ends normally, its content is published to the target (see
        :meth:`publish`); when it raises, the temporary folder is removed and the target is
        untouched. Creating the temporary folder first checks that the location can be
        written, before any work.

        Raises:
            error: If the target is refused or its parent cannot be created or written.
        """
        self.check()
        out = self.target
        try:
            make_private_dir(out.parent)
            self._remove_leftovers()
            tmp = self._temporary("tmp")
        except OSError as err:
            raise self.error(
                f"{out}: cannot write the output folder there ({err.strerror or err})"
            ) from None
        try:
            yield tmp
            self.publish(tmp)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def publish(self, tmp: Path) -> None:
        """Move the finished temporary folder to the target.

        A new target is the temporary folder renamed; an existing empty folder receives
        the entries one by one (the ``marker`` last) and keeps its mode; a folder of ours
        is swapped out whole and then removed.
        """
        self.check()  # again: the folder may have changed while the content was written
        out = self.target
        if not out.exists():
            tmp.rename(out)
        elif not any(out.iterdir()):
            names = sorted(entry.name for entry in tmp.iterdir())
            if self.marker in names:
                names.remove(self.marker)
                names.append(self.marker)
            for name in names:
                os.replace(tmp / name, out / name)
            tmp.rmdir()
        else:
            old = self._temporary("old")
            os.replace(out, old)  # an empty directory is replaced by the old folder
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)

    def _temporary(self, kind: str) -> Path:
        out = self.target
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-{os.getpid()}-", dir=out.parent))

    def _remove_leftovers(self) -> None:
        """Remove temporary siblings of earlier runs whose process is gone.

        Only folders named like ours (``.NAME.tmp-PID-*``, ``.NAME.old-PID-*``), owned by
        this user and not symbolic links are removed, and only when process PID is dead.
        """
        out = self.target
        pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)-\w+")
        for entry in out.parent.iterdir():
            found = pattern.fullmatch(entry.name)
            if found is None or entry.is_symlink() or not entry.is_dir():
                continue
            if entry.stat().st_uid != os.getuid() or pid_alive(int(found.group(1))):
                continue
            shutil.rmtree(entry, ignore_errors=True)
