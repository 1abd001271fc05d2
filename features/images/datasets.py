"""The one entry point the training and evaluation jobs use for image data.

``load_image_dataset(name, data_dir, split)`` returns a torch Dataset of
``(image float32 (C, H, W) normalised, label int64 scalar)`` for

- ``"digits"``: scikit-learn's bundled 8x8 digits, upscaled to 16x16 by default, 1 channel,
  stratified 70/10/20 train/val/test split (see :mod:`features.images.digits`); needs no files.
- ``"cifar10"`` / ``"cifar100"``: the official python-version archives (see
  :mod:`features.images.cifar`), normalised with the spec's CIFAR mean and std.
- ``"imagenet"``: ``data_dir/train/<wnid>/`` and ``data_dir/val/<wnid>/``, 224x224 crops
  normalised with the ImageNet mean and std.

Splits: ``"train"`` and ``"test"`` are the official ones (for ImageNet, ``"test"`` reads the
official validation images, which the paper reports as its test set). ``"val"`` is a seeded
random subset of the official training images, of ``val_fraction`` of them, removed from
``"train"`` when ``val_fraction > 0``. As in the paper, CIFAR and ImageNet default to no
validation split (``val_fraction=0``: ``"train"`` is the full training set and asking for
``"val"`` is an error); digits default to 10 %.

``load_corrupted(name, corruption, severity, ...)`` returns the corrupted test set, read from
the official CIFAR-10-C / CIFAR-100-C / ImageNet-C release when ``corrupted_dir`` is given
and generated on the fly (deterministically per image) otherwise.

Nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from features.images import cifar, corrupted, corruptions, digits, imagenet, transforms

DATASETS = ("digits", "cifar10", "cifar100", "imagenet")
SPLITS = ("train", "val", "test")
DEFAULT_VAL_FRACTION = {"digits": 0.1, "cifar10": 0.0, "cifar100": 0.0, "imagenet": 0.0}
DIGITS_TEST_FRACTION = 0.2
CIFAR_PAD = 4
CIFAR_C_DIRNAMES = {"cifar10": "CIFAR-10-C", "cifar100": "CIFAR-100-C"}


class ArrayImageDataset(torch.utils.data.Dataset):
    """In-memory uint8 images with optional augmentation and on-the-fly corruption.

    Augmentation (``augment=True``): zero-pad by ``pad`` pixels, take a random crop of the
    original size and, when ``flip`` is set, flip left-right with probability 1/2. Random
    draws come from a :class:`~features.images.transforms.WorkerRNG`, so the dataset is
    picklable and every DataLoader worker has its own stream.

    Corruption (``corruption`` set): each item is corrupted with a generator seeded from
    (``corruption_seed``, corruption, severity, index), so the corrupted set is the same in
    every run, whatever the worker count or read order.

    Args:
        images: uint8 (N, H, W, C), C in {1, 3}.
        labels: Integer labels (N,).
        mean: Per-channel mean on the [0, 1] scale.
        std: Per-channel standard deviation on the [0, 1] scale.
        num_classes: Number of classes.
        augment: Apply the pad / crop / flip augmentation.
        pad: Padding for the random crop, pixels.
        flip: Include the random horizontal flip.
        seed: Augmentation seed (None: follow ``torch.manual_seed``).
        corruption: Optional corruption name.
        severity: Corruption severity 1-5.
        corruption_seed: Base seed of the on-the-fly corruption.

    Items are ``(image, label)``: float32 (C, H, W) equal to ``(x / 255 - mean) / std``, and
    an int64 scalar tensor.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        augment: bool = False,
        pad: int = CIFAR_PAD,
        flip: bool = True,
        seed: int | None = None,
        corruption: str | None = None,
        severity: int = 1,
        corruption_seed: int = 0,
    ) -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
            raise ValueError(
                f"images must be uint8 (N, H, W, C), C in {{1, 3}}; got {images.dtype} "
                f"{images.shape}"
            )
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        if len(mean) != images.shape[3] or len(std) != images.shape[3]:
            raise ValueError(f"mean/std need {images.shape[3]} values, got {mean}, {std}")
        if corruption is not None and augment:
            raise ValueError("on-the-fly corruption applies to evaluation images only")
        self.images = images
        self.labels = np.asarray(labels, dtype=np.int64)
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.num_classes = num_classes
        self.augment = augment
        self.pad = pad
        self.flip = flip
        self.corruption = corruption
        self.severity = severity
        self.corruption_seed = corruption_seed
        self.rng = transforms.WorkerRNG(seed)

    def __len__(self) -> int:
        return len(self.labels)

    def load_uint8(self, index: int) -> np.ndarray:
        """The augmented or corrupted image before normalisation, uint8 (H, W, C)."""
        image = np.asarray(self.images[index])
        if self.augment:
            image = transforms.pad_crop_flip(image, self.rng.get(), self.pad, self.flip)
        if self.corruption is not None:
            rng = corruptions.item_rng(self.corruption_seed, self.corruption, self.severity, index)
            image = corruptions.corrupt(image, self.corruption, self.severity, rng)
        return image

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = transforms.to_normalized_tensor(self.load_uint8(index), self.mean, self.std)
        return image, torch.tensor(self.labels[index], dtype=torch.int64)


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; choose from {DATASETS}")


