"""Metrics, calibration and uncertainty of the sequence tasks, from member logits.

Logits follow :mod:`pipeline.metrics`: ``M = S * K`` paths, ``(M, N)`` for decompensation,
``(M, N, 10)`` for the length-of-stay buckets and ``(M, N, 25)`` for the phenotypes (25
independent Bernoulli logits). The benchmark metrics sit beside the mixture NLL, Brier and
ECE: decompensation AUROC/AUPRC; length of stay the linear-weighted Cohen's kappa over the
10 buckets and the MAD in hours of the benchmark's bucket-mean estimate; phenotyping macro
and micro AUROC, with NLL, Brier and ECE the means over the 25 labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from pipeline.calibration import TemperatureScaler, fit_temperature
from pipeline.metrics import (
    auroc,
    binary_metrics,
    brier,
    ece,
    mixture_nll,
    mixture_probs,
    multiclass_metrics,
    to_numpy,
)
from pipeline.tasks.data import LOS_BUCKET_MEAN_HOURS, TaskSpec
from pipeline.uncertainty import decompose, n_retained


@dataclass(frozen=True)
class LabelTemperatures:
    """One temperature per label of a multi-label head: logits ``[..., j] / T_j``.

    Attributes:
        temperatures: ``T_j > 0``, one per label.
    """

    temperatures: tuple[float, ...]

    def __post_init__(self) -> None:
        values = tuple(float(t) for t in self.temperatures)
        if not values or not all(math.isfinite(t) and t > 0 for t in values):
            raise ValueError(f"temperatures must be finite and > 0, got {self.temperatures}")
        object.__setattr__(self, "temperatures", values)

    @property
    def temperature(self) -> float:
        """The mean temperature (a one-number summary)."""
        return float(np.mean(self.temperatures))

    def apply(self, member_logits: Any) -> np.ndarray:
        """Scale ``(M, N, L)`` logits label by label; float64 numpy of the same shape."""
        return to_numpy(member_logits) / np.asarray(self.temperatures)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, saved beside the model."""
        return {"method": "temperature_scaling_per_label", "temperatures": list(self.temperatures)}


Scaler = TemperatureScaler | LabelTemperatures


def fit_scaler(spec: TaskSpec, member_logits: Any, labels: Any) -> Scaler:
    """The task's calibration fitted on validation: one temperature, or one per phenotype.

    Args:
        spec: The task.
        member_logits: Validation logits of the task's shape.
        labels: ``(N,)`` targets, or ``(N, 25)`` phenotype labels.

    Returns:
        A :class:`TemperatureScaler` or, for phenotyping, :class:`LabelTemperatures`.
    """
    if spec.labels_per_sample == 1:
        return fit_temperature(member_logits, labels)
    logits, y = to_numpy(member_logits), to_numpy(labels)
    return LabelTemperatures(
        tuple(fit_temperature(logits[..., j], y[:, j]).temperature for j in range(y.shape[1]))
    )


