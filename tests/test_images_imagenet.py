"""ImageNet folder reader, Pillow transforms, DataLoader workers, ImageNet-C folders."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from features.images import datasets, imagenet, transforms

WNIDS = ("n01440764", "n01443537", "n01484850")


def _write_image(path, size, seed, fmt):
    rng = np.random.default_rng(seed)
    w, h = size
    # A left-to-right ramp plus noise: content differs across the image, so crops differ.
    ramp = np.linspace(0, 200, w)[None, :, None] * np.ones((h, 1, 3))
    arr = np.clip(ramp + rng.integers(0, 50, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path, format=fmt)


@pytest.fixture
def imagenet_root(tmp_path):
    sizes = [(300, 260), (260, 340), (280, 280)]
    for split, per_class in (("train", 3), ("val", 2)):
        for c, wnid in enumerate(WNIDS):
            folder = tmp_path / split / wnid
            folder.mkdir(parents=True)
            for i in range(per_class):
                fmt, ext = ("JPEG", "JPEG") if i % 2 == 0 else ("PNG", "png")
                _write_image(folder / f"{wnid}_{i}.{ext}", sizes[(c + i) % 3], 10 * c + i, fmt)
    (tmp_path / "train" / WNIDS[0] / "notes.txt").write_text("not an image")
    return tmp_path


def test_lists_images_with_sorted_class_indices(imagenet_root):
    classes = imagenet.find_classes(imagenet_root / "train")
    assert classes == sorted(WNIDS)
    samples = imagenet.list_images(imagenet_root / "train", classes)
    assert len(samples) == 9  # the .txt file is skipped
    assert [label for _, label in samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    (imagenet_root / "val" / "n99999999").mkdir()
    with pytest.raises(ValueError, match="n99999999"):
        imagenet.list_images(imagenet_root / "val", classes)


def test_eval_transform_resizes_shorter_side_then_centre_crops():
    arr = np.zeros((300, 400, 3), np.uint8)
    arr[:, 200:] = 255  # right half white
    out = transforms.imagenet_eval_transform(Image.fromarray(arr))
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # Resized to 256x341: the boundary sits at column 170.5, i.e. 112 in the 224 crop
    # (which starts at column 58).
    assert out[:, :110].max() == 0 and out[:, 115:].min() == 255
    small = transforms.resize_shorter_side(Image.fromarray(arr), 256)
    assert small.size == (341, 256)


def test_random_resized_crop_respects_area_and_aspect_bounds():
    rng = np.random.default_rng(0)
    img = Image.fromarray(np.zeros((200, 300, 3), np.uint8))
    out = transforms.random_resized_crop(img, rng, 224)
    assert out.size == (224, 224)
    # With the full area and a square aspect the only valid box on a square image is the
    # whole image, so the crop equals a plain resize.
    square = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), np.uint8))
    whole = transforms.random_resized_crop(square, rng, 32, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_array_equal(
        np.asarray(whole), np.asarray(square.resize((32, 32), Image.Resampling.BILINEAR))
    )


def test_imagenet_dataset_eval_and_train_items(imagenet_root):
    test = datasets.load_image_dataset("imagenet", imagenet_root, "test")
    assert len(test) == 6 and test.num_classes == 3
    image, label = test[3]
    assert image.shape == (3, 224, 224) and image.dtype == torch.float32
    assert label.dtype == torch.int64 and label.item() == 1
    # Normalised with the ImageNet statistics.
    raw = test.load_uint8(3).astype(np.float32) / 255.0
    expected = (raw - np.array(transforms.IMAGENET_MEAN)) / np.array(transforms.IMAGENET_STD)
    np.testing.assert_allclose(image.numpy(), expected.transpose(2, 0, 1), atol=1e-5)
    # Evaluation is deterministic; training augmentation is not.
    assert torch.equal(test[0][0], test[0][0])
    train = datasets.load_image_dataset("imagenet", imagenet_root, "train", train_augment=True)
    train.rng = transforms.WorkerRNG(0)
    views = [train[0][0] for _ in range(4)]
    assert all(v.shape == (3, 224, 224) for v in views)
    assert not all(torch.equal(views[0], v) for v in views[1:])


def test_dataloader_workers_get_distinct_seeded_augmentation(imagenet_root):
    ds = datasets.load_image_dataset(
        "imagenet", imagenet_root, "train", train_augment=True, image_size=32, augment_seed=5
    )
    assert pickle.loads(pickle.dumps(ds)).samples == ds.samples

    def run():
        torch.manual_seed(0)
        # The same item index read by both workers, so any difference comes from the RNG.
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(ds, [0, 0, 0, 0]), batch_size=2, num_workers=2
        )
        return [images for images, _ in loader]

    first, second = run(), run()
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)  # reproducible under torch.manual_seed
    # Batch 0 comes from worker 0 and batch 1 from worker 1: their streams must differ.
    assert not torch.equal(first[0], first[1])


def test_imagenet_validation_holdout_and_corruptions(imagenet_root, tmp_path):
    val = datasets.load_image_dataset("imagenet", imagenet_root, "val", val_fraction=1 / 3)
    train = datasets.load_image_dataset("imagenet", imagenet_root, "train", val_fraction=1 / 3)
    assert len(val) == 3 and len(train) == 6
    assert not {p for p, _ in val.samples} & {p for p, _ in train.samples}

    generated = datasets.load_corrupted("imagenet", "contrast", 5, data_dir=imagenet_root)
    clean = datasets.load_image_dataset("imagenet", imagenet_root, "test")
    corrupted_img = generated.load_uint8(0).astype(float)
    clean_img = clean.load_uint8(0).astype(float)
    assert corrupted_img.std() < 0.5 * clean_img.std()  # contrast 0.15 at severity 5

    # Official ImageNet-C layout: <root>/<corruption>/<severity>/<wnid>/*.JPEG, 224x224.
    c_root = tmp_path / "imagenet-c"
    for i, wnid in enumerate(WNIDS[:2]):
        folder = c_root / "frost" / "2" / wnid
        folder.mkdir(parents=True)
        _write_image(folder / "a.JPEG", (224, 224), i, "JPEG")
    official = datasets.load_corrupted(
        "imagenet", "frost", 2, data_dir=imagenet_root, corrupted_dir=c_root
    )
    assert len(official) == 2 and official.num_classes == 3
    assert [label for _, label in official.samples] == [0, 1]
    assert official[1][0].shape == (3, 224, 224)
    with pytest.raises(FileNotFoundError, match="frost/3"):
        datasets.load_corrupted("imagenet", "frost", 3, corrupted_dir=c_root)


def test_unreadable_image_names_the_file(imagenet_root):
    bad = imagenet_root / "val" / WNIDS[0] / "broken.JPEG"
    bad.write_bytes(b"not a jpeg")
    ds = datasets.load_image_dataset("imagenet", imagenet_root, "test")
    index = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(OSError, match="broken.JPEG"):
        ds[index]


def test_decompression_bomb_names_the_file(imagenet_root, monkeypatch):
    # Pillow refuses images over twice MAX_IMAGE_PIXELS; lower it rather than write a bomb.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    ds = datasets.load_image_dataset("imagenet", imagenet_root, "test")
    with pytest.raises(OSError, match=r"cannot read image .*\.(JPEG|png): .*decompression bomb"):
        ds[0]
