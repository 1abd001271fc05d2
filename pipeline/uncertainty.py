"""Per-prediction uncertainty of an ensemble and selective prediction (referral).

The decomposition is the standard one for a mixture of M forward paths p_1..p_M:

* total (predictive) entropy  H[mean_m p_m]
* aleatoric (expected) entropy  mean_m H[p_m]  -- noise each path itself predicts
* epistemic (mutual information)  total - aleatoric  -- disagreement between paths

All entropies are in nats (so a fair coin has entropy log 2 ~ 0.693). Binary predictions are
treated as two-class distributions [1 - p, p]. Inputs follow the conventions of
:mod:`pipeline.metrics`: member logits (M, N) for a binary task or (M, N, C); the prediction
is always the mixture (mean over paths of the path probabilities), never the sigmoid of the
mean logit.

Which uncertainty ranks stays for referral (:func:`default_ranking`): for a model with more
than one path (K members x S samples > 1) the default is the **epistemic** part. Total
entropy is the wrong ranking for a binary outcome: the entropy of a Bernoulli(p) is a
monotone function of |p - 0.5| alone, so when every risk is below 0.5 (as for a 12%
mortality) "refer the most uncertain" is exactly "refer the highest risks" and the ranking
adds nothing beyond the risk the clinician already sees. Mutual information is large only
where the members disagree, which the risk does not say. A deterministic model (one path)
has no epistemic part (it is zero for every stay), so it falls back to total entropy and the
result says so (:attr:`PredictiveUncertainty.ranking`).

Referral curves (:func:`referral_curve`) show, for each coverage (share of stays the model
keeps), the retained stays' NLL, Brier, ECE, AUROC and accuracy for three strategies: the
chosen ranking, random referral (the mean over seeded random orders) and an oracle that
refers the stays with the largest per-stay NLL first. The oracle uses the labels, so it is a
bound on the retained NLL (not on ECE or AUROC), not a strategy a clinic could run. AUROC
alone misleads here: at low prevalence, referring uncertain stays removes most positives and
the retained AUROC can fall even when every retained risk got better.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from pipeline.metrics import (
    as_labels,
    auroc,
    ece,
    path_log_probs,
    predicted_class,
    to_numpy,
)

UncertaintyKind = Literal["total", "epistemic", "aleatoric"]
RankingKind = Literal["epistemic", "total"]
DEFAULT_INTERVAL = (5.0, 95.0)
# Coverage = share of stays the model keeps: 50%, 55%, ..., 100%.
DEFAULT_COVERAGES = tuple(round(0.5 + 0.05 * i, 2) for i in range(11))
DEFAULT_RANDOM_ORDERS = 100
RETAINED_METRICS = ("nll", "brier", "ece", "auroc", "accuracy")


def default_ranking(n_paths: int) -> RankingKind:
    """The uncertainty that ranks stays for referral, given the model's number of paths.

    The one place the rule lives; the report and training-time logging both call it.

    Args:
        n_paths: M = K members x S samples of the predictions.

    Returns:
        ``"epistemic"`` when there is more than one path, else ``"total"``.
    """
    if n_paths < 1:
        raise ValueError(f"a model has at least one path, got {n_paths}")
    # Not total entropy: for a binary outcome it is a monotone function of |p - 0.5|, so with
    # all risks below 0.5 it ranks exactly like the risk and says nothing new. Mutual
    # information measures member disagreement, which the risk does not carry. One path has
    # no disagreement (epistemic = 0 everywhere), so total entropy is all that is left.
    return "epistemic" if n_paths > 1 else "total"


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
        n_paths: M, the number of forward paths (K members x S samples).
        ranking: the default referral ranking for these paths (:func:`default_ranking`):
            ``"epistemic"``, or ``"total"`` for a one-path (deterministic) model.
    """

    probs: np.ndarray
    interval_low: np.ndarray
    interval_high: np.ndarray
    total: np.ndarray
    aleatoric: np.ndarray
    epistemic: np.ndarray
    interval: tuple[float, float]
    n_paths: int
    ranking: RankingKind

    def score(self, by: UncertaintyKind | None = None) -> np.ndarray:
        """The (N,) uncertainty used to rank cases for referral (default: ``ranking``)."""
        by = self.ranking if by is None else by
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
        n_paths=int(logits.shape[0]),
        ranking=default_ranking(int(logits.shape[0])),
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
class RetainedMetrics:
    """Metrics of the retained (not referred) stays at each coverage, for one strategy.

    Every array has shape (F,), one value per coverage; NaN where undefined (no stay
    retained; AUROC for multi-class or a single retained class).

    Attributes:
        nll: mean negative log-likelihood of the mixture, nats.
        brier: Brier score (as :func:`pipeline.metrics.brier`).
        ece: expected calibration error (:func:`pipeline.metrics.ece`).
        auroc: AUROC of the risk (binary only).
        accuracy: accuracy of the mixture prediction.
    """

    nll: np.ndarray
    brier: np.ndarray
    ece: np.ndarray
    auroc: np.ndarray
    accuracy: np.ndarray

    def to_dict(self) -> dict[str, list[float | None]]:
        """Plain lists, NaN as None (strict JSON has no NaN), for MLflow ``log_dict``."""
        return {
            name: [None if math.isnan(v) else v for v in getattr(self, name).tolist()]
            for name in RETAINED_METRICS
        }


