"""CIFAR readers: official python-version layout, restricted unpickling, dataset entry point."""

from __future__ import annotations

import builtins
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from features.images import cifar, datasets, transforms


def _batch(rng: np.random.Generator, n: int, n_classes: int, label_key: bytes) -> dict:
    return {
        b"batch_label": b"training batch",
        label_key: [int(v) for v in rng.integers(0, n_classes, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(n)],
    }


def _dump(obj: object, path: Path) -> None:
    # Protocol 4 stores bytes natively and numpy arrays through _reconstruct, like the
    # Python-2 originals (protocol 2 in Python 3 would route bytes through _codecs.encode).
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=4)


def write_cifar10(root: Path, per_batch: int = 6, seed: int = 0) -> Path:
    folder = root / cifar.CIFAR10_DIRNAME
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(1, 6):
        _dump(_batch(rng, per_batch, 10, b"labels"), folder / f"data_batch_{i}")
    _dump(_batch(rng, per_batch, 10, b"labels"), folder / "test_batch")
    names = [f"class{i}".encode() for i in range(10)]
    _dump({b"label_names": names, b"num_cases_per_batch": per_batch}, folder / "batches.meta")
    return folder


def write_cifar100(root: Path, n_train: int = 12, n_test: int = 5) -> Path:
    folder = root / cifar.CIFAR100_DIRNAME
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, n in (("train", n_train), ("test", n_test)):
        record = _batch(rng, n, 100, b"fine_labels")
        record[b"coarse_labels"] = [int(v) for v in rng.integers(0, 20, n)]
        _dump(record, folder / name)
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    _dump(meta, folder / "meta")
    return folder


class _SystemCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalCall:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))


def test_reads_cifar10_in_official_layout(tmp_path):
    folder = write_cifar10(tmp_path)
    raw = pickle.loads((folder / "data_batch_1").read_bytes())
    train = cifar.read_cifar10(tmp_path, train=True)
    test = cifar.read_cifar10(folder, train=False)  # the folder itself works too
    assert train.images.shape == (30, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64 and train.labels.shape == (30,)
    assert test.images.shape == (6, 32, 32, 3)
    assert train.class_names[3] == "class3"
    # Row layout: 1024 red values, then green, then blue, each plane row-major.
    row = raw[b"data"][0]
    assert train.images[0, 0, 0].tolist() == [row[0], row[1024], row[2048]]
    assert train.images[0, 1, 2, 1] == row[1024 + 32 + 2]
    assert train.labels[:6].tolist() == raw[b"labels"]


def test_reads_cifar100_fine_labels(tmp_path):
    write_cifar100(tmp_path)
    train = cifar.read_cifar100(tmp_path, train=True)
    test = cifar.read_cifar100(tmp_path, train=False)
    raw = pickle.loads((tmp_path / cifar.CIFAR100_DIRNAME / "train").read_bytes())
    assert train.images.shape == (12, 32, 32, 3) and test.images.shape == (5, 32, 32, 3)
    assert train.labels.tolist() == raw[b"fine_labels"]
    assert len(train.class_names) == 100


@pytest.mark.parametrize("payload", [_SystemCall, _EvalCall])
def test_malicious_pickle_is_rejected_without_side_effect(tmp_path, payload):
    folder = write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    evil = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [payload(marker)]}
    _dump(evil, folder / "data_batch_3")
    with pytest.raises(cifar.UnsafePickleError) as err:
        cifar.read_cifar10(tmp_path, train=True)
    message = str(err.value)
    assert "data_batch_3" in message
    assert ("posix.system" in message) or ("builtins.eval" in message)
    assert not marker.exists()


def test_unpickler_rejects_other_numpy_globals(tmp_path):
    # numpy's own reducers are not all harmless to admit; only the four listed are allowed.
    path = tmp_path / "obj"
    _dump({b"data": np.zeros(3, np.uint8), b"f": np.add}, path)
    with pytest.raises(cifar.UnsafePickleError, match="numpy"):
        cifar.load_pickle_restricted(path)


def test_missing_files_and_bad_shapes_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        cifar.read_cifar10(tmp_path, train=True)
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        cifar.read_cifar10(tmp_path, train=True)
    _dump({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, folder / "data_batch_4")
    with pytest.raises(ValueError, match=r"data_batch_4.*3072"):
        cifar.read_cifar10(tmp_path, train=True)
    _dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, folder / "data_batch_4")
    with pytest.raises(ValueError, match="data_batch_4"):
        cifar.read_cifar10(tmp_path, train=True)
    (folder / "data_batch_4").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_4"):
        cifar.read_cifar10(tmp_path, train=True)


