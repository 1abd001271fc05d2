"""CIFAR-10 and CIFAR-100 readers for the official "python version" archives.

The archives from https://www.cs.toronto.edu/~kriz/cifar.html unpack to::

    cifar-10-batches-py/   data_batch_1 .. data_batch_5, test_batch, batches.meta
    cifar-100-python/      train, test, meta

Each file is a Python-2 pickle of a dict with byte-string keys (``b"data"``,
``b"labels"`` or ``b"fine_labels"``, ...). ``b"data"`` is a uint8 array of shape
(N, 3072): each row holds the red, then green, then blue 32x32 plane, row-major.

Pickles can execute arbitrary code when loaded, so these files are read with
:class:`RestrictedUnpickler`, which admits only the globals that a numpy array needs.
Nothing is ever downloaded.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

try:  # numpy >= 2 keeps the implementation in numpy._core
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

CIFAR10_DIRNAME = "cifar-10-batches-py"
CIFAR100_DIRNAME = "cifar-100-python"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGE_SHAPE = (32, 32, 3)

# The only globals a CIFAR pickle references: numpy's array reconstruction helper (under its
# numpy 1.x and 2.x module names), the ndarray type and the dtype constructor. Mapping them to
# objects imported above, rather than importing by name, means the pickle cannot make us import
# any module at all.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """Raised when a pickle references a global outside the CIFAR allow-list.

    Also a ``ValueError``: like any other bad input file it is reported as one line by the
    CLI and never retried by the flows (the file stays the same between two tries).
    """


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only admits the contents of the CIFAR python-version files.

    Builtin containers and scalars (dict, list, str, bytes, int, ...) need no globals;
    numpy arrays need ``_reconstruct``, ``numpy.ndarray`` and ``numpy.dtype``. Any other
    global (``os.system``, ``builtins.eval``, ...) raises :class:`UnsafePickleError`
    before it can be called.

    Args:
        file: Binary file object to read from.
        source: Name of the file, used in error messages.
    """

    def __init__(self, file: Any, source: str | Path) -> None:
        # encoding="bytes" keeps Python-2 str values (keys, filenames, array buffers) as bytes.
        super().__init__(file, encoding="bytes")
        self.source = str(source)

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed global, or raise :class:`UnsafePickleError`."""
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.source}: refusing to load global '{module}.{name}'; a CIFAR pickle "
                "holds only dicts, lists, strings, bytes, ints and numpy arrays, so this "
                "file is corrupt or not a CIFAR file"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        """Reject persistent ids, which CIFAR files never contain."""
        raise UnsafePickleError(f"{self.source}: refusing persistent id {pid!r}")


def load_pickle_restricted(path: str | Path) -> Any:
    """Load a CIFAR-format pickle file with :class:`RestrictedUnpickler`.

    Args:
        path: The pickle file.

    Returns:
        The unpickled object (for CIFAR files, a dict with bytes keys).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        UnsafePickleError: If the pickle references a disallowed global (a ValueError).
        ValueError: If the file is not a readable pickle.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CIFAR file not found: {path}")
    with path.open("rb") as f:
        try:
            return RestrictedUnpickler(f, path).load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a readable CIFAR pickle ({e})") from e


@dataclass(frozen=True)
class CifarArrays:
    """One split of CIFAR as arrays.

    Attributes:
        images: uint8 array (N, 32, 32, 3), RGB, HWC.
        labels: int64 array (N,).
        class_names: Class names indexed by label.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]


def _get(record: Any, key: bytes, path: Path) -> Any:
    if not isinstance(record, dict):
        raise ValueError(f"{path}: expected a dict, got {type(record).__name__}")
    # Files re-saved by Python 3 may use str keys; accept both spellings.
    for k in (key, key.decode()):
        if k in record:
            return record[k]
    found = sorted(str(k) for k in record)
    raise ValueError(f"{path}: missing key {key!r} (found {found})")


def _decode_batch(record: Any, label_key: bytes, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Turn one batch dict into (images uint8 (N, 32, 32, 3), labels int64 (N,))."""
    data = _get(record, b"data", path)
    labels = _get(record, label_key, path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = getattr(data, "dtype", type(data).__name__)
        raise ValueError(f"{path}: b'data' must be a uint8 array, got {kind}")
    if data.ndim != 2 or data.shape[1] != 32 * 32 * 3:
        raise ValueError(f"{path}: b'data' must have shape (N, 3072), got {data.shape}")
    labels = np.asarray(labels)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: {label_key!r} must be {data.shape[0]} integers, got shape "
            f"{labels.shape} dtype {labels.dtype}"
        )
    # Rows are 3 planes of 32x32 (channel-major); reorder to HWC for Pillow and numpy code.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int64)


