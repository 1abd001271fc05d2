"""Resuming a flow's training from its checkpoint folder, only when the checkpoint fits.

A training task checkpoints into ``<checkpoint_dir>/<method>`` and records beside it, in
:data:`RESUME_FILE`, the fingerprint of the training (:func:`training_key`) and whether it
finished. :func:`plan_resume` then decides whether a rerun (or a retry) continues from the
checkpoint or trains afresh; :func:`mark_complete` records the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from features.io import write_private_text

#: Beside the checkpoint: which training it belongs to and whether that training finished.
RESUME_FILE = "resume.json"


@dataclasses.dataclass(frozen=True)
class ResumePlan:
    """How a training task uses its checkpoint folder.

    Attributes:
        key: Fingerprint of the training (config, layer sizes, experiment, feature folder).
        resume: Whether to continue from the checkpoint in the folder.
        reason: Why, for the log.
    """

    key: str
    resume: bool
    reason: str


def training_key(config: Any, model_config: Any, features_dir: Path, experiment: str) -> str:
    """Fingerprint of one training: same key, same trajectory, so its checkpoint fits.

    Covers the full ``TrainConfig``, the LSTM's layer sizes, the MLflow experiment and the
    feature folder's ``manifest.json`` (source-table hashes, split, normaliser, creation
    time: a re-extraction changes it even from the same tables).
    """
    manifest = (features_dir / "manifest.json").read_bytes()
    recipe = {
        "train": config.to_dict(),
        "model": dataclasses.asdict(model_config),
        "experiment": experiment,
        "features_manifest_sha256": hashlib.sha256(manifest).hexdigest(),
    }
    text = json.dumps(recipe, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _checkpoint_files(folder: Path) -> list[Path]:
    from pipeline.train import CHECKPOINT_FILE

    # One model: folder/checkpoint.pt; a deep ensemble: folder/m<k>/checkpoint.pt.
    return [p for p in (folder / CHECKPOINT_FILE, *folder.glob(f"m*/{CHECKPOINT_FILE}"))
            if p.is_file()]  # fmt: skip


def _read_resume_state(folder: Path) -> dict[str, Any]:
    try:
        state = json.loads((folder / RESUME_FILE).read_text("utf-8"))
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: start afresh
    return state if isinstance(state, dict) else {}


def plan_resume(folder: Path, key: str) -> ResumePlan:
    """Decide whether a training with fingerprint ``key`` resumes from ``folder``.

    It resumes only from an unfinished checkpoint of the same key. Otherwise the folder's
    old checkpoints are deleted (so a later resume cannot pick up another training's
    weights) and ``key`` is recorded before training starts. A finished training is not
    resumed: rerunning it trains afresh into a new MLflow run.
    """
    state = _read_resume_state(folder)
    checkpoints = _checkpoint_files(folder)
    if state.get("key") == key and not state.get("complete") and checkpoints:
        return ResumePlan(key, True, "resuming an interrupted training of the same config")
    if state.get("key") == key and state.get("complete"):
        reason = f"the last training of this config finished (MLflow run {state.get('run_id')})"
    elif checkpoints:
        reason = "the checkpoint is of another config or feature folder"
    else:
        reason = "no checkpoint yet"
    for path in checkpoints:
        path.unlink()
    write_private_text(folder / RESUME_FILE, json.dumps({"key": key, "complete": False}))
    return ResumePlan(key, False, f"training afresh: {reason}")


def mark_complete(folder: Path, key: str, run_id: str) -> None:
    """Record that the training of ``key`` finished into MLflow run ``run_id``."""
    state = {"key": key, "complete": True, "run_id": run_id}
    write_private_text(folder / RESUME_FILE, json.dumps(state))