@dataclass(frozen=True)
class ReferralCurve:
    """Retained-stays performance as stays are referred, for three referral strategies.

    Attributes:
        coverages: (F,) share of stays the model keeps, ascending; includes the report's.
        n_retained: (F,) number of retained stays at each coverage.
        ranked: metrics when the stays ranked most uncertain by ``by`` are referred first.
        random: mean metrics over ``n_random`` random referral orders (seeded by ``seed``).
        oracle: metrics when the stays with the largest per-stay NLL are referred first.
            It uses the labels: its NLL (and, binary, its Brier) is the lowest any ranking
            could reach; its ECE and AUROC are no such bound (it keeps almost no deaths).
        by: the uncertainty that ranked the stays.
        report_coverage: the report's coverage (marked in the figure), or None.
        n_random: number of random orders averaged.
        seed: seed of the random orders.
    """

    coverages: np.ndarray
    n_retained: np.ndarray
    ranked: RetainedMetrics
    random: RetainedMetrics
    oracle: RetainedMetrics
    by: UncertaintyKind
    report_coverage: float | None
    n_random: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers, for JSON or MLflow ``log_dict``."""
        return {
            "coverages": self.coverages.tolist(),
            "n_retained": self.n_retained.tolist(),
            "ranked": self.ranked.to_dict(),
            "random": self.random.to_dict(),
            "oracle": self.oracle.to_dict(),
            "by": self.by,
            "report_coverage": self.report_coverage,
            "n_random": self.n_random,
            "seed": self.seed,
        }


def coverage_grid(coverages: Any, report_coverage: float | None) -> np.ndarray:
    """Sorted unique coverages in [0, 1], with the report's coverage added when given."""
    grid = [float(c) for c in np.atleast_1d(np.asarray(coverages, dtype=np.float64))]
    if report_coverage is not None:
        grid.append(float(report_coverage))
    if any(not 0.0 <= c <= 1.0 for c in grid):
        raise ValueError(f"coverages must lie in [0, 1], got {grid}")
    # Rounding merges e.g. 0.8 and 0.8000000000000002 from different arithmetic.
    return np.unique(np.round(grid, 10))


def n_retained(coverage: float, n: int) -> int:
    """Stays kept at a coverage: N minus the ceil((1 - coverage) * N) referred."""
    return n - n_referred(1.0 - coverage, n)


def _class_probs(probs: np.ndarray) -> np.ndarray:
    """(N,) binary risk -> (N, 2) as [1 - p, p]; (N, C) unchanged."""
    return np.stack([1.0 - probs, probs], axis=-1) if probs.ndim == 1 else probs


def per_stay_nll(probs: Any, labels: Any) -> np.ndarray:
    """(N,) -log p(y_n) of the mixture probabilities; its mean is the mixture NLL.

    Args:
        probs: (N,) binary risk or (N, C) mixture class probabilities.
        labels: shape (N,).

    Returns:
        shape (N,), nats (a probability of 0 for the label counts as 1e-300, not inf).
    """
    p = _class_probs(to_numpy(probs))
    y = as_labels(labels)
    return -np.log(np.clip(p[np.arange(y.shape[0]), y], 1e-300, None))


def per_stay_brier(probs: Any, labels: Any) -> np.ndarray:
    """(N,) squared error per stay; its mean is :func:`pipeline.metrics.brier`."""
    p = to_numpy(probs)
    y = as_labels(labels)
    if p.ndim == 1:
        return (p - y) ** 2
    return np.sum((p - np.eye(p.shape[1])[y]) ** 2, axis=1)


@dataclass(frozen=True)
class _Scored:
    """Per-stay quantities a retained subset's metrics are computed from."""

    probs: np.ndarray  # (N,) or (N, C)
    labels: np.ndarray  # (N,)
    nll: np.ndarray  # (N,)
    brier: np.ndarray  # (N,)
    correct: np.ndarray  # (N,) float 0/1


def _retained_values(scored: _Scored, kept: np.ndarray) -> tuple[float, ...]:
    """(nll, brier, ece, auroc, accuracy) of the stays indexed by ``kept``."""
    if kept.shape[0] == 0:
        return (math.nan,) * len(RETAINED_METRICS)
    p, y = scored.probs[kept], scored.labels[kept]
    return (
        float(scored.nll[kept].mean()),
        float(scored.brier[kept].mean()),
        ece(p, y),
        auroc(p, y) if p.ndim == 1 else math.nan,
        float(scored.correct[kept].mean()),
    )


