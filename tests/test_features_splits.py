"""Subject-level splits: no patient in two splits, deterministic from the seed."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from features.mimic.splits import assign_splits, split_column


def test_every_stay_of_a_subject_is_in_one_split():
    rng = np.random.default_rng(0)
    subjects = rng.integers(1, 400, size=2000)  # many subjects with several stays
    stays = pl.DataFrame({"subject_id": subjects, "icustay_id": np.arange(2000)})
    split = split_column(stays, assign_splits(subjects, seed=3))
    per_subject = (
        stays.with_columns(split).group_by("subject_id").agg(pl.col("split").n_unique().alias("n"))
    )
    assert (per_subject["n"] == 1).all()
    assert set(split.unique().to_list()) == {"train", "val", "test"}


def test_deterministic_and_seed_dependent():
    subjects = np.arange(1000)
    a = assign_splits(subjects, seed=1)
    assert a == assign_splits(subjects[::-1], seed=1)  # input order does not matter
    assert a != assign_splits(subjects, seed=2)


def test_fractions():
    split = assign_splits(np.arange(1000), seed=0, val_fraction=0.1, test_fraction=0.2)
    values = list(split.values())
    assert values.count("test") == 200 and values.count("val") == 100
    assert values.count("train") == 700


@pytest.mark.parametrize("val,test", [(-0.1, 0.2), (0.5, 0.5), (0.7, 0.4)])
def test_bad_fractions(val, test):
    with pytest.raises(ValueError, match="fraction"):
        assign_splits([1, 2, 3], val_fraction=val, test_fraction=test)
