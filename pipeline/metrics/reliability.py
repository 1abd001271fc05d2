"""Binned calibration: the ECE, its reliability-diagram bins and the ECE against a true risk.

All three share one binning rule (equal-width bins on [0, 1], 1.0 in the last bin) so the
diagram's bars always add up to the ECE that is logged beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.metrics.predictive import _as_class_probs, _check_lengths, as_labels, to_numpy

DEFAULT_N_BINS = 15


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


@dataclass(frozen=True)
class RiskBins:
    """Reliability of a binary risk: per equal-width bin of predicted risk on [0, 1].

    Unlike :func:`reliability_bins` (top-label confidence, which folds a binary risk into
    [0.5, 1] and mixes the patients who died with those who survived), these bins are of
    the predicted probability of the positive outcome itself, so a clinician reads
    "of the patients given about 30%, how many died".

    Attributes:
        lower: (n_bins,) lower bin edges.
        upper: (n_bins,) upper bin edges.
        count: (n_bins,) number of cases per bin; sums to N.
        mean_risk: (n_bins,) mean predicted risk per bin (NaN for an empty bin).
        observed: (n_bins,) share of positive outcomes per bin (NaN for an empty bin).
    """

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    mean_risk: np.ndarray
    observed: np.ndarray


def risk_bins(risk: Any, labels: Any, n_bins: int = DEFAULT_N_BINS) -> RiskBins:
    """Observed share of positive outcomes per equal-width bin of predicted risk.

    Same binning rule as the ECE (1.0 in the last bin).

    Args:
        risk: shape (N,), predicted probability of the positive outcome.
        labels: shape (N,), 0/1.
        n_bins: number of equal-width bins on [0, 1].

    Returns:
        The :class:`RiskBins`.
    """
    r = to_numpy(risk).astype(np.float64)
    y = as_labels(labels)
    if r.ndim != 1:
        raise ValueError(f"risk must have shape (N,), got {r.shape}")
    _check_lengths(r.shape[0], y)
    bins = _bin_index(r, n_bins)
    counts = np.bincount(bins, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_risk = np.bincount(bins, weights=r, minlength=n_bins) / counts
        observed = np.bincount(bins, weights=(y == 1).astype(np.float64), minlength=n_bins) / counts
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return RiskBins(edges[:-1], edges[1:], counts, mean_risk, observed)


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
