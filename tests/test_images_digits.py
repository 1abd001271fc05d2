"""Built-in digits dataset: splits, scaling, tensors, and the common entry point."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from features.images import datasets, digits, transforms


def test_native_images_are_scaled_to_0_255():
    images, labels = digits.digits_images(8)
    raw = load_digits()
    assert images.shape == (1797, 8, 8, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[..., 0], np.rint(raw.images * 255 / 16).astype(np.uint8))
    np.testing.assert_array_equal(labels, raw.target)
    up, _ = digits.digits_images(16)
    assert up.shape == (1797, 16, 16, 1) and up.max() == 255


def test_splits_are_deterministic_stratified_and_disjoint():
    a = digits.load_digits_splits(seed=0)
    b = digits.load_digits_splits(seed=0)
    c = digits.load_digits_splits(seed=1)
    np.testing.assert_array_equal(a.test_images, b.test_images)
    np.testing.assert_array_equal(a.train_labels, b.train_labels)
    assert not np.array_equal(a.test_labels, c.test_labels)
    assert (len(a.train_labels), len(a.val_labels), len(a.test_labels)) == (1257, 180, 360)
    # Stratified: every class has about its overall share in each split.
    overall = np.bincount(load_digits().target) / 1797
    for labels in (a.train_labels, a.val_labels, a.test_labels):
        share = np.bincount(labels, minlength=10) / len(labels)
        assert np.abs(share - overall).max() < 0.02
    rows = [
        {r.tobytes() + bytes([int(y)]) for r, y in zip(imgs, lab, strict=True)}
        for imgs, lab in (a.split("train"), a.split("val"), a.split("test"))
    ]
    total = sum(len(r) for r in rows)
    assert len(rows[0] | rows[1] | rows[2]) == total  # no image in two splits
    assert 0 < a.mean[0] < 1 and 0 < a.std[0] < 1


def test_tensor_conversion_normalises_nchw():
    s = digits.load_digits_splits()
    x = transforms.images_to_tensor(s.train_images, s.mean, s.std)
    assert x.shape == (1257, 1, 16, 16) and x.dtype == torch.float32
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    expected = (s.train_images[5, :, :, 0] / 255.0 - s.mean[0]) / s.std[0]
    np.testing.assert_allclose(x[5, 0].numpy(), expected, atol=1e-5)


def test_entry_point_digits_with_augmentation_and_dataloader():
    ds = datasets.load_image_dataset("digits", split="train", train_augment=True, augment_seed=0)
    assert ds.num_classes == datasets.num_classes("digits") == 10 and len(ds) == 1257
    view = ds.load_uint8(3)
    padded = np.pad(ds.images[3], ((2, 2), (2, 2), (0, 0)))
    # A digit is shifted, never flipped (a flipped 2 is not a 2).
    assert any(
        np.array_equal(view, padded[t : t + 16, s : s + 16]) for t in range(5) for s in range(5)
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True)
    images, labels = next(iter(loader))
    assert images.shape == (64, 1, 16, 16) and labels.dtype == torch.int64
    native = datasets.load_image_dataset("digits", split="val", image_size=8)
    assert native[0][0].shape == (1, 8, 8) and len(native) == 180


def test_entry_point_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown image dataset"):
        datasets.load_image_dataset("mnist")
    with pytest.raises(ValueError, match="split"):
        datasets.load_image_dataset("digits", split="holdout")
    with pytest.raises(ValueError, match="severity"):
        datasets.load_corrupted("digits", "fog", 0)
