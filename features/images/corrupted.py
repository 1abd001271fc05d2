"""Readers for the official CIFAR-10-C, CIFAR-100-C and ImageNet-C releases.

CIFAR-10-C / CIFAR-100-C (Zenodo) unpack to one folder holding ``<corruption>.npy``, uint8
of shape (50000, 32, 32, 3): the 10000 test images at severity 1, then severity 2, ... 5,
and ``labels.npy`` with the matching 50000 labels. Both are read with
``allow_pickle=False`` (a .npy file can otherwise carry a pickle) and memory-mapped, so a
severity slice costs only the pages it touches.

ImageNet-C unpacks to ``<root>/<corruption>/<severity>/<wnid>/*.JPEG``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from features.images.corruptions import SEVERITIES

CIFAR_C_HELP = (
    "Download CIFAR-10-C / CIFAR-100-C (Hendrycks & Dietterich 2019, Zenodo), extract it, "
    "and pass corrupted_dir=<folder with <corruption>.npy and labels.npy>; leave "
    "corrupted_dir unset to generate corruptions on the fly. Nothing is downloaded "
    "automatically."
)


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"corrupted-data file not found: {path}. {CIFAR_C_HELP}")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"{path}: not a plain .npy array ({e})") from e


def read_cifar_c(
    corrupted_dir: str | Path, corruption: str, severity: int
) -> tuple[np.ndarray, np.ndarray]:
    """One corruption at one severity from an official CIFAR-C folder.

    Args:
        corrupted_dir: Folder holding ``<corruption>.npy`` and ``labels.npy``.
        corruption: Corruption name, e.g. ``"gaussian_noise"``.
        severity: 1 to 5.

    Returns:
        images uint8 (N, 32, 32, 3) (a read-only memory-mapped view) and labels int64 (N,),
        where N is a fifth of the file's rows (10000 in the release).

    Raises:
        FileNotFoundError: If a file is missing.
        ValueError: On a bad severity, dtype or shape, naming the file.
    """
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    root = Path(corrupted_dir)
    images_path = root / f"{corruption}.npy"
    labels_path = root / "labels.npy"
    images = _load_npy(images_path)
    labels = _load_npy(labels_path)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (32, 32, 3):
        raise ValueError(
            f"{images_path}: expected uint8 (5*N, 32, 32, 3), got {images.dtype} {images.shape}"
        )
    if images.shape[0] % len(SEVERITIES):
        raise ValueError(
            f"{images_path}: {images.shape[0]} rows is not {len(SEVERITIES)} equal severities"
        )
    if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{labels_path}: expected {images.shape[0]} integer labels to match "
            f"{images_path.name}, got {labels.dtype} {labels.shape}"
        )
    n = images.shape[0] // len(SEVERITIES)
    rows = slice((severity - 1) * n, severity * n)
    return images[rows], np.asarray(labels[rows], dtype=np.int64)


def imagenet_c_folder(corrupted_dir: str | Path, corruption: str, severity: int) -> Path:
    """Path of one corruption / severity in an ImageNet-C tree.

    Raises:
        ValueError: On a bad severity.
        FileNotFoundError: If the folder is missing.
    """
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    folder = Path(corrupted_dir) / corruption / str(severity)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"ImageNet-C folder not found: {folder}. Extract ImageNet-C so that "
            "corrupted_dir/<corruption>/<severity>/<wnid>/*.JPEG exists, or leave "
            "corrupted_dir unset to generate corruptions on the fly. Nothing is downloaded "
            "automatically."
        )
    return folder