def _curve(scored: _Scored, order: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(F, 5) retained metrics when stays are referred in ``order`` (first = referred first)."""
    n = order.shape[0]
    return np.array([_retained_values(scored, order[n - size :]) for size in sizes])


def _as_metrics(values: np.ndarray) -> RetainedMetrics:
    return RetainedMetrics(**{name: values[:, i] for i, name in enumerate(RETAINED_METRICS)})


def _random_mean(scored: _Scored, sizes: np.ndarray, n_random: int, seed: int) -> np.ndarray:
    """(F, 5) mean retained metrics over ``n_random`` seeded random referral orders."""
    rng = np.random.default_rng(seed)
    n = scored.labels.shape[0]
    runs = np.stack([_curve(scored, rng.permutation(n), sizes) for _ in range(n_random)])
    # A random subset can hold a single class (AUROC NaN); average the orders that define it.
    defined = np.isfinite(runs).sum(axis=0)
    return np.where(defined > 0, np.nansum(runs, axis=0) / np.maximum(defined, 1), math.nan)


def referral_curve_from_scores(
    probs: Any,
    labels: Any,
    uncertainty: Any,
    *,
    by: UncertaintyKind,
    coverages: Any = DEFAULT_COVERAGES,
    report_coverage: float | None = None,
    n_random: int = DEFAULT_RANDOM_ORDERS,
    seed: int = 0,
) -> ReferralCurve:
    """Referral curves from mixture probabilities and a precomputed uncertainty.

    Args:
        probs: (N,) binary risk or (N, C) mixture class probabilities.
        labels: shape (N,).
        uncertainty: shape (N,), larger = referred first.
        by: which uncertainty ``uncertainty`` is (recorded in the result).
        coverages: shares of stays kept, in [0, 1]; default 50%, 55%, ..., 100%.
        report_coverage: the report's coverage, added to the grid and recorded.
        n_random: number of random referral orders averaged (at least 1).
        seed: seed of the random orders; the same seed gives the same curve.

    Returns:
        A :class:`ReferralCurve`.
    """
    p = to_numpy(probs)
    y = as_labels(labels)
    order = referral_order(uncertainty)
    if p.shape[0] != y.shape[0] or order.shape[0] != y.shape[0]:
        raise ValueError("probs, labels and uncertainty must describe the same N cases")
    if n_random < 1:
        raise ValueError(f"n_random must be at least 1, got {n_random}")
    grid = coverage_grid(coverages, report_coverage)
    sizes = np.array([n_retained(float(c), y.shape[0]) for c in grid], dtype=np.int64)
    scored = _Scored(
        probs=p,
        labels=y,
        nll=per_stay_nll(p, y),
        brier=per_stay_brier(p, y),
        correct=(predicted_class(p) == y).astype(np.float64),
    )
    return ReferralCurve(
        coverages=grid,
        n_retained=sizes,
        ranked=_as_metrics(_curve(scored, order, sizes)),
        random=_as_metrics(_random_mean(scored, sizes, n_random, seed)),
        # Largest loss first: uses the labels; the lowest retained NLL any ranking can reach.
        oracle=_as_metrics(_curve(scored, referral_order(scored.nll), sizes)),
        by=by,
        report_coverage=None if report_coverage is None else float(report_coverage),
        n_random=int(n_random),
        seed=int(seed),
    )


def referral_curve(
    member_logits: Any,
    labels: Any,
    *,
    by: UncertaintyKind | None = None,
    coverages: Any = DEFAULT_COVERAGES,
    report_coverage: float | None = None,
    n_random: int = DEFAULT_RANDOM_ORDERS,
    seed: int = 0,
) -> ReferralCurve:
    """Referral curves of member logits, ranked by the default or a chosen uncertainty.

    Args:
        member_logits: shape (M, N) or (M, N, C).
        labels: shape (N,).
        by: the ranking uncertainty; None = :func:`default_ranking` (epistemic for M > 1,
            total for one path).
        coverages: shares of stays kept, default 50%, 55%, ..., 100%.
        report_coverage: the report's coverage, added to the grid and recorded.
        n_random: number of random referral orders averaged.
        seed: seed of the random orders.

    Returns:
        A :class:`ReferralCurve`.
    """
    unc = decompose(member_logits)
    chosen = unc.ranking if by is None else by
    return referral_curve_from_scores(
        unc.probs,
        labels,
        unc.score(chosen),
        by=chosen,
        coverages=coverages,
        report_coverage=report_coverage,
        n_random=n_random,
        seed=seed,
    )
