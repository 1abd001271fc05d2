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

The package is split by concern; every name is importable from ``pipeline.metrics``:

* :mod:`~pipeline.metrics.predictive`: array conversion, per-path and mixture
  probabilities, NLL, Brier, accuracy.
* :mod:`~pipeline.metrics.reliability`: the ECE, reliability-diagram bins, ECE against a
  known true risk.
* :mod:`~pipeline.metrics.members`: per-member metrics and disagreement.
* :mod:`~pipeline.metrics.tasks`: AUROC/AUPRC and the per-task dictionaries
  (:func:`binary_metrics`, :func:`multiclass_metrics`, :func:`task_metrics`).
"""

from pipeline.metrics.members import disagreement, member_summary, per_member_metrics, split_paths
from pipeline.metrics.predictive import (
    accuracy,
    as_labels,
    brier,
    is_binary,
    mixture_nll,
    mixture_probs,
    path_log_probs,
    path_probs,
    per_example_nll,
    predicted_class,
    to_numpy,
)
from pipeline.metrics.reliability import (
    DEFAULT_N_BINS,
    RiskBins,
    ece,
    ece_against_truth,
    reliability_bins,
    risk_bins,
)
from pipeline.metrics.tasks import auprc, auroc, binary_metrics, multiclass_metrics, task_metrics

__all__ = [
    "DEFAULT_N_BINS",
    "RiskBins",
    "accuracy",
    "as_labels",
    "auprc",
    "auroc",
    "binary_metrics",
    "brier",
    "disagreement",
    "ece",
    "ece_against_truth",
    "is_binary",
    "member_summary",
    "mixture_nll",
    "mixture_probs",
    "multiclass_metrics",
    "path_log_probs",
    "path_probs",
    "per_example_nll",
    "per_member_metrics",
    "predicted_class",
    "reliability_bins",
    "risk_bins",
    "split_paths",
    "task_metrics",
    "to_numpy",
]
