"""Temperature scaling of ensemble logits, fitted on the validation split.

Every forward path's logits are divided by one shared temperature T > 0, and T is chosen
to minimise the *mixture* NLL (spec §1.8) of the validation predictions. The search runs
over log T on a bounded interval with scipy's bounded Brent method, so it cannot diverge and
needs no gradient; the NLL is one-dimensional and smooth in log T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy.optimize import minimize_scalar

from pipeline.metrics import (
    DEFAULT_N_BINS,
    as_labels,
    binary_metrics,
    mixture_nll,
    multiclass_metrics,
    to_numpy,
)

# T outside this range means the model is essentially constant or the logits are broken;
# clamping keeps a degenerate validation set from producing an absurd scaler.
DEFAULT_BOUNDS = (0.05, 20.0)


@dataclass(frozen=True)
class TemperatureScaler:
    """A fitted temperature: calibrated logits = member logits / temperature.

    Attributes:
        temperature: T > 0. T > 1 softens over-confident predictions, T < 1 sharpens.
    """

    temperature: float = 1.0

    def __post_init__(self) -> None:
        t = float(self.temperature)
        if not math.isfinite(t) or t <= 0:
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature}")
        object.__setattr__(self, "temperature", t)

    def apply(self, member_logits: Any) -> np.ndarray:
        """Scale logits by 1 / T.

        Args:
            member_logits: shape (M, N) or (M, N, C), numpy or torch.

        Returns:
            float64 numpy array of the same shape.
        """
        return to_numpy(member_logits) / self.temperature

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, saved beside the model."""
        return {"method": "temperature_scaling", "temperature": self.temperature}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TemperatureScaler:
        """Inverse of :meth:`to_dict`; rejects other calibration methods."""
        method = data.get("method", "temperature_scaling")
        if method != "temperature_scaling":
            raise ValueError(f"not a temperature-scaling record: method={method!r}")
        return cls(temperature=float(data["temperature"]))


def fit_temperature(
    member_logits: Any,
    labels: Any,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
) -> TemperatureScaler:
    """Fit T by minimising the mixture NLL of logits / T over log T.

    Args:
        member_logits: validation logits, shape (M, N) or (M, N, C).
        labels: validation labels, shape (N,).
        bounds: (T_min, T_max) searched; the result is clamped to this range.

    Returns:
        The fitted :class:`TemperatureScaler`.
    """
    logits = to_numpy(member_logits)
    y = as_labels(labels)
    if not np.all(np.isfinite(logits)):
        raise ValueError("member logits contain NaN or inf; cannot fit a temperature")
    t_min, t_max = bounds
    if not 0 < t_min < t_max:
        raise ValueError(f"bounds must satisfy 0 < T_min < T_max, got {bounds}")

    def objective(log_t: float) -> float:
        return mixture_nll(logits / math.exp(log_t), y)

    result = minimize_scalar(
        objective,
        bounds=(math.log(t_min), math.log(t_max)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    log_t = float(result.x)
    # Brent's method may stop just short of a better endpoint or of T = 1 on flat
    # objectives; never return a temperature that is worse than leaving logits alone.
    if objective(0.0) <= objective(log_t) and t_min <= 1.0 <= t_max:
        log_t = 0.0
    return TemperatureScaler(temperature=float(np.clip(math.exp(log_t), t_min, t_max)))


def calibrate_and_report(
    val_logits: Any,
    val_labels: Any,
    test_logits: Any,
    test_labels: Any,
    task: Literal["binary", "multiclass"] = "binary",
    *,
    num_members: int | None = None,
    n_bins: int = DEFAULT_N_BINS,
) -> tuple[TemperatureScaler, dict[str, dict[str, float]]]:
    """Fit a temperature on validation logits and compute test metrics before and after.

    Args:
        val_logits: validation member logits, (M, N_val) or (M, N_val, C).
        val_labels: shape (N_val,).
        test_logits: test member logits, (M, N_test) or (M, N_test, C).
        test_labels: shape (N_test,).
        task: 'binary' or 'multiclass'; picks the metric set.
        num_members: K for the per-member metrics; None treats each path as a member.
        n_bins: ECE bins.

    Returns:
        (scaler, {'raw': test metrics, 'calibrated': test metrics after scaling}).
    """
    if task == "binary":
        compute = binary_metrics
    elif task == "multiclass":
        compute = multiclass_metrics
    else:
        raise ValueError(f"task must be 'binary' or 'multiclass', got {task!r}")
    scaler = fit_temperature(val_logits, val_labels)
    raw = compute(test_logits, test_labels, num_members=num_members, n_bins=n_bins)
    calibrated = compute(
        scaler.apply(test_logits), test_labels, num_members=num_members, n_bins=n_bins
    )
    return scaler, {"raw": raw, "calibrated": calibrated}