def holdout_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of ``range(n)`` into train and validation indices.

    Args:
        n: Number of training items.
        val_fraction: Fraction held out for validation, in [0, 1).
        seed: Seed; the same (n, fraction, seed) always gives the same split.

    Returns:
        Sorted int64 arrays ``(train_indices, val_indices)``; ``round(n * val_fraction)``
        indices are held out.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = round(n * val_fraction)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _select(split: str, n: int, val_fraction: float, seed: int, name: str) -> np.ndarray:
    """Indices into the official training set for ``split`` ("train" or "val")."""
    train_idx, val_idx = holdout_split(n, val_fraction, seed)
    if split == "val":
        if len(val_idx) == 0:
            raise ValueError(
                f"{name} has no validation split by default (the paper trains on the full "
                "training set); pass val_fraction > 0 to hold out part of it"
            )
        return val_idx
    return train_idx


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _imagenet_root(data_dir: str | Path | None) -> Path:
    if data_dir is None:
        raise FileNotFoundError(f"imagenet needs data_dir. {imagenet.IMAGENET_HELP}")
    root = Path(data_dir)
    if not (root / "train").is_dir() and not (root / "val").is_dir():
        raise FileNotFoundError(
            f"imagenet files not found: expected {root / 'train'} and {root / 'val'}. "
            f"{imagenet.IMAGENET_HELP}"
        )
    return root


def _imagenet_classes(root: Path) -> list[str]:
    # The training folder defines the label order; fall back to val for eval-only copies.
    return imagenet.find_classes(root / "train" if (root / "train").is_dir() else root / "val")


def num_classes(name: str, data_dir: str | Path | None = None) -> int:
    """Number of classes of dataset ``name``.

    For ImageNet this counts the class folders under ``data_dir`` (1000 for the full set).
    """
    _check_name(name)
    if name == "imagenet":
        return len(_imagenet_classes(_imagenet_root(data_dir)))
    return {"digits": digits.NUM_CLASSES, "cifar10": 10, "cifar100": 100}[name]


def _digits_dataset_args(image_size: int | None, val_fraction: float, seed: int) -> dict:
    size = 16 if image_size is None else image_size
    return {"image_size": size, "val_fraction": val_fraction, "seed": seed}