def _names(path: Path, key: bytes) -> tuple[str, ...]:
    names = _get(load_pickle_restricted(path), key, path)
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def resolve_cifar_dir(data_dir: str | Path | None, name: str) -> Path:
    """Find the extracted CIFAR folder from ``data_dir``.

    ``data_dir`` may be the extracted folder itself (``cifar-10-batches-py``) or its parent.

    Args:
        data_dir: Folder given by the user, or None.
        name: ``"cifar10"`` or ``"cifar100"``.

    Returns:
        The folder that holds the batch files.

    Raises:
        FileNotFoundError: With instructions when the files are not there.
    """
    dirname = {"cifar10": CIFAR10_DIRNAME, "cifar100": CIFAR100_DIRNAME}[name]
    marker = "data_batch_1" if name == "cifar10" else "train"
    help_text = (
        f"Download the '{name.upper()} python version' from {CIFAR_URL}, extract it, and pass "
        f"data_dir=<folder containing {dirname}/> (or the {dirname} folder itself). "
        "Nothing is downloaded automatically."
    )
    if data_dir is None:
        raise FileNotFoundError(f"{name} needs data_dir. {help_text}")
    data_dir = Path(data_dir)
    for candidate in (data_dir / dirname, data_dir):
        if (candidate / marker).is_file():
            return candidate
    raise FileNotFoundError(
        f"{name} files not found: expected {data_dir / dirname / marker}. {help_text}"
    )


def read_cifar10(data_dir: str | Path, train: bool) -> CifarArrays:
    """Read CIFAR-10 from the official python-version folder.

    Args:
        data_dir: ``cifar-10-batches-py`` or the folder containing it.
        train: True for the 50k training batches, False for ``test_batch``.

    Returns:
        The split as :class:`CifarArrays` (10 classes).
    """
    root = resolve_cifar_dir(data_dir, "cifar10")
    files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    parts = [_decode_batch(load_pickle_restricted(root / f), b"labels", root / f) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    names = _names(root / "batches.meta", b"label_names")
    _check_labels(labels, len(names), root)
    return CifarArrays(images, labels, names)


def read_cifar100(data_dir: str | Path, train: bool) -> CifarArrays:
    """Read CIFAR-100 (fine labels) from the official python-version folder.

    Args:
        data_dir: ``cifar-100-python`` or the folder containing it.
        train: True for ``train`` (50k), False for ``test`` (10k).

    Returns:
        The split as :class:`CifarArrays` (100 fine classes).
    """
    root = resolve_cifar_dir(data_dir, "cifar100")
    path = root / ("train" if train else "test")
    images, labels = _decode_batch(load_pickle_restricted(path), b"fine_labels", path)
    names = _names(root / "meta", b"fine_label_names")
    _check_labels(labels, len(names), path)
    return CifarArrays(images, labels, names)


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{path}: labels out of range [0, {num_classes}) "
            f"(min {labels.min()}, max {labels.max()})"
        )


def read_cifar(name: str, data_dir: str | Path | None, train: bool) -> CifarArrays:
    """Dispatch to :func:`read_cifar10` or :func:`read_cifar100`.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        data_dir: Folder holding the extracted archive.
        train: Training (True) or test (False) split.

    Returns:
        The split as :class:`CifarArrays`.
    """
    root = resolve_cifar_dir(data_dir, name)
    return read_cifar10(root, train) if name == "cifar10" else read_cifar100(root, train)
