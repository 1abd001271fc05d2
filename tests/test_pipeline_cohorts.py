"""pipeline.cohorts: another feature folder's stays, z-scored with the training folder's stats."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from features.mimic.extract import extract
from features.mimic.loader import FeatureFolderError, load_manifest, load_split
from features.synthetic import generate
from pipeline.cohorts import load_normalised_as


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    # 120 patients are enough for three non-empty splits and cost about a second each.
    root = tmp_path_factory.mktemp("cohorts")
    for name, shift in (("base", None), ("site", "second-site")):
        generate(root / f"mimic-{name}", patients=120, seed=3, shift=shift)
        extract(root / f"mimic-{name}", root / name, seed=3, progress=False)
    return root / "base", root / "site"


def test_own_normaliser_gives_exactly_what_load_split_gives(folders):
    base, _ = folders
    x, y, stays = load_normalised_as(base, base, split="test")
    x_ref, y_ref, stays_ref = load_split(base, "test")
    assert np.array_equal(x.numpy(), x_ref.numpy())
    assert np.array_equal(y.numpy(), y_ref.numpy())
    assert stays.equals(stays_ref)


def test_a_shifted_folder_is_scaled_with_the_reference_statistics_not_its_own(folders):
    base, site = folders
    x, y, stays = load_normalised_as(site, base)  # every stay of the shifted folder
    assert x.shape[0] == stays.height == y.shape[0] == load_manifest(site).stays
    raw = np.load(site / "grid.npy")
    stats = load_manifest(base).normaliser
    expected = (raw - np.asarray(stats.means, np.float32)) / np.asarray(stats.stds, np.float32)
    assert np.allclose(x.numpy(), expected, atol=1e-6)
    # Its own statistics would re-centre the site's lower venous pH; the base ones keep it.
    ph = load_manifest(site).channels.index("pH")
    own, _, _ = load_split(site, "train")
    transferred, _, _ = load_normalised_as(site, base, split="train")
    assert abs(float(own[:, :, ph].mean())) < 0.05
    assert float(transferred[:, :, ph].mean()) < -0.3


def test_folders_with_other_channels_are_refused_in_one_line(folders, tmp_path):
    base, site = folders
    other = tmp_path / "other"
    shutil.copytree(site, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["channels"][0] = "Something else"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeatureFolderError, match="channels or hours differ") as err:
        load_normalised_as(other, base)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="split must be None or one of"):
        load_normalised_as(site, base, split="all")
