"""ImageNet in the folder-per-class layout, decoded with Pillow.

Expected layout (the usual extraction of ILSVRC-2012, with the validation images moved
into per-class folders)::

    root/train/<wnid>/*.JPEG
    root/val/<wnid>/*.JPEG

ImageNet-C uses the same idea one level deeper: ``<root>/<corruption>/<severity>/<wnid>/``.
Class indices are the positions of the wnids in sorted order, taken from the training
folder whenever it exists so that every split agrees on them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from features.images import corruptions, transforms

IMAGE_EXTENSIONS = frozenset({".jpeg", ".jpg", ".png"})
IMAGENET_HELP = (
    "Put ImageNet (ILSVRC-2012) in the folder-per-class layout data_dir/train/<wnid>/*.JPEG "
    "and data_dir/val/<wnid>/*.JPEG and pass data_dir. Nothing is downloaded automatically."
)


def find_classes(folder: str | Path) -> list[str]:
    """Sorted names of the sub-folders of ``folder`` (the class wnids).

    Raises:
        FileNotFoundError: If ``folder`` is missing or has no sub-folders.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}. {IMAGENET_HELP}")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        raise FileNotFoundError(f"no class sub-folders in {folder}. {IMAGENET_HELP}")
    return classes


def list_images(folder: str | Path, classes: Sequence[str]) -> list[tuple[str, int]]:
    """List ``(path, label)`` for every image under ``folder/<class>/``.

    Args:
        folder: Folder holding one sub-folder per class.
        classes: Class names; a class's label is its position here. Sub-folders not in
            ``classes`` are an error, missing ones are allowed (they hold no images).

    Returns:
        Pairs sorted by class, then file name.

    Raises:
        ValueError: If ``folder`` has an unknown class folder or no images at all.
    """
    folder = Path(folder)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(e.name for e in os.scandir(folder) if e.is_dir() and e.name not in index)
    if unknown:
        raise ValueError(f"{folder}: class folders not in the class list: {unknown[:5]}")
    samples: list[tuple[str, int]] = []
    for name in classes:
        sub = folder / name
        if not sub.is_dir():
            continue
        files = sorted(
            e.name
            for e in os.scandir(sub)
            if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
        )
        samples.extend((str(sub / f), index[name]) for f in files)
    if not samples:
        raise ValueError(f"{folder}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found")
    return samples


class ImageFolderDataset(torch.utils.data.Dataset):
    """Images listed as ``(path, label)``, decoded with Pillow and normalised.

    Modes:
        ``"train"``: random-resized crop (area 0.08-1, aspect 3/4-4/3) to ``image_size``
        plus a random horizontal flip.
        ``"eval"``: resize the shorter side to ``resize_size``, centre-crop ``image_size``.
        ``"center"``: centre-crop ``image_size`` only (ImageNet-C files are already 224x224).

    When ``corruption`` is set, the eval-mode crop is corrupted on the fly with a generator
    seeded from (``corruption_seed``, corruption, severity, index), so each image always gets
    the same corruption, whatever the worker or the order.

    The dataset is picklable and safe in DataLoader workers: random augmentation draws from a
    :class:`~features.images.transforms.WorkerRNG`.

    Args:
        samples: ``(path, label)`` pairs.
        classes: Class names indexed by label.
        mode: ``"train"``, ``"eval"`` or ``"center"``.
        image_size: Output side length.
        resize_size: Shorter side before the centre crop in ``"eval"`` mode.
        seed: Augmentation seed (None: follow ``torch.manual_seed``).
        corruption: Optional corruption name (see :mod:`features.images.corruptions`).
        severity: Corruption severity 1-5.
        corruption_seed: Base seed of the on-the-fly corruption.

    Items are ``(image, label)``: float32 (3, image_size, image_size) normalised with the
    ImageNet mean and std, and an int64 scalar tensor.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        mode: str = "eval",
        image_size: int = 224,
        resize_size: int = 256,
        seed: int | None = None,
        corruption: str | None = None,
        severity: int = 1,
        corruption_seed: int = 0,
    ) -> None:
        if mode not in ("train", "eval", "center"):
            raise ValueError(f"mode must be 'train', 'eval' or 'center', got {mode!r}")
        if corruption is not None and mode == "train":
            raise ValueError("on-the-fly corruption applies to evaluation images only")
        self.samples = list(samples)
        self.classes = list(classes)
        self.num_classes = len(self.classes)
        self.mode = mode
        self.image_size = image_size
        self.resize_size = resize_size
        self.corruption = corruption
        self.severity = severity
        self.corruption_seed = corruption_seed
        self.rng = transforms.WorkerRNG(seed)

    @property
    def labels(self) -> np.ndarray:
        """int64 (N,) labels in item order."""
        return np.array([label for _, label in self.samples], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.samples)

    def load_uint8(self, index: int) -> np.ndarray:
        """The transformed (and maybe corrupted) image before normalisation.

        Returns:
            uint8 array (image_size, image_size, 3).

        Raises:
            OSError: Naming the file when it cannot be decoded, including an image over
                Pillow's decompression-bomb limit (``Image.MAX_IMAGE_PIXELS``).
        """
        path, _ = self.samples[index]
        try:
            with Image.open(path) as img:
                img.load()
                if self.mode == "train":
                    arr = transforms.imagenet_train_transform(img, self.rng.get(), self.image_size)
                elif self.mode == "eval":
                    arr = transforms.imagenet_eval_transform(img, self.image_size, self.resize_size)
                else:
                    arr = transforms.from_pil(
                        transforms.center_crop(img.convert("RGB"), self.image_size)
                    )
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            # Pillow's bomb error is neither: it guards against an image whose pixel count
            # would exhaust memory, and names no file.
            raise OSError(f"cannot read image {path}: {e}") from e
        if self.corruption is not None:
            rng = corruptions.item_rng(self.corruption_seed, self.corruption, self.severity, index)
            arr = corruptions.corrupt(arr, self.corruption, self.severity, rng)
        return arr

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = transforms.to_normalized_tensor(
            self.load_uint8(index), transforms.IMAGENET_MEAN, transforms.IMAGENET_STD
        )
        return image, torch.tensor(self.samples[index][1], dtype=torch.int64)
