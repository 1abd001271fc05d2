"""Predictive distributions of an ensemble and the scores read from them (spec §1.8, §7).

The conventions of :mod:`pipeline.metrics` live here: member logits (M, N) or (M, N, C),
path ``m = s * K + k``, float64 numpy; the mixture is the mean over all M paths of the
per-path probabilities and its NLL is computed with logsumexp.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import log_expit, log_softmax, logsumexp


def to_numpy(x: Any) -> np.ndarray:
    """Convert a numpy array, torch tensor or sequence to a float64 numpy array.

    Args:
        x: array-like or ``torch.Tensor`` (any device, with or without grad).

    Returns:
        A float64 numpy array with the same shape.
    """
    # Duck-typed so this module never needs to import torch.
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def as_labels(labels: Any) -> np.ndarray:
    """Convert labels to a 1-D int64 numpy array, rejecting non-integer values.

    Args:
        labels: shape (N,), integer-valued (floats such as 1.0 are accepted).

    Returns:
        int64 array of shape (N,).
    """
    values = to_numpy(labels)
    if values.ndim != 1:
        raise ValueError(f"labels must have shape (N,), got {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
        raise ValueError("labels must be finite integers")
    return values.astype(np.int64)


def _check_logits(member_logits: Any) -> np.ndarray:
    logits = to_numpy(member_logits)
    if logits.ndim not in (2, 3):
        raise ValueError(
            "member logits must have shape (M, N) for a binary task or (M, N, C) for a "
            f"multi-class task, got {logits.shape}"
        )
    if logits.shape[0] < 1:
        raise ValueError("member logits need at least one forward path (M >= 1)")
    return logits


def is_binary(member_logits: Any) -> bool:
    """Whether member logits are binary (M, N) rather than multi-class (M, N, C)."""
    return _check_logits(member_logits).ndim == 2


def path_log_probs(member_logits: Any) -> np.ndarray:
    """Per-path class log-probabilities, binary logits expanded to two classes.

    Args:
        member_logits: shape (M, N) Bernoulli logits or (M, N, C) class logits.

    Returns:
        Log-probabilities of shape (M, N, C), with C = 2 for a binary task
        (column 0 = log(1 - p), column 1 = log p).
    """
    logits = _check_logits(member_logits)
    if logits.ndim == 2:
        # log_expit stays finite for large |logit|, unlike log(sigmoid(z)).
        return np.stack([log_expit(-logits), log_expit(logits)], axis=-1)
    return log_softmax(logits, axis=-1)


def path_probs(member_logits: Any) -> np.ndarray:
    """Per-path probabilities in the task's own shape.

    Args:
        member_logits: shape (M, N) or (M, N, C).

    Returns:
        (M, N) probabilities of class 1 for a binary task, (M, N, C) otherwise.
    """
    logits = _check_logits(member_logits)
    probs = np.exp(path_log_probs(logits))
    return probs[..., 1] if logits.ndim == 2 else probs


def mixture_probs(member_logits: Any) -> np.ndarray:
    """Mixture predictive probabilities: mean over all M paths of sigmoid / softmax.

    Args:
        member_logits: shape (M, N) or (M, N, C).

    Returns:
        (N,) probability of class 1 for a binary task, (N, C) otherwise.
    """
    return path_probs(member_logits).mean(axis=0)


def _as_class_probs(probs: Any) -> np.ndarray:
    """(N,) binary probabilities -> (N, 2) as [1 - p, p]; (N, C) returned as is."""
    p = to_numpy(probs)
    if p.ndim == 1:
        return np.stack([1.0 - p, p], axis=-1)
    if p.ndim == 2:
        return p
    raise ValueError(f"probabilities must have shape (N,) or (N, C), got {p.shape}")


def _check_lengths(n_pred: int, labels: np.ndarray) -> None:
    if labels.shape[0] != n_pred:
        raise ValueError(f"{n_pred} predictions but {labels.shape[0]} labels")


def per_example_nll(member_logits: Any, labels: Any) -> np.ndarray:
    """Negative log of the mixture predictive of the true label, per example.

    Computed as -logsumexp_m log p_m(y_n) + log M (spec §1.8), which stays finite when
    individual paths assign the label a probability that underflows.

    Args:
        member_logits: shape (M, N) or (M, N, C).
        labels: shape (N,).

    Returns:
        shape (N,), in nats.
    """
    log_p = path_log_probs(member_logits)
    y = as_labels(labels)
    _check_lengths(log_p.shape[1], y)
    if y.min(initial=0) < 0 or y.max(initial=0) >= log_p.shape[2]:
        raise ValueError(f"labels must lie in [0, {log_p.shape[2] - 1}]")
    n_paths = log_p.shape[0]
    # (M, N): log-likelihood of the true label on each path.
    log_lik = log_p[:, np.arange(y.shape[0]), y]
    return -(logsumexp(log_lik, axis=0) - np.log(n_paths))


def mixture_nll(member_logits: Any, labels: Any) -> float:
    """Mean negative log-likelihood of the mixture predictive (spec §1.8, §7).

    Args:
        member_logits: shape (M, N) or (M, N, C).
        labels: shape (N,).

    Returns:
        -mean_n log(mean_m p_m(y_n)), in nats.
    """
    return float(per_example_nll(member_logits, labels).mean())


def brier(probs: Any, labels: Any) -> float:
    """Brier score.

    Binary (N,) probabilities use the usual binary form mean((p - y)^2); multi-class
    (N, C) uses mean_n sum_c (p_nc - onehot_nc)^2 (which is twice the binary form for C=2).

    Args:
        probs: (N,) or (N, C) mixture probabilities.
        labels: shape (N,).

    Returns:
        The Brier score.
    """
    p = to_numpy(probs)
    y = as_labels(labels)
    _check_lengths(p.shape[0], y)
    if p.ndim == 1:
        return float(np.mean((p - y) ** 2))
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


def accuracy(probs: Any, labels: Any) -> float:
    """Accuracy of the mixture prediction: p >= 0.5 (binary) or argmax (multi-class).

    Args:
        probs: (N,) or (N, C) mixture probabilities.
        labels: shape (N,).

    Returns:
        Fraction correct.
    """
    y = as_labels(labels)
    pred = predicted_class(probs)
    _check_lengths(pred.shape[0], y)
    return float(np.mean(pred == y))


def predicted_class(probs: Any) -> np.ndarray:
    """Predicted class: 1 where p >= 0.5 for (N,) input, argmax over C for (N, C).

    Returns:
        int64 array of shape (N,).
    """
    p = to_numpy(probs)
    if p.ndim == 1:
        return (p >= 0.5).astype(np.int64)
    return p.argmax(axis=-1).astype(np.int64)
