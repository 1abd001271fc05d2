"""The patient-data guard and the flattening of configs into MLflow params."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from enum import Enum
from pathlib import PurePath
from typing import Any

# Matched case-insensitively anywhere in a key. String values are checked for the
# identifier column names only: free text such as "predicts patient mortality" is fine.
PATIENT_ID_MARKERS = ("subject_id", "hadm_id", "icustay_id", "stay_id", "patient")
_ID_VALUE_MARKERS = PATIENT_ID_MARKERS[:-1]
_PATIENT_RE = re.compile("|".join(re.escape(m) for m in PATIENT_ID_MARKERS), re.IGNORECASE)
_ID_VALUE_RE = re.compile("|".join(re.escape(m) for m in _ID_VALUE_MARKERS), re.IGNORECASE)
# Configuration lists are short; a longer sequence is more likely a column of patient data.
MAX_SEQUENCE_LENGTH = 64


def _looks_like_patient_data(value: Any) -> str | None:
    """Reason why a value looks like patient data, or None."""
    if isinstance(value, str):
        return "it mentions a patient identifier" if _ID_VALUE_RE.search(value) else None
    size = getattr(value, "size", None)
    if callable(getattr(value, "numel", None)):
        size = value.numel()
    if hasattr(value, "shape") and isinstance(size, int) and size > 1:
        return f"it is an array of {size} values"
    if isinstance(value, list | tuple | set | frozenset):
        if len(value) > MAX_SEQUENCE_LENGTH:
            return f"it is a sequence of {len(value)} values"
        for item in value:
            reason = _looks_like_patient_data(item)
            if reason:
                return reason
    return None


def check_no_patient_data(mapping: Mapping[str, Any], kind: str = "params") -> None:
    """Refuse keys or values that look like patient identifiers or per-patient data.

    Args:
        mapping: params, metrics or tags about to be sent to MLflow.
        kind: what the mapping is, used in the error message.

    Raises:
        ValueError: naming the offending key.
    """
    for key, value in mapping.items():
        if _PATIENT_RE.search(str(key)):
            raise ValueError(
                f"refusing to log MLflow {kind} key {key!r}: it looks like a patient "
                f"identifier ({', '.join(PATIENT_ID_MARKERS)}); patient data must never go "
                "into MLflow params, metrics or tags"
            )
        reason = _looks_like_patient_data(value)
        if reason:
            raise ValueError(
                f"refusing to log MLflow {kind} {key!r}: {reason}, which looks like patient "
                "data; write per-patient outputs to the private report instead"
            )


# --------------------------------------------------------------------------- params


def _plain(value: Any) -> Any:
    """Make config leaves printable: enums by value, paths as strings."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, PurePath):
        return str(value)
    return value


def flatten_params(params: Mapping[str, Any] | Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested config (mappings and dataclasses) into dotted keys.

    Args:
        params: a mapping or dataclass instance, possibly nested.
        prefix: key prefix for recursion.

    Returns:
        {'model.hidden': 128, 'optim.lr': 3e-4, ...} with leaf values unchanged except
        enums (their value) and paths (strings).
    """
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        params = {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping or dataclass, got {type(params).__name__}")
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        is_nested = isinstance(value, Mapping) or (
            dataclasses.is_dataclass(value) and not isinstance(value, type)
        )
        if is_nested:
            flat.update(flatten_params(value, name))
        else:
            flat[name] = _plain(value)
    return flat
