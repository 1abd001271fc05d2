"""Evaluation metrics for ensembles of stochastic forward paths (spec §1.8 and §7).

Conventions used throughout ``pipeline``:

* An ensemble prediction arrives as **member logits**: ``M = S * K`` stochastic forward paths
  (K members x S samples), ordered sample-major like the reference's ``[S, K, n, C]``
  reshape, i.e. path ``m = s * K + k``.
* Binary task: logits of shape (M, N), one Bernoulli logit per path and example.
* Multi-class task: logits of shape (M, N, C).
* Labels: shape (N,), integer class indices (0/1 for binary).

Numpy arrays and torch tensors are both accepted; everything is computed in float64 numpy.
Predictive probabilities are the mixture (mean over all M paths) of the per-path
probabilities; NLL is the negative log of that mixture, computed with logsumexp.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import log_expit, log_softmax, logsumexp
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

DEFAULT_N_BINS = 15


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


def ece(probs: Any, labels: Any, n_bins: int = DEFAULT_N_BINS) -> float:
    """Expected calibration error with equal-width bins on top-label confidence (spec §7).

    Binary probabilities are expanded to [1 - p, p] first, so the confidence is
    max(p, 1 - p). Bin b covers [b/n_bins, (b+1)/n_bins); p = 1.0 goes into the last bin.
    ECE = sum over non-empty bins of (n_b / N) * |accuracy_b - mean confidence_b|.

    Args:
        probs: mixture probabilities, (N,) for class 1 of a binary task or (N, C).
        labels: shape (N,).
        n_bins: number of equal-width bins.

    Returns:
        The ECE in [0, 1].
    """
    p = _as_class_probs(probs)
    y = as_labels(labels)
    _check_lengths(p.shape[0], y)
    if p.shape[0] == 0:
        raise ValueError("ECE needs at least one example")
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    return _binned_gap(confidence, correct, n_bins)


def _bin_index(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin index on [0, 1]; 1.0 lands in the last bin (histogram_fixed_width)."""
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    return np.clip(np.floor(values * n_bins).astype(np.int64), 0, n_bins - 1)


def _binned_gap(score: np.ndarray, target: np.ndarray, n_bins: int) -> float:
    """Sum over bins of score of (n_b / N) * |mean target_b - mean score_b|."""
    bins = _bin_index(score, n_bins)
    counts = np.bincount(bins, minlength=n_bins).astype(np.float64)
    score_sum = np.bincount(bins, weights=score, minlength=n_bins)
    target_sum = np.bincount(bins, weights=target, minlength=n_bins)
    nonempty = counts > 0
    gaps = np.abs(target_sum[nonempty] - score_sum[nonempty]) / counts[nonempty]
    return float(np.sum(counts[nonempty] / score.shape[0] * gaps))


def reliability_bins(
    probs: Any, labels: Any, n_bins: int = DEFAULT_N_BINS
) -> dict[str, np.ndarray]:
    """Per-bin statistics behind the ECE, for a reliability diagram.

    Args:
        probs: (N,) or (N, C) mixture probabilities.
        labels: shape (N,).
        n_bins: number of equal-width bins on [0, 1].

    Returns:
        Dict of arrays of shape (n_bins,): 'lower', 'upper' (bin edges), 'count',
        'confidence' (mean top-label confidence) and 'accuracy'; the last two are NaN for
        empty bins.
    """
    p = _as_class_probs(probs)
    y = as_labels(labels)
    _check_lengths(p.shape[0], y)
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    bins = _bin_index(confidence, n_bins)
    counts = np.bincount(bins, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=confidence, minlength=n_bins) / counts
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / counts
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {
        "lower": edges[:-1],
        "upper": edges[1:],
        "count": counts,
        "confidence": mean_conf,
        "accuracy": accuracy,
    }


def ece_against_truth(pred_risk: Any, true_risk: Any, n_bins: int = DEFAULT_N_BINS) -> float:
    """Calibration error against a known true risk (synthetic data only).

    Definition: examples are put into ``n_bins`` equal-width bins of *predicted* risk on
    [0, 1] (1.0 in the last bin); within each bin the mean predicted risk is compared with
    the mean true risk, and the absolute gaps are averaged with weights n_b / N. This is the
    ECE with the noisy 0/1 outcome replaced by its expectation, so it has no sampling noise
    from the labels and is 0 for a perfectly calibrated predictor.

    Args:
        pred_risk: shape (N,), predicted probability of the positive class.
        true_risk: shape (N,), the generator's true probability of the positive class.
        n_bins: number of bins.

    Returns:
        The calibration error in [0, 1].
    """
    pred = to_numpy(pred_risk)
    true = to_numpy(true_risk)
    if pred.ndim != 1 or pred.shape != true.shape:
        raise ValueError(
            f"pred_risk and true_risk must both have shape (N,), got {pred.shape}, {true.shape}"
        )
    if pred.shape[0] == 0:
        raise ValueError("ece_against_truth needs at least one example")
    return _binned_gap(pred, true, n_bins)


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


def _member_summary(member_logits: Any, y: np.ndarray, num_members: int | None) -> dict:
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
    logits = _check_logits(member_logits)
    if logits.ndim != 2:
        raise ValueError(f"binary member logits must have shape (M, N), got {logits.shape}")
    y = as_labels(labels)
    _check_lengths(logits.shape[1], y)
    if np.any((y != 0) & (y != 1)):
        raise ValueError("binary labels must be 0 or 1")
    p = mixture_probs(logits)
    pred = predicted_class(p)
    out = {
        "nll": mixture_nll(logits, y),
        "accuracy": accuracy(p, y),
        "ece": ece(p, y, n_bins),
        "brier": brier(p, y),
        "auroc": auroc(p, y),
        "auprc": auprc(p, y),
        "sensitivity": float(recall_score(y, pred, zero_division=0)),
        "ppv": float(precision_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "prevalence": float(np.mean(y)),
        "n": float(y.shape[0]),
    }
    out.update(_member_summary(logits, y, num_members))
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
    logits = _check_logits(member_logits)
    if logits.ndim != 3:
        raise ValueError(f"multi-class member logits must be (M, N, C), got {logits.shape}")
    y = as_labels(labels)
    _check_lengths(logits.shape[1], y)
    p = mixture_probs(logits)
    out = {
        "nll": mixture_nll(logits, y),
        "accuracy": accuracy(p, y),
        "ece": ece(p, y, n_bins),
        "brier": brier(p, y),
        "n": float(y.shape[0]),
    }
    out.update(_member_summary(logits, y, num_members))
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