def test_load_image_dataset_cifar_normalises_and_augments(tmp_path):
    write_cifar10(tmp_path)
    clean = datasets.load_image_dataset("cifar10", tmp_path, "train")
    assert len(clean) == 30 and clean.num_classes == 10
    image, label = clean[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label.dtype == torch.int64
    raw = clean.images[0].astype(np.float32) / 255.0
    expected = (raw - np.array(transforms.CIFAR_MEAN)) / np.array(transforms.CIFAR_STD)
    np.testing.assert_allclose(image.numpy(), expected.transpose(2, 0, 1), atol=1e-5)

    aug = datasets.load_image_dataset("cifar10", tmp_path, "train", train_augment=True)
    aug.rng = transforms.WorkerRNG(0)
    # Every augmented view is a shifted (maybe flipped) copy inside a zero-padded frame.
    views = [aug.load_uint8(0) for _ in range(20)]
    assert any(not np.array_equal(v, clean.images[0]) for v in views)
    padded = np.pad(clean.images[0], ((4, 4), (4, 4), (0, 0)))
    for v in views:
        windows = [
            padded[t : t + 32, s : s + 32][:, ::f]
            for t in range(9)
            for s in range(9)
            for f in (1, -1)
        ]
        assert any(np.array_equal(v, w) for w in windows)
    assert aug[0][0].shape == (3, 32, 32)


def test_cifar_validation_holdout_is_seeded_and_disjoint(tmp_path):
    write_cifar100(tmp_path, n_train=40)
    with pytest.raises(ValueError, match="val_fraction"):
        datasets.load_image_dataset("cifar100", tmp_path, "val")
    train = datasets.load_image_dataset("cifar100", tmp_path, "train", val_fraction=0.25, seed=3)
    val = datasets.load_image_dataset("cifar100", tmp_path, "val", val_fraction=0.25, seed=3)
    again = datasets.load_image_dataset("cifar100", tmp_path, "val", val_fraction=0.25, seed=3)
    assert len(train) == 30 and len(val) == 10 and val.num_classes == 100
    np.testing.assert_array_equal(val.images, again.images)
    full = cifar.read_cifar100(tmp_path, train=True).images.reshape(40, -1)
    rows = {r.tobytes() for r in full}
    train_rows = {r.tobytes() for r in train.images.reshape(30, -1)}
    val_rows = {r.tobytes() for r in val.images.reshape(10, -1)}
    assert not train_rows & val_rows and train_rows | val_rows == rows


def test_missing_data_dir_says_where_to_put_files():
    with pytest.raises(FileNotFoundError) as err:
        datasets.load_image_dataset("cifar10")
    assert "cifar-10-batches-py" in str(err.value) and "Nothing is downloaded" in str(err.value)
    with pytest.raises(FileNotFoundError, match="train/<wnid>"):
        datasets.load_image_dataset("imagenet", split="test")


def test_corrupted_cifar_generated_on_the_fly_is_deterministic(tmp_path):
    write_cifar10(tmp_path)
    a = datasets.load_corrupted("cifar10", "gaussian_noise", 3, data_dir=tmp_path)
    b = datasets.load_corrupted("cifar10", "gaussian_noise", 3, data_dir=tmp_path)
    clean = datasets.load_image_dataset("cifar10", tmp_path, "test")
    assert len(a) == 6
    for i in (0, 5):
        assert torch.equal(a[i][0], b[i][0])
        assert not torch.equal(a[i][0], clean[i][0])
        assert a[i][1] == clean[i][1]


def _py2_batch_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way Python 2 cPickle wrote the official files (protocol 2).

    Python 3 cannot write these opcodes for bytes, so they are assembled by hand: keys and
    the array buffer are 8-bit strings (BINSTRING), and the array is rebuilt through
    ``numpy.core.multiarray._reconstruct``, numpy 1.x's module name.
    """

    def s(b: bytes) -> bytes:  # SHORT_BINSTRING or BINSTRING
        if len(b) < 256:
            return b"U" + bytes([len(b)]) + b
        return b"T" + len(b).to_bytes(4, "little") + b

    n, width = data.shape
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\n"
        + b"cnumpy\nndarray\n"
        + b"K\x00\x85"  # (0,)
        + s(b"b")
        + b"\x87R"  # TUPLE3, REDUCE
        + b"(K\x01"  # MARK, version 1
        + b"M"
        + n.to_bytes(2, "little")
        + b"M"
        + width.to_bytes(2, "little")
        + b"\x86"  # shape tuple
        + b"cnumpy\ndtype\n"
        + s(b"u1")
        + b"\x89\x88\x87R"  # (u1, False, True), REDUCE
        + b"(K\x03"
        + s(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # dtype state, BUILD
        + b"\x89"  # not Fortran order
        + s(data.tobytes())
        + b"tb"  # state tuple, BUILD
    )
    label_ops = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return b"\x80\x02}(" + s(b"data") + array + s(b"labels") + label_ops + b"u."


def test_reads_python2_pickles_like_the_official_files(tmp_path):
    folder = write_cifar10(tmp_path)
    rng = np.random.default_rng(5)
    data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
    (folder / "test_batch").write_bytes(_py2_batch_pickle(data, [7, 0, 9]))
    test = cifar.read_cifar10(tmp_path, train=False)
    assert test.labels.tolist() == [7, 0, 9]
    np.testing.assert_array_equal(test.images, data.reshape(3, 3, 32, 32).transpose(0, 2, 3, 1))
