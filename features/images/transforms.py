"""Image transforms written with numpy, Pillow and torch (torchvision is not available).

Images travel as uint8 numpy arrays in HWC layout (H, W, C) with C in {1, 3} until the
last step, :func:`to_normalized_tensor`, which returns a float32 (C, H, W) tensor.

Random transforms take an explicit ``numpy.random.Generator``. Datasets get one from
:class:`WorkerRNG`, which reseeds itself inside each DataLoader worker so that workers do not
repeat each other's augmentations.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

# Spec section 5.1 (the values used by the reference CIFAR scripts).
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
# The usual ImageNet channel statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WorkerRNG:
    """A numpy Generator that is reseeded once per process / DataLoader worker.

    In the main process the generator is seeded, at first use, from ``seed`` (or from
    ``torch.initial_seed()`` when ``seed`` is None, so an earlier ``torch.manual_seed``
    controls it).
    Inside a DataLoader worker it is seeded from the worker's torch seed (which the
    DataLoader derives from its base seed, different every epoch, plus the worker id) mixed
    with ``seed``. Pickling drops the generator, so a fresh one is built after the dataset
    is copied into a worker.

    Args:
        seed: Optional base seed.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._gen: np.random.Generator | None = None
        self._key: tuple[int, int | None] | None = None

    def get(self) -> np.random.Generator:
        """Return the generator for the current process / worker."""
        info = torch.utils.data.get_worker_info()
        key = (os.getpid(), None if info is None else info.seed)
        if self._gen is None or key != self._key:
            if info is None:
                entropy = [self.seed if self.seed is not None else torch.initial_seed()]
            else:
                entropy = [info.seed, self.seed if self.seed is not None else 0]
            self._gen = np.random.default_rng(entropy)
            self._key = key
        return self._gen

    def __getstate__(self) -> dict:
        return {"seed": self.seed, "_gen": None, "_key": None}


def as_hwc(image: np.ndarray) -> np.ndarray:
    """Check that ``image`` is a uint8 (H, W, C) array with C in {1, 3}.

    Args:
        image: Candidate image.

    Returns:
        The same array.

    Raises:
        ValueError: If dtype or shape are wrong.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(
            f"expected a uint8 (H, W, C) image with C in {{1, 3}}, got {image.dtype} {image.shape}"
        )
    return image


def to_pil(image: np.ndarray) -> Image.Image:
    """uint8 (H, W, C) array -> Pillow image (mode "L" for C=1, "RGB" for C=3)."""
    image = as_hwc(image)
    return Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image)


def from_pil(image: Image.Image, channels: int = 3) -> np.ndarray:
    """Pillow image -> uint8 (H, W, channels) array, converting the mode as needed."""
    arr = np.asarray(image.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    return arr[:, :, None] if channels == 1 else arr


def to_normalized_tensor(
    image: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Scale a uint8 image to [0, 1] and normalise each channel.

    Args:
        image: uint8 array (H, W, C).
        mean: Per-channel mean, length C.
        std: Per-channel standard deviation, length C.

    Returns:
        float32 tensor (C, H, W) equal to ``(image / 255 - mean) / std``.
    """
    image = as_hwc(image)
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (x - m) / s


def images_to_tensor(
    images: np.ndarray, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """Convert a uint8 batch to a normalised float tensor in one go.

    Args:
        images: uint8 array (N, H, W, C).
        mean: Per-channel mean on the [0, 1] scale, length C.
        std: Per-channel standard deviation on the [0, 1] scale, length C.

    Returns:
        float32 tensor (N, C, H, W) equal to ``(images / 255 - mean) / std``.
    """
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


def pad_crop_flip(image: np.ndarray, rng: np.random.Generator, pad: int, flip: bool) -> np.ndarray:
    """Zero-pad by ``pad`` pixels, take a random crop of the original size, maybe flip.

    This is the CIFAR training augmentation of spec section 5.1 (pad 4, random 32x32 crop,
    random horizontal flip).

    Args:
        image: uint8 array (H, W, C).
        rng: Source of randomness.
        pad: Border width in pixels.
        flip: Whether to flip left-right with probability 1/2.

    Returns:
        uint8 array (H, W, C).
    """
    h, w = image.shape[:2]
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    top = int(rng.integers(0, 2 * pad + 1))
    left = int(rng.integers(0, 2 * pad + 1))
    out = padded[top : top + h, left : left + w]
    if flip and rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so that the shorter side is ``size`` pixels, keeping the aspect ratio."""
    w, h = image.size
    scale = size / min(w, h)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(new, Image.Resampling.BILINEAR)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Crop the central ``size`` x ``size`` window (the image must be at least that big)."""
    w, h = image.size
    if w < size or h < size:
        raise ValueError(f"cannot centre-crop {size}x{size} from a {w}x{h} image")
    left = (w - size) // 2
    top = (h - size) // 2
    return image.crop((left, top, left + size, top + size))


def random_resized_crop(
    image: Image.Image,
    rng: np.random.Generator,
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> Image.Image:
    """Inception-style crop: random area fraction and aspect ratio, resized to ``size``.

    Draws an area fraction uniformly from ``scale`` and an aspect ratio log-uniformly from
    ``ratio``; retries up to ``attempts`` times until the box fits, then falls back to the
    largest centred box whose aspect ratio lies in ``ratio``.

    Args:
        image: Input image.
        rng: Source of randomness.
        size: Output side length.
        scale: Range of the crop area as a fraction of the image area.
        ratio: Range of the crop aspect ratio (width / height).
        attempts: Tries before the fallback.

    Returns:
        A ``size`` x ``size`` image.
    """
    w, h = image.size
    area = w * h
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw = round(math.sqrt(target * aspect))
        ch = round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            left = int(rng.integers(0, w - cw + 1))
            top = int(rng.integers(0, h - ch + 1))
            box = (left, top, left + cw, top + ch)
            return image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    # Fallback: whole image, trimmed to the nearest allowed aspect ratio.
    aspect = w / h
    if aspect < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif aspect > ratio[1]:
        cw, ch = round(h * ratio[1]), h
    else:
        cw, ch = w, h
    left, top = (w - cw) // 2, (h - ch) // 2
    box = (left, top, left + cw, top + ch)
    return image.resize((size, size), Image.Resampling.BILINEAR, box=box)


def imagenet_train_transform(
    image: Image.Image, rng: np.random.Generator, size: int = 224
) -> np.ndarray:
    """Random-resized crop (area 0.08-1, aspect 3/4-4/3) to ``size`` and a random flip.

    Args:
        image: Decoded image (any mode; converted to RGB).
        rng: Source of randomness.
        size: Output side length.

    Returns:
        uint8 array (size, size, 3).
    """
    out = random_resized_crop(image.convert("RGB"), rng, size)
    if rng.random() < 0.5:
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return from_pil(out)


def imagenet_eval_transform(image: Image.Image, size: int = 224, resize: int = 256) -> np.ndarray:
    """Resize the shorter side to ``resize``, then centre-crop ``size``.

    Args:
        image: Decoded image (any mode; converted to RGB).
        size: Output side length.
        resize: Shorter side after resizing.

    Returns:
        uint8 array (size, size, 3).
    """
    return from_pil(center_crop(resize_shorter_side(image.convert("RGB"), resize), size))