def _per_label(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Phenotyping: macro/micro AUROC and the label means of NLL, Brier and ECE."""
    y = y.astype(np.int64)
    labels = range(y.shape[1])
    # (N, L): each label's mixture probability (a Bernoulli per label, not a softmax).
    p = np.stack([mixture_probs(logits[..., j]) for j in labels], axis=1)
    micro = float(roc_auc_score(y.ravel(), p.ravel())) if np.unique(y).size > 1 else float("nan")
    per_label_auroc = [auroc(p[:, j], y[:, j]) for j in labels]
    defined = [a for a in per_label_auroc if not math.isnan(a)]
    return {
        "nll": float(np.mean([mixture_nll(logits[..., j], y[:, j]) for j in labels])),
        "brier": float(np.mean([brier(p[:, j], y[:, j]) for j in labels])),
        "ece": float(np.mean([ece(p[:, j], y[:, j]) for j in labels])),
        "macro_auroc": float(np.mean(defined)) if defined else float("nan"),
        "micro_auroc": micro,
        "n": float(y.shape[0]),
    }


def task_metrics(
    spec: TaskSpec,
    member_logits: Any,
    labels: Any,
    *,
    remaining_hours: Any = None,
    num_members: int | None = None,
) -> dict[str, float]:
    """The task's metrics of one prediction.

    Args:
        spec: The task.
        member_logits: ``(M, N)``, ``(M, N, 10)`` or ``(M, N, 25)`` logits.
        labels: ``(N,)`` targets, or ``(N, 25)`` phenotype labels.
        remaining_hours: ``(N,)`` true remaining length of stay (length of stay; for MAD).
        num_members: K, for the per-member metrics (decompensation, length of stay).

    Returns:
        Decompensation: :func:`pipeline.metrics.binary_metrics` (``auroc``, ``auprc``,
        ``nll``, ``brier``, ``ece``, ...). Length of stay:
        :func:`pipeline.metrics.multiclass_metrics` (multiclass NLL and Brier, top-label
        ECE, ...) plus ``kappa`` and ``mad`` (hours; only with ``remaining_hours``).
        Phenotyping: ``macro_auroc``, ``micro_auroc`` and the label means ``nll``,
        ``brier``, ``ece``.
    """
    logits = to_numpy(member_logits)
    if spec.name == "phenotyping":
        return _per_label(logits, to_numpy(labels))
    if spec.likelihood == "bernoulli":
        return binary_metrics(logits, labels, num_members=num_members)
    y = to_numpy(labels).astype(np.int64)
    out = multiclass_metrics(logits, y, num_members=num_members)
    predicted = mixture_probs(logits).argmax(axis=1)
    out["kappa"] = float(cohen_kappa_score(y, predicted, weights="linear"))
    if remaining_hours is not None:
        estimate = np.asarray(LOS_BUCKET_MEAN_HOURS)[predicted]
        out["mad"] = float(np.mean(np.abs(estimate - to_numpy(remaining_hours))))
    return out


@dataclass(frozen=True)
class SampleUncertainty:
    """Per-sample uncertainty decomposition, nats (``pipeline.uncertainty.decompose``).

    Attributes:
        total: ``(N,)`` predictive entropy (``(N, 25)`` per phenotype).
        aleatoric: Expected entropy of the paths, same shape.
        epistemic: Mutual information, total - aleatoric, same shape.
    """

    total: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray

    def means(self) -> dict[str, float]:
        """Cohort means of the three parts (all labels together for phenotyping)."""
        return {
            f"mean_{name}": float(np.mean(getattr(self, name)))
            for name in ("total", "aleatoric", "epistemic")
        }


def sample_uncertainty(spec: TaskSpec, member_logits: Any) -> SampleUncertainty:
    """Total, aleatoric and epistemic uncertainty of every sample (and label).

    Bernoulli for decompensation, categorical over the buckets for length of stay, one
    Bernoulli per label for phenotyping.
    """
    logits = to_numpy(member_logits)
    if spec.labels_per_sample == 1:
        parts = decompose(logits)
        return SampleUncertainty(parts.total, parts.aleatoric, parts.epistemic)
    per_label = [decompose(logits[..., j]) for j in range(logits.shape[-1])]
    return SampleUncertainty(
        *(np.stack([getattr(u, name) for u in per_label], axis=1)
          for name in ("total", "aleatoric", "epistemic"))
    )  # fmt: skip


#: Coverages of the task referral curves: the share of samples the model keeps.
REFERRAL_COVERAGES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


@dataclass(frozen=True)
class TaskReferral:
    """Retained NLL when the most uncertain samples are referred, against random referral.

    Attributes:
        by: The ranking uncertainty (``epistemic``; ``total`` for a one-path model).
        coverages: Shares of samples kept.
        retained_nll: Mean NLL of the samples kept at each coverage.
        random_nll: The mean NLL of all samples: what random referral keeps on average.
    """

    by: str
    coverages: tuple[float, ...]
    retained_nll: tuple[float, ...]
    random_nll: float

    def gain(self, coverage: float) -> float:
        """``random_nll - retained_nll`` at a coverage (> 0: referral by uncertainty helps)."""
        return self.random_nll - self.retained_nll[self.coverages.index(coverage)]

    def metrics(self) -> dict[str, float]:
        """MLflow metrics: ``referral/nll_at_80`` per coverage, ``referral/random_nll``."""
        out = {
            f"referral/nll_at_{round(100 * c)}": v
            for c, v in zip(self.coverages, self.retained_nll, strict=True)
        }
        return {**out, "referral/random_nll": self.random_nll}


def sample_nll(spec: TaskSpec, member_logits: Any, labels: Any) -> np.ndarray:
    """Each sample's mixture NLL (phenotyping: the mean over its 25 labels), nats."""
    logits, y = to_numpy(member_logits), to_numpy(labels)
    if spec.labels_per_sample > 1:
        p = np.stack([mixture_probs(logits[..., j]) for j in range(y.shape[1])], axis=1)
        p = np.clip(np.where(y > 0.5, p, 1.0 - p), 1e-12, 1.0)
        return -np.log(p).mean(axis=1)
    probs = mixture_probs(logits)
    if probs.ndim == 1:
        probs = np.stack([1.0 - probs, probs], axis=1)
    picked = probs[np.arange(probs.shape[0]), y.astype(np.int64)]
    return -np.log(np.clip(picked, 1e-12, 1.0))


def task_referral(
    spec: TaskSpec,
    member_logits: Any,
    labels: Any,
    coverages: tuple[float, ...] = REFERRAL_COVERAGES,
) -> TaskReferral:
    """The referral curve of a task's (calibrated) predictions.

    Samples are ranked by their epistemic uncertainty (phenotyping: its mean over the
    labels), or by the total for a one-path model, whose epistemic part is zero; the most
    uncertain ``1 - coverage`` are referred.
    """
    logits = to_numpy(member_logits)
    parts = sample_uncertainty(spec, logits)
    by = "epistemic" if logits.shape[0] > 1 else "total"
    score = getattr(parts, by)
    score = score.mean(axis=1) if score.ndim == 2 else score
    nll = sample_nll(spec, logits, labels)
    kept = np.argsort(score, kind="stable")  # least uncertain first
    retained = tuple(float(nll[kept[: n_retained(c, len(nll))]].mean()) for c in coverages)
    return TaskReferral(by, tuple(coverages), retained, float(nll.mean()))
