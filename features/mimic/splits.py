"""Subject-level train/validation/test splits, deterministic from a seed.

All stays of a subject land in the same split, so no patient is in two splits. The
subjects are sorted, shuffled with ``numpy.random.default_rng(seed)`` and cut into test,
validation and train shares; the same subjects and seed always give the same split.
"""

from __future__ import annotations

import numpy as np
import polars as pl

SPLITS = ("train", "val", "test")


def check_split_fractions(val_fraction: float, test_fraction: float) -> None:
    """Check the split shares of a feature folder before any work is done.

    Training needs a validation split (model selection and temperature scaling) and the
    report a test split, so each share must be above 0 and below 1, and together they
    must leave subjects for training.

    Args:
        val_fraction: Share of subjects in validation.
        test_fraction: Share of subjects in test.

    Raises:
        ValueError: One line naming the argument(s) that are out of range.
    """
    bad = [
        f"{name}={value!r}"
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction))
        if not 0.0 < value < 1.0  # also rejects NaN
    ]
    if bad:
        raise ValueError(
            f"{' and '.join(bad)}: each split share must be > 0 and < 1 (training needs a "
            "validation split, the report a test split)"
        )
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"val_fraction={val_fraction!r} and test_fraction={test_fraction!r} must sum to "
            "less than 1 to leave subjects for training"
        )


def assign_splits(
    subject_ids: np.ndarray | list[int],
    *,
    seed: int = 0,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> dict[int, str]:
    """Map each distinct subject id to ``"train"``, ``"val"`` or ``"test"``.

    Args:
        subject_ids: Subject ids (repeats allowed).
        seed: Seed of the shuffle.
        val_fraction: Share of subjects in validation.
        test_fraction: Share of subjects in test.

    Returns:
        ``{subject_id: split}``; test and validation get ``round(n * fraction)`` subjects.

    Raises:
        ValueError: If the fractions are negative or leave no training subjects.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(
            f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 "
            "and sum to less than 1"
        )
    subjects = np.unique(np.asarray(subject_ids, dtype=np.int64))
    shuffled = np.random.default_rng(seed).permutation(subjects)
    n_test = int(round(len(subjects) * test_fraction))
    n_val = int(round(len(subjects) * val_fraction))
    out: dict[int, str] = {}
    for position, subject in enumerate(shuffled.tolist()):
        if position < n_test:
            out[subject] = "test"
        elif position < n_test + n_val:
            out[subject] = "val"
        else:
            out[subject] = "train"
    return out


def split_column(stays: pl.DataFrame, assignment: dict[int, str]) -> pl.Series:
    """The split of each stay row, looked up by its ``subject_id``."""
    return stays["subject_id"].replace_strict(assignment, return_dtype=pl.String).alias("split")
