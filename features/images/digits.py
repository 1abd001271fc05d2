"""scikit-learn's bundled handwritten digits: the built-in image dataset (nothing to download).

``sklearn.datasets.load_digits`` ships 1797 real 8x8 grey-scale scans with values 0-16.
They are scaled to 0-255 and, by default, upscaled to 16x16 with bilinear interpolation:
at 8x8 a single pixel is an eighth of the image, which leaves the blur, zoom and pixelate
corruptions almost nothing to act on, while 16x16 keeps them meaningful and still costs
little. Pass ``image_size=8`` for the native resolution.

Splits are stratified by class and fixed by ``seed``: by default 70 % train, 10 % val and
20 % test (1257 / 180 / 360 images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

NUM_CLASSES = 10
NATIVE_SIZE = 8


@dataclass(frozen=True)
class DigitsSplits:
    """Deterministic train / val / test splits of the digits.

    Attributes:
        train_images: uint8 (N_train, S, S, 1).
        train_labels: int64 (N_train,).
        val_images: uint8 (N_val, S, S, 1).
        val_labels: int64 (N_val,).
        test_images: uint8 (N_test, S, S, 1).
        test_labels: int64 (N_test,).
        mean: Per-channel mean of the training images on the [0, 1] scale, length 1.
        std: Per-channel standard deviation of the training images on [0, 1], length 1.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(images, labels)`` for ``"train"``, ``"val"`` or ``"test"``."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, f"{name}_images"), getattr(self, f"{name}_labels")


def digits_images(image_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 images.

    Args:
        image_size: Output side length; 8 keeps the native resolution.

    Returns:
        images uint8 (1797, image_size, image_size, 1) and labels int64 (1797,).
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    bunch = load_digits()
    # Values are counts 0..16 of set pixels in 4x4 blocks; map 16 to 255.
    native = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    if image_size == NATIVE_SIZE:
        images = native
    else:
        images = np.stack(
            [
                np.asarray(
                    Image.fromarray(img).resize((image_size, image_size), Image.Resampling.BILINEAR)
                )
                for img in native
            ]
        )
    return images[:, :, :, None], bunch.target.astype(np.int64)


def load_digits_splits(
    image_size: int = 16,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DigitsSplits:
    """Stratified, seeded train / val / test splits of the digits.

    Args:
        image_size: Side length of the returned images (8 = native).
        val_fraction: Fraction of all images in the validation split.
        test_fraction: Fraction of all images in the test split.
        seed: Seed of the split; the same seed always gives the same split.

    Returns:
        :class:`DigitsSplits`, with normalisation statistics from the training images.
    """
    if not (0 < test_fraction < 1 and 0 <= val_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"need 0 < test_fraction, 0 <= val_fraction and a sum below 1; got "
            f"val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    images, labels = digits_images(image_size)
    idx = np.arange(len(labels))
    rest, test = train_test_split(idx, test_size=test_fraction, stratify=labels, random_state=seed)
    if val_fraction > 0:
        train, val = train_test_split(
            rest,
            test_size=val_fraction / (1.0 - test_fraction),
            stratify=labels[rest],
            random_state=seed,
        )
    else:
        train, val = rest, rest[:0]
    # Sort each split so the order does not depend on sklearn's shuffling internals.
    train, val, test = np.sort(train), np.sort(val), np.sort(test)
    scaled = images[train].astype(np.float64) / 255.0
    mean = tuple(float(m) for m in scaled.mean(axis=(0, 1, 2)))
    std = tuple(float(s) for s in scaled.std(axis=(0, 1, 2)))
    return DigitsSplits(
        images[train],
        labels[train],
        images[val],
        labels[val],
        images[test],
        labels[test],
        mean,
        std,
    )
