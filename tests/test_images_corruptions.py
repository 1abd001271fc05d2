"""Corruptions: shape, dtype, determinism, severity ordering; official CIFAR-C files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from features.images import corrupted, corruptions, datasets, digits

NAMES = corruptions.available_corruptions()


def _textured_images(n: int, size: int, channels: int, seed: int) -> np.ndarray:
    """Stand-ins for natural images: texture at several scales plus sharp-edged patches."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        # Summing noise smoothed at doubling scales gives a roughly 1/f spectrum, as in photos.
        base = sum(
            ndimage.gaussian_filter(rng.random((size, size, channels)), (s, s, 0)) * s
            for s in (0.5, 1.0, 2.0, 4.0)
        )
        base = (base - base.min()) / (base.max() - base.min())
        for _ in range(3):  # rectangles at random places: edges at varied positions
            top, left = rng.integers(0, size - size // 4, 2)
            h, w = rng.integers(size // 8, size // 2, 2)
            base[top : top + h, left : left + w] = rng.random(channels)
        out.append(np.rint(base * 255).astype(np.uint8))
    return np.stack(out)


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())


def test_at_least_ten_benchmark_types_are_implemented():
    implemented = set(NAMES) & set(corruptions.BENCHMARK_CORRUPTIONS)
    assert len(implemented) >= 10
    with pytest.raises(KeyError, match="frost"):
        corruptions.corrupt(np.zeros((8, 8, 3), np.uint8), "frost", 1)


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype_and_determinism(name):
    rgb = _textured_images(2, 32, 3, seed=0)
    gray = digits.digits_images(8)[0][:3]
    for images in (rgb, rgb[0], gray, gray[1]):
        out = corruptions.corrupt(images, name, 3, rng=7)
        assert out.shape == images.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, corruptions.corrupt(images, name, 3, rng=7))
    # The public per-type function is the same operation.
    np.testing.assert_array_equal(
        getattr(corruptions, name)(rgb, 2, np.random.default_rng(1)),
        corruptions.corrupt(rgb, name, 2, np.random.default_rng(1)),
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["rgb32", "digits16"])
def test_distortion_grows_with_severity(name, kind):
    if kind == "rgb32":
        images = _textured_images(12, 32, 3, seed=1)
    else:
        images = digits.digits_images(16)[0][:30]
    # The same seed at every severity, so random corruptions differ only in strength.
    errors = [_mse(corruptions.corrupt(images, name, s, rng=123), images) for s in range(1, 6)]
    assert all(b >= a for a, b in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] > 0, errors


def test_noise_differs_between_seeds_and_within_a_batch():
    image = _textured_images(1, 32, 3, seed=2)[0]
    a = corruptions.gaussian_noise(image, 3, rng=1)
    b = corruptions.gaussian_noise(image, 3, rng=2)
    assert not np.array_equal(a, b)
    batch = corruptions.gaussian_noise(np.stack([image, image]), 3, rng=1)
    assert not np.array_equal(batch[0] - image, batch[1] - image)


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="severity"):
        corruptions.corrupt(np.zeros((8, 8, 3), np.uint8), "contrast", 6)
    with pytest.raises(ValueError, match="uint8"):
        corruptions.corrupt(np.zeros((8, 8, 3), np.float32), "contrast", 1)
    with pytest.raises(ValueError, match="uint8"):
        corruptions.corrupt(np.zeros((8, 8, 2), np.uint8), "contrast", 1)


def _write_cifar_c(folder, corruption: str, n: int = 4):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8)
    labels = np.tile(np.arange(n) % 10, 5).astype(np.int64)
    folder.mkdir(exist_ok=True)
    np.save(folder / f"{corruption}.npy", images)
    np.save(folder / "labels.npy", labels)
    return images, labels


def test_reads_official_cifar_c_by_severity(tmp_path):
    images, labels = _write_cifar_c(tmp_path, "fog")
    got, got_labels = corrupted.read_cifar_c(tmp_path, "fog", 3)
    np.testing.assert_array_equal(got, images[8:12])
    np.testing.assert_array_equal(got_labels, labels[8:12])
    ds = datasets.load_corrupted("cifar10", "fog", 3, corrupted_dir=tmp_path)
    assert len(ds) == 4 and ds.num_classes == 10
    image, label = ds[1]
    assert image.shape == (3, 32, 32) and label.item() == labels[9]
    # frost is readable from the release even though it cannot be generated; the folder
    # holding the extracted CIFAR-100-C/ works as corrupted_dir too.
    _write_cifar_c(tmp_path / "CIFAR-100-C", "frost")
    assert len(datasets.load_corrupted("cifar100", "frost", 5, corrupted_dir=tmp_path)) == 4


def test_official_cifar_c_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="snow.npy"):
        corrupted.read_cifar_c(tmp_path, "snow", 1)
    np.save(tmp_path / "snow.npy", np.zeros((10, 32, 32, 3), np.float32))
    np.save(tmp_path / "labels.npy", np.zeros(10, np.int64))
    with pytest.raises(ValueError, match="snow.npy"):
        corrupted.read_cifar_c(tmp_path, "snow", 1)
    np.save(tmp_path / "snow.npy", np.zeros((10, 32, 32, 3), np.uint8))
    np.save(tmp_path / "labels.npy", np.zeros(7, np.int64))
    with pytest.raises(ValueError, match="labels.npy"):
        corrupted.read_cifar_c(tmp_path, "snow", 1)
    # A .npy holding pickled objects is refused, not unpickled.
    np.save(tmp_path / "labels.npy", np.array([object()] * 10, dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="labels.npy"):
        corrupted.read_cifar_c(tmp_path, "snow", 1)


def test_digits_corrupted_on_the_fly_is_deterministic_and_corrupted():
    a = datasets.load_corrupted("digits", "impulse_noise", 5, corruption_seed=4)
    b = datasets.load_corrupted("digits", "impulse_noise", 5, corruption_seed=4)
    c = datasets.load_corrupted("digits", "impulse_noise", 5, corruption_seed=5)
    clean = datasets.load_image_dataset("digits", split="test")
    assert len(a) == len(clean) and a.num_classes == 10
    for i in (0, 17):
        assert torch.equal(a[i][0], b[i][0])
        assert not torch.equal(a[i][0], c[i][0])
        assert not torch.equal(a[i][0], clean[i][0])
        assert a[i][1] == clean[i][1]
    with pytest.raises(ValueError, match="frost"):
        datasets.load_corrupted("digits", "frost", 1)
    with pytest.raises(ValueError, match="official"):
        datasets.load_corrupted("digits", "fog", 1, corrupted_dir="/nonexistent")
