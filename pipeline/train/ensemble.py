"""Deep ensembles: K deterministic models, each trained by :func:`~pipeline.train.fit`."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from torch import nn

from pipeline.config import TrainConfig
from pipeline.objective import Likelihood
from pipeline.train.batches import Data
from pipeline.train.loop import FitResult, fit
from pipeline.train.state import seed_everything
from rank1.models import DeepEnsemble


def fit_ensemble(
    make_model: Callable[[], nn.Module],
    train: Data,
    val: Data | None,
    *,
    likelihood: Likelihood,
    n_train: int,
    config: TrainConfig,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[DeepEnsemble, list[FitResult]]:
    """Train ``config.ensemble_size`` deterministic models independently (a deep ensemble).

    Member k is created and trained under seed ``config.seed + k`` (different weights,
    data order and noise), each with the full schedule and its own best checkpoint.

    Args:
        make_model: Builds one untrained deterministic model (called under member k's seed).
        train: As in :func:`~pipeline.train.fit`.
        val: As in :func:`~pipeline.train.fit`.
        likelihood: As in :func:`~pipeline.train.fit`.
        n_train: As in :func:`~pipeline.train.fit`.
        config: The shared config (never changed); ``ensemble_size`` members are trained.
        checkpoint_dir: Member k checkpoints into ``checkpoint_dir/m<k>``.
        resume: As in :func:`~pipeline.train.fit`, per member.
        progress: As in :func:`~pipeline.train.fit`.
        on_eval: Called with ``(step, metrics)``; metrics carry ``member`` = k.

    Returns:
        The :class:`~rank1.models.DeepEnsemble` and each member's :class:`FitResult`.
    """
    members, results = [], []
    for member in range(config.ensemble_size):
        member_config = config.replace(seed=config.seed + member)
        seed_everything(member_config.seed)
        model = make_model()
        callback = None
        if on_eval is not None:

            def callback(step, record, member=member):
                on_eval(step, {**record, "member": float(member)})

        result = fit(
            model, train, val, likelihood=likelihood, n_train=n_train, config=member_config,
            ensemble_size=1,
            checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir) / f"m{member}",
            resume=resume, progress=progress, on_eval=callback,
        )  # fmt: skip
        members.append(result.model)
        results.append(result)
    return DeepEnsemble(members), results
