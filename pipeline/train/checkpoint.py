"""Checkpoint files: atomic owner-only writes, loads that never unpickle objects."""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from features.io import make_private_dir, write_private_bytes

CHECKPOINT_FILE = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint file cannot be loaded; the message names the file on one line."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` atomically, owner-only (weights fit patient data).

    A missing folder is created owner-only (0700) too.
    """
    make_private_dir(Path(path).parent)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_private_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; never unpickles objects.

    Raises:
        OSError: When the file cannot be read.
        CheckpointError: When the file is not a complete ``torch.save`` archive or holds
            objects other than tensors, numbers, strings and containers (which
            ``weights_only=True`` refuses to build).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's text suggests weights_only=False, i.e. running the file's code: never.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:
            raise CheckpointError(
                f"{path}: not a readable checkpoint (not a torch.save file)"
            ) from None
        raise CheckpointError(
            f"{path}: refused: it holds an object of {found.group(1)}, which a checkpoint of "
            "this project never contains (only tensors, numbers, strings and containers); "
            "delete it or use another checkpoint folder"
        ) from None
    except (RuntimeError, EOFError) as err:
        # torch's zip reader reports truncated or foreign archives as RuntimeError.
        reason = str(err).split(".")[0] or type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None


def cpu_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """A detached CPU copy of ``model.state_dict()`` (safe to keep while training goes on)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def config_diff(old: dict, new: dict, prefix: str = "") -> str:
    """``"a.b: old -> new, ..."`` for every leaf that differs between two nested dicts."""
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = config_diff(a, b, f"{prefix}{key}.")
            if inner:
                changed.append(inner)
        elif a != b:
            changed.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return ", ".join(changed)
