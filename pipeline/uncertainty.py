"""Per-prediction uncertainty of an ensemble and selective prediction (referral).

The decomposition is the standard one for a mixture of M forward paths p_1..p_M:

* total (predictive) entropy  H[mean_m p_m]
* aleatoric (expected) entropy  mean_m H[p_m]  -- noise each path itself predicts
* epistemic (mutual information)  total - aleatoric  -- disagreement between paths

All entropies are in nats (so a fair coin has entropy log 2 ~ 0.693). Binary predictions are
treated as two-class distributions [1 - p, p]. Inputs follow the conventions of
:mod:`pipeline.metrics`: member logits (M, N) for a binary task or (M, N, C).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pipeline.metrics import (
    as_labels,
    auroc,
    path_log_probs,
    predicted_class,
    to_numpy,
)

UncertaintyKind = Literal["total", "epistemic", "aleatoric"]
DEFAULT_INTERVAL = (5.0, 95.0)
DEFAULT_REFERRAL_FRACTIONS = tuple(round(0.05 * i, 2) for i in range(11))  # 0%, 5%, ..., 50%


@dataclass(frozen=True)
class PredictiveUncertainty:
    """Uncertainty of N predictions.

    Attributes:
        probs: mixture probabilities, (N,) probability of class 1 for a binary task
            (the mean risk), (N, C) otherwise.
        interval_low: lower percentile over the M path probabilities, same shape as probs.
        interval_high: upper percentile over the M path probabilities, same shape as probs.
        total: (N,) predictive entropy H[mean p], nats.
        aleatoric: (N,) expected entropy mean_m H[p_m], nats.
        epistemic: (N,) mutual information total - aleatoric (>= 0), nats.
        interval: the (low, high) percentiles used.
    """

    probs: np.ndarray
    interval_low: np.ndarray
    interval_high: np.ndarray
    total: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray
    interval: tuple[float, float]

    def score(self, by: UncertaintyKind = "total") -> np.ndarray:
        """The (N,) uncertainty used to rank cases for referral."""
        if by not in ("total", "epistemic", "aleatoric"):
            raise ValueError(f"unknown uncertainty kind {by!r}")
        return getattr(self, by)


def _entropy(log_p: np.ndarray) -> np.ndarray:
    """Entropy over the last axis from log-probabilities; 0 * log 0 counts as 0."""
    p = np.exp(log_p)
    return -np.sum(np.where(p > 0, p * log_p, 0.0), axis=-1)


def decompose(
    member_logits: Any, interval: tuple[float, float] = DEFAULT_INTERVAL
) -> PredictiveUncertainty:
    """Mean prediction, credible interval and entropy decomposition per example.

    Args:
        member_logits: shape (M, N) (binary) or (M, N, C), M = K members x S samples.
        interval: percentiles (low, high) of the M path probabilities, e.g. (5, 95).

    Returns:
        A :class:`PredictiveUncertainty` for the N examples.
    """
    low_q, high_q = interval
    if not 0 <= low_q < high_q <= 100:
        raise ValueError(f"interval must satisfy 0 <= low < high <= 100, got {interval}")
    logits = to_numpy(member_logits)
    log_p = path_log_probs(logits)  # (M, N, C)
    path_p = np.exp(log_p)
    mixture = path_p.mean(axis=0)  # (N, C)
    total = _entropy(np.log(np.clip(mixture, 1e-300, None)))
    aleatoric = _entropy(log_p).mean(axis=0)
    # Jensen makes total >= aleatoric; tiny negatives are floating-point noise.
    epistemic = np.clip(total - aleatoric, 0.0, None)
    low, high = np.percentile(path_p, [low_q, high_q], axis=0)  # (N, C) each
    if logits.ndim == 2:
        mixture, low, high = mixture[:, 1], low[:, 1], high[:, 1]
    return PredictiveUncertainty(
        probs=mixture,
        interval_low=low,
        interval_high=high,
        total=total,
        aleatoric=aleatoric,
        epistemic=epistemic,
        interval=(float(low_q), float(high_q)),
    )


def n_referred(fraction: float, n: int) -> int:
    """Number of the N cases referred at a referral fraction: ceil(fraction * N).

    Rounding up means at least the requested share of cases goes to a clinician.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"referral fraction must be in [0, 1], got {fraction}")
    # The small epsilon keeps e.g. 0.3 * 10 = 3.0000000000000004 from becoming 4.
    return min(n, math.ceil(fraction * n - 1e-9))


