"""Per-member views of an ensemble prediction.

Paths split into (S, K), each member's NLL and accuracy, and its disagreement with the
mixture.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.metrics.predictive import (
    _check_logits,
    as_labels,
    mixture_nll,
    mixture_probs,
    predicted_class,
)


def split_paths(member_logits: Any, num_members: int | None = None) -> np.ndarray:
    """Reshape (M, N[, C]) paths to (S, K, N[, C]) with path m = s * K + k.

    Args:
        member_logits: shape (M, N) or (M, N, C).
        num_members: K. None treats every path as its own member (K = M, S = 1).

    Returns:
        Array of shape (S, K, N) or (S, K, N, C).
    """
    logits = _check_logits(member_logits)
    n_paths = logits.shape[0]
    k = n_paths if num_members is None else int(num_members)
    if k < 1 or n_paths % k != 0:
        raise ValueError(f"M = {n_paths} paths are not a multiple of K = {k} members")
    return logits.reshape((n_paths // k, k) + logits.shape[1:])


def per_member_metrics(
    member_logits: Any, labels: Any, num_members: int | None = None
) -> dict[str, np.ndarray]:
    """NLL and accuracy of each member, plus its disagreement with the mixture.

    A member's predictive averages its S samples (spec §1.8): its NLL is
    -mean_n log(mean_s p_{s,k}(y_n)), and its prediction is the argmax (or p >= 0.5) of
    mean_s p_{s,k}.

    Args:
        member_logits: shape (M, N) or (M, N, C) with M = S * K, path m = s * K + k.
        labels: shape (N,).
        num_members: K; None treats each path as a member.

    Returns:
        Dict with arrays of shape (K,): 'nll', 'accuracy', 'disagreement' (fraction of
        examples where the member's predicted class differs from the mixture's).
    """
    paths = split_paths(member_logits, num_members)
    k = paths.shape[1]
    y = as_labels(labels)
    mixture_pred = predicted_class(mixture_probs(member_logits))
    nll = np.empty(k)
    acc = np.empty(k)
    disagreement = np.empty(k)
    for j in range(k):
        member = paths[:, j]
        nll[j] = mixture_nll(member, y)
        pred = predicted_class(mixture_probs(member))
        acc[j] = np.mean(pred == y)
        disagreement[j] = np.mean(pred != mixture_pred)
    return {"nll": nll, "accuracy": acc, "disagreement": disagreement}


def disagreement(member_logits: Any, num_members: int | None = None) -> float:
    """Mean over members of the fraction of examples where member and mixture disagree.

    Args:
        member_logits: shape (M, N) or (M, N, C), M = S * K.
        num_members: K; None treats each path as a member.

    Returns:
        A fraction in [0, 1].
    """
    paths = split_paths(member_logits, num_members)
    mixture_pred = predicted_class(mixture_probs(member_logits))
    fractions = [
        np.mean(predicted_class(mixture_probs(paths[:, j])) != mixture_pred)
        for j in range(paths.shape[1])
    ]
    return float(np.mean(fractions))


def member_summary(member_logits: Any, y: np.ndarray, num_members: int | None) -> dict:
    """The per-member part of a task's metrics dictionary, as flat floats for logging.

    Args:
        member_logits: shape (M, N) or (M, N, C), M = S * K.
        y: int64 labels of shape (N,).
        num_members: K; None treats each path as a member.

    Returns:
        'member_nll_mean', 'member_nll_min', 'member_accuracy_mean', 'disagreement', then
        'member_{k}_nll' and 'member_{k}_accuracy' for each member k.
    """
    members = per_member_metrics(member_logits, y, num_members)
    out = {
        "member_nll_mean": float(members["nll"].mean()),
        "member_nll_min": float(members["nll"].min()),
        "member_accuracy_mean": float(members["accuracy"].mean()),
        "disagreement": float(members["disagreement"].mean()),
    }
    for j, (nll_j, acc_j) in enumerate(zip(members["nll"], members["accuracy"], strict=True)):
        out[f"member_{j}_nll"] = float(nll_j)
        out[f"member_{j}_accuracy"] = float(acc_j)
    return out