def load_image_dataset(
    name: str,
    data_dir: str | Path | None = None,
    split: str = "train",
    *,
    train_augment: bool = False,
    val_fraction: float | None = None,
    seed: int = 0,
    augment_seed: int | None = None,
    image_size: int | None = None,
) -> torch.utils.data.Dataset:
    """Load a split of an image dataset as normalised tensors.

    Args:
        name: ``"digits"``, ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        data_dir: Folder with the files (unused for digits). CIFAR: the extracted
            ``cifar-10-batches-py`` / ``cifar-100-python`` folder or its parent. ImageNet:
            the folder holding ``train/`` and ``val/``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        train_augment: Apply the training augmentation: CIFAR pad 4 + random 32x32 crop +
            random flip (spec 5.1); ImageNet random-resized crop + flip; digits pad
            ``image_size // 8`` + random crop, no flip (a flipped digit is another shape).
        val_fraction: Fraction of the training images held out as ``"val"``. None uses the
            dataset default: 0.1 of all images for digits, 0 for CIFAR and ImageNet.
        seed: Seed of the train / val (/ test for digits) split.
        augment_seed: Seed of the augmentation (None: follow ``torch.manual_seed``).
        image_size: Digits: side length (default 16; 8 is native). ImageNet: crop size
            (default 224). Must be None for CIFAR.

    Returns:
        A Dataset of ``(float32 (C, H, W), int64 scalar)`` with attributes ``num_classes``
        and ``labels`` (int64 (N,)).

    Raises:
        FileNotFoundError: If ``data_dir`` is missing or lacks the expected files; the message
            says where to put them. Nothing is downloaded.
        ValueError: On an unknown name or split, or ``"val"`` with no validation split.
    """
    _check_name(name)
    _check_split(split)
    frac = DEFAULT_VAL_FRACTION[name] if val_fraction is None else val_fraction

    if name == "digits":
        splits = digits.load_digits_splits(
            **_digits_dataset_args(image_size, frac, seed), test_fraction=DIGITS_TEST_FRACTION
        )
        images, labels = splits.split(split)
        if len(labels) == 0:
            raise ValueError("digits has no validation split with val_fraction=0")
        size = images.shape[1]
        return ArrayImageDataset(
            images,
            labels,
            splits.mean,
            splits.std,
            digits.NUM_CLASSES,
            augment=train_augment,
            pad=max(1, size // 8),
            flip=False,
            seed=augment_seed,
        )

    if name in ("cifar10", "cifar100"):
        if image_size not in (None, 32):
            raise ValueError(f"{name} images are 32x32; image_size={image_size} is not supported")
        arrays = cifar.read_cifar(name, data_dir, train=split != "test")
        images, labels = arrays.images, arrays.labels
        if split != "test":
            idx = _select(split, len(labels), frac, seed, name)
            images, labels = images[idx], labels[idx]
        return ArrayImageDataset(
            images,
            labels,
            transforms.CIFAR_MEAN,
            transforms.CIFAR_STD,
            len(arrays.class_names),
            augment=train_augment,
            pad=CIFAR_PAD,
            flip=True,
            seed=augment_seed,
        )

    root = _imagenet_root(data_dir)
    classes = _imagenet_classes(root)
    folder = root / ("val" if split == "test" else "train")
    samples = imagenet.list_images(folder, classes)
    if split != "test":
        idx = _select(split, len(samples), frac, seed, name)
        samples = [samples[i] for i in idx]
    return imagenet.ImageFolderDataset(
        samples,
        classes,
        mode="train" if train_augment else "eval",
        image_size=224 if image_size is None else image_size,
        seed=augment_seed,
    )


def load_corrupted(
    name: str,
    corruption: str,
    severity: int,
    data_dir: str | Path | None = None,
    corrupted_dir: str | Path | None = None,
    *,
    corruption_seed: int = 0,
    seed: int = 0,
    image_size: int | None = None,
) -> torch.utils.data.Dataset:
    """The corrupted test set of ``name`` for one corruption and severity.

    With ``corrupted_dir`` the official release is read (CIFAR-10-C / CIFAR-100-C:
    ``<corrupted_dir>/<corruption>.npy`` + ``labels.npy``, where ``corrupted_dir`` may also
    be the folder holding the extracted ``CIFAR-10-C/`` or ``CIFAR-100-C/``; ImageNet-C:
    ``<corrupted_dir>/<corruption>/<severity>/<wnid>/``). Without it the clean test set is
    corrupted on the fly with :mod:`features.images.corruptions`, deterministically per image
    for a given ``corruption_seed``. Digits have no official release and are always generated.

    Args:
        name: ``"digits"``, ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        corruption: Corruption name, e.g. ``"gaussian_noise"``.
        severity: 1 to 5.
        data_dir: Clean data folder, as for :func:`load_image_dataset` (needed when
            generating, and for ImageNet-C's class order when available).
        corrupted_dir: Folder of the official corrupted release, or None to generate.
        corruption_seed: Seed of the generated corruptions.
        seed: Split seed (digits only: selects the test images and normalisation).
        image_size: As for :func:`load_image_dataset`.

    Returns:
        A Dataset of ``(float32 (C, H, W), int64 scalar)`` normalised like the clean test
        set, with ``num_classes`` and ``labels``.
    """
    _check_name(name)
    if severity not in corruptions.SEVERITIES:
        raise ValueError(f"severity must be one of {corruptions.SEVERITIES}, got {severity!r}")
    if corrupted_dir is None and corruption not in corruptions.available_corruptions():
        raise ValueError(
            f"cannot generate corruption {corruption!r}; available: "
            f"{', '.join(corruptions.available_corruptions())}"
        )

    if name == "digits":
        if corrupted_dir is not None:
            raise ValueError("digits have no official corrupted release; omit corrupted_dir")
        splits = digits.load_digits_splits(
            **_digits_dataset_args(image_size, DEFAULT_VAL_FRACTION["digits"], seed),
            test_fraction=DIGITS_TEST_FRACTION,
        )
        return ArrayImageDataset(
            splits.test_images,
            splits.test_labels,
            splits.mean,
            splits.std,
            digits.NUM_CLASSES,
            corruption=corruption,
            severity=severity,
            corruption_seed=corruption_seed,
        )

    if name in ("cifar10", "cifar100"):
        n_classes = num_classes(name)
        if corrupted_dir is not None:
            # Accept the extracted release folder or the folder that contains it.
            release = Path(corrupted_dir) / CIFAR_C_DIRNAMES[name]
            if release.is_dir():
                corrupted_dir = release
            images, labels = corrupted.read_cifar_c(corrupted_dir, corruption, severity)
            if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
                raise ValueError(
                    f"{Path(corrupted_dir) / 'labels.npy'}: labels outside [0, {n_classes}); "
                    f"is this the {name} release?"
                )
            return ArrayImageDataset(
                images, labels, transforms.CIFAR_MEAN, transforms.CIFAR_STD, n_classes
            )
        arrays = cifar.read_cifar(name, data_dir, train=False)
        return ArrayImageDataset(
            arrays.images,
            arrays.labels,
            transforms.CIFAR_MEAN,
            transforms.CIFAR_STD,
            n_classes,
            corruption=corruption,
            severity=severity,
            corruption_seed=corruption_seed,
        )

    size = 224 if image_size is None else image_size
    if corrupted_dir is not None:
        folder = corrupted.imagenet_c_folder(corrupted_dir, corruption, severity)
        if data_dir is not None:
            classes = _imagenet_classes(_imagenet_root(data_dir))
        else:
            classes = imagenet.find_classes(folder)
        return imagenet.ImageFolderDataset(
            imagenet.list_images(folder, classes), classes, mode="center", image_size=size
        )
    root = _imagenet_root(data_dir)
    classes = _imagenet_classes(root)
    return imagenet.ImageFolderDataset(
        imagenet.list_images(root / "val", classes),
        classes,
        mode="eval",
        image_size=size,
        corruption=corruption,
        severity=severity,
        corruption_seed=corruption_seed,
    )
