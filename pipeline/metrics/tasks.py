"""One dictionary of metrics per task: binary risk (EHR) and multi-class (images)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from pipeline.metrics.members import member_summary
from pipeline.metrics.predictive import (
    _check_lengths,
    _check_logits,
    accuracy,
    as_labels,
    brier,
    is_binary,
    mixture_nll,
    mixture_probs,
    predicted_class,
    to_numpy,
)
from pipeline.metrics.reliability import DEFAULT_N_BINS, ece


def auroc(risk: Any, labels: Any) -> float:
    """Area under the ROC curve (binary), NaN when only one class is present."""
    y = as_labels(labels)
    if np.unique(y).size < 2:
        return float("nan")
    return float(roc_auc_score(y, to_numpy(risk)))


def auprc(risk: Any, labels: Any) -> float:
    """Average precision (area under the precision-recall curve), NaN without positives."""
    y = as_labels(labels)
    if not np.any(y == 1):
        return float("nan")
    return float(average_precision_score(y, to_numpy(risk)))


def _checked(
    member_logits: Any, labels: Any, ndim: int, shape_error: str
) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the task's rank ``ndim`` and int64 labels of matching length, else ValueError."""
    logits = _check_logits(member_logits)
    if logits.ndim != ndim:
        raise ValueError(f"{shape_error}, got {logits.shape}")
    y = as_labels(labels)
    _check_lengths(logits.shape[1], y)
    return logits, y


def _mixture_scores(
    logits: np.ndarray, y: np.ndarray, n_bins: int
) -> tuple[np.ndarray, dict[str, float]]:
    """Mixture probabilities and the scores both tasks report first (NLL, accuracy, ECE, Brier)."""
    p = mixture_probs(logits)
    scores = {
        "nll": mixture_nll(logits, y),
        "accuracy": accuracy(p, y),
        "ece": ece(p, y, n_bins),
        "brier": brier(p, y),
    }
    return p, scores


def binary_metrics(
    member_logits: Any,
    labels: Any,
    *,
    num_members: int | None = None,
    n_bins: int = DEFAULT_N_BINS,
) -> dict[str, float]:
    """All binary metrics of an ensemble prediction (spec §5.3, §7).

    Args:
        member_logits: shape (M, N) Bernoulli logits, M = S * K.
        labels: shape (N,), 0/1.
        num_members: K; None treats each path as a member.
        n_bins: ECE bins.

    Returns:
        Dict with keys 'nll', 'accuracy', 'ece', 'brier', 'auroc', 'auprc',
        'sensitivity', 'ppv', 'f1', 'prevalence', 'n', 'member_nll_mean',
        'member_nll_min', 'member_accuracy_mean', 'disagreement', and 'member_{k}_nll',
        'member_{k}_accuracy' for each member k. AUROC/AUPRC are NaN when the labels
        contain a single class.
    """
    logits, y = _checked(member_logits, labels, 2, "binary member logits must have shape (M, N)")
    if np.any((y != 0) & (y != 1)):
        raise ValueError("binary labels must be 0 or 1")
    p, out = _mixture_scores(logits, y, n_bins)
    pred = predicted_class(p)
    out.update(
        auroc=auroc(p, y),
        auprc=auprc(p, y),
        sensitivity=float(recall_score(y, pred, zero_division=0)),
        ppv=float(precision_score(y, pred, zero_division=0)),
        f1=float(f1_score(y, pred, zero_division=0)),
        prevalence=float(np.mean(y)),
        n=float(y.shape[0]),
    )
    out.update(member_summary(logits, y, num_members))
    return out


def multiclass_metrics(
    member_logits: Any,
    labels: Any,
    *,
    num_members: int | None = None,
    n_bins: int = DEFAULT_N_BINS,
) -> dict[str, float]:
    """All multi-class metrics of an ensemble prediction (spec §7).

    Args:
        member_logits: shape (M, N, C) logits, M = S * K.
        labels: shape (N,), in [0, C).
        num_members: K; None treats each path as a member.
        n_bins: ECE bins.

    Returns:
        Dict with keys 'nll', 'accuracy', 'ece', 'brier', 'n', 'member_nll_mean',
        'member_nll_min', 'member_accuracy_mean', 'disagreement', and 'member_{k}_nll',
        'member_{k}_accuracy' for each member k.
    """
    logits, y = _checked(member_logits, labels, 3, "multi-class member logits must be (M, N, C)")
    _, out = _mixture_scores(logits, y, n_bins)
    out["n"] = float(y.shape[0])
    out.update(member_summary(logits, y, num_members))
    return out


def task_metrics(
    member_logits: Any,
    labels: Any,
    *,
    num_members: int | None = None,
    n_bins: int = DEFAULT_N_BINS,
) -> dict[str, float]:
    """Dispatch to :func:`binary_metrics` for (M, N) or :func:`multiclass_metrics` for (M, N, C)."""
    if is_binary(member_logits):
        return binary_metrics(member_logits, labels, num_members=num_members, n_bins=n_bins)
    return multiclass_metrics(member_logits, labels, num_members=num_members, n_bins=n_bins)
