"""Score one feature folder with another folder's normaliser: a model's view of a new cohort.

A feature folder (``features.mimic.extract``) stores its grid raw and the normaliser fitted
on its own training split in ``manifest.json``; ``features.mimic.loader.load_split``
applies that folder's own statistics. That is right for training, and wrong for scoring a
model on a different cohort (another site, a shifted population): the model was fitted to
inputs z-scored with its *training* folder's statistics, and refitting them on the new
cohort would quietly remove exactly the shift one wants to measure (a site whose values
all read lower would be re-centred to look like the training site).

:func:`load_normalised_as` loads a folder's stays and labels with a reference folder's
normaliser (``features.mimic.loader.load_for_scoring`` with that folder's statistics, after
checking that both folders have the same channels). Because the grid on disk is raw,
nothing has to be undone: the reference statistics are applied to the raw values directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import torch

from features.mimic.loader import load_for_scoring
from features.mimic.manifest import MANIFEST_FILE, FeatureFolderError, load_manifest


def load_normalised_as(
    feature_dir: str | os.PathLike,
    reference_dir: str | os.PathLike,
    *,
    split: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, pl.DataFrame]:
    """Load a folder's stays z-scored with another folder's (the training folder's) statistics.

    Args:
        feature_dir: The feature folder to score (e.g. a shifted cohort).
        reference_dir: The feature folder whose normaliser the model was trained with.
        split: ``"train"``, ``"val"`` or ``"test"`` of ``feature_dir``; None for every stay.

    Returns:
        ``(x, y, stays)`` as ``features.mimic.loader.load_split`` returns them: ``x`` float32
        (N, hours, channels), ``y`` float32 (N,) labels, ``stays`` the matching rows of
        ``feature_dir``'s ``stays.parquet`` in the same order.

    Raises:
        FeatureFolderError: One line naming the manifest if the two folders' channels or
            hours differ (the model would read columns it was not trained on), or naming a
            file that is missing or disagrees with the manifest.
        ValueError: If ``split`` is not None or one of the three splits.
    """
    folder = Path(feature_dir)
    manifest = load_manifest(folder)
    reference = load_manifest(reference_dir)
    if manifest.channels != reference.channels or manifest.hours != reference.hours:
        raise FeatureFolderError(
            f"{folder / MANIFEST_FILE}: channels or hours differ from those of "
            f"{Path(reference_dir) / MANIFEST_FILE}; both folders must be extracted the same way"
        )
    x, part = load_for_scoring(folder, reference.normaliser, split=split)
    y = part["label"].to_numpy().astype(np.float32)
    return x, torch.from_numpy(y), part