def referral_order(uncertainty: Any) -> np.ndarray:
    """Indices from most to least uncertain; ties keep the input order (stable sort)."""
    u = to_numpy(uncertainty)
    if u.ndim != 1:
        raise ValueError(f"uncertainty must have shape (N,), got {u.shape}")
    return np.argsort(-u, kind="stable")


def refer_flags(uncertainty: Any, coverage: float) -> np.ndarray:
    """Flag the most uncertain (1 - coverage) share of cases for referral.

    Args:
        uncertainty: shape (N,), larger = more uncertain.
        coverage: fraction of cases the model keeps, in [0, 1].

    Returns:
        Boolean array (N,), True = refer to a clinician; ceil((1 - coverage) * N) cases.
    """
    u = to_numpy(uncertainty)
    order = referral_order(u)
    flags = np.zeros(u.shape[0], dtype=bool)
    flags[order[: n_referred(1.0 - coverage, u.shape[0])]] = True
    return flags


@dataclass(frozen=True)
class ReferralCurve:
    """Performance on the retained cases as the most uncertain ones are referred.

    Attributes:
        fractions: (F,) referral fractions.
        n_retained: (F,) number of retained cases.
        accuracy: (F,) accuracy of the retained cases (NaN if none are retained).
        auroc: (F,) AUROC of the retained cases (binary only; NaN for multi-class or when
            the retained cases hold a single class).
        by: which uncertainty ranked the cases.
    """

    fractions: np.ndarray
    n_retained: np.ndarray
    accuracy: np.ndarray
    auroc: np.ndarray
    by: str

    def to_dict(self) -> dict[str, list[float] | str]:
        """Plain lists, for JSON or MLflow ``log_dict``."""
        return {
            "fractions": self.fractions.tolist(),
            "n_retained": self.n_retained.tolist(),
            "accuracy": self.accuracy.tolist(),
            "auroc": self.auroc.tolist(),
            "by": self.by,
        }


def referral_curve_from_scores(
    probs: Any,
    labels: Any,
    uncertainty: Any,
    fractions: Any = DEFAULT_REFERRAL_FRACTIONS,
    by: str = "total",
) -> ReferralCurve:
    """Referral curve from precomputed probabilities and uncertainty scores.

    Args:
        probs: (N,) binary risk or (N, C) class probabilities.
        labels: shape (N,).
        uncertainty: shape (N,), larger = referred first.
        fractions: referral fractions in [0, 1].
        by: label recorded in the result.

    Returns:
        A :class:`ReferralCurve`.
    """
    p = to_numpy(probs)
    y = as_labels(labels)
    order = referral_order(uncertainty)
    if p.shape[0] != y.shape[0] or order.shape[0] != y.shape[0]:
        raise ValueError("probs, labels and uncertainty must describe the same N cases")
    binary = p.ndim == 1
    pred = predicted_class(p)
    fracs = np.asarray(fractions, dtype=np.float64)
    n_kept = np.empty(fracs.shape[0], dtype=np.int64)
    acc = np.full(fracs.shape[0], np.nan)
    roc = np.full(fracs.shape[0], np.nan)
    for i, fraction in enumerate(fracs):
        kept = order[n_referred(float(fraction), y.shape[0]) :]
        n_kept[i] = kept.shape[0]
        if kept.shape[0] == 0:
            continue
        acc[i] = np.mean(pred[kept] == y[kept])
        if binary:
            roc[i] = auroc(p[kept], y[kept])
    return ReferralCurve(fractions=fracs, n_retained=n_kept, accuracy=acc, auroc=roc, by=by)


def referral_curve(
    member_logits: Any,
    labels: Any,
    fractions: Any = DEFAULT_REFERRAL_FRACTIONS,
    by: UncertaintyKind = "total",
) -> ReferralCurve:
    """Refer the most uncertain cases and measure the retained ones.

    Args:
        member_logits: shape (M, N) or (M, N, C).
        labels: shape (N,).
        fractions: referral fractions, default 0%, 5%, ..., 50%.
        by: rank by 'total' entropy (default) or 'epistemic' mutual information
            (or 'aleatoric').

    Returns:
        A :class:`ReferralCurve`.
    """
    unc = decompose(member_logits)
    return referral_curve_from_scores(unc.probs, labels, unc.score(by), fractions, by=by)
