"""Evaluation plots: reliability diagram, risk histogram by outcome, referral curve.

A binary risk's reliability diagram is of the predicted risk itself (bins over [0, 1],
observed share of the outcome, per-bin counts); a multi-class one is of top-label
confidence.

Figures are built with ``matplotlib.figure.Figure`` directly and rendered by the Agg canvas,
never through ``pyplot``: no GUI backend is touched, no window can open, and figures are not
kept alive in pyplot's global registry (which leaks memory in long pipelines).
Each ``*_figure`` function returns a Figure and, given ``path``, also writes it as an
owner-only PNG. Use :func:`figure_png_bytes` / :func:`figure_base64` to embed a figure in
HTML or log it to MLflow.
"""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from features.io import write_private_bytes
from pipeline.metrics import DEFAULT_N_BINS, as_labels, reliability_bins, risk_bins, to_numpy
from pipeline.uncertainty import ReferralCurve

_FIGSIZE = (5.0, 4.0)
_DPI = 100


def _new_figure() -> Figure:
    fig = Figure(figsize=_FIGSIZE, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png_bytes(fig: Figure) -> bytes:
    """Render a figure to PNG bytes (Agg), without the 'Software' metadata chunk."""
    buffer = io.BytesIO()
    # Dropping the metadata keeps PNGs byte-stable and free of the matplotlib URL.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def figure_base64(fig: Figure) -> str:
    """Base64 text of the figure's PNG, for ``<img src="data:image/png;base64,...">``."""
    return base64.b64encode(figure_png_bytes(fig)).decode("ascii")


def save_png(fig: Figure, path: str | os.PathLike) -> Path:
    """Write the figure as an owner-only (0600) PNG, atomically."""
    return write_private_bytes(path, figure_png_bytes(fig))


def _maybe_save(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        save_png(fig, path)
    return fig


def reliability_figure(
    probs: Any,
    labels: Any,
    *,
    raw: Any = None,
    n_bins: int = DEFAULT_N_BINS,
    title: str = "Reliability diagram",
    path: str | os.PathLike | None = None,
) -> Figure:
    """Reliability diagram; a binary risk gets :func:`risk_reliability_figure`.

    A binary task is drawn as predicted risk of the outcome against the observed share
    (top-label confidence would fold it into [0.5, 1] and mix the two outcomes); a
    multi-class task as accuracy against top-label confidence, which is the right reading
    there.

    Args:
        probs: mixture probabilities, (N,) binary risk or (N, C).
        labels: shape (N,).
        raw: optional uncalibrated probabilities of the same shape, drawn beside ``probs``
            (binary only).
        n_bins: number of bins (same binning as the ECE).
        title: figure title.
        path: optional PNG destination.

    Returns:
        The figure.
    """
    if to_numpy(probs).ndim == 1:
        return risk_reliability_figure(
            probs, labels, raw=raw, n_bins=n_bins, title=title, path=path
        )
    if raw is not None:
        raise ValueError("raw probabilities are drawn for a binary risk only")
    return _top_label_reliability_figure(probs, labels, n_bins=n_bins, title=title, path=path)


def _top_label_reliability_figure(
    probs: Any, labels: Any, *, n_bins: int, title: str, path: str | os.PathLike | None
) -> Figure:
    """Accuracy vs mean top-label confidence per equal-width bin (multi-class)."""
    bins = reliability_bins(probs, labels, n_bins)
    fig = _new_figure()
    ax = fig.add_subplot()
    centers = (bins["lower"] + bins["upper"]) / 2
    width = bins["upper"] - bins["lower"]
    nonempty = bins["count"] > 0
    ax.bar(
        centers[nonempty],
        bins["accuracy"][nonempty],
        width=width[nonempty],
        edgecolor="black",
        color="#4c78a8",
        label="observed accuracy",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    ax.plot(
        bins["confidence"][nonempty],
        bins["accuracy"][nonempty],
        marker="o",
        linestyle="none",
        color="#e45756",
        label="bin mean confidence",
    )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-label probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    return _maybe_save(fig, path)


def risk_reliability_figure(
    risk: Any,
    labels: Any,
    *,
    raw: Any = None,
    n_bins: int = DEFAULT_N_BINS,
    title: str = "Reliability diagram",
    path: str | os.PathLike | None = None,
) -> Figure:
    """Observed share who died against predicted risk of death, with per-bin counts.

    The upper panel has one point per non-empty bin of predicted risk on [0, 1] at (mean
    predicted risk, share who died), for the calibrated and, if given, the raw risk, and
    the diagonal where the two agree. The lower panel shows how many stays each bin
    holds, since a bin of three stays says little.

    Args:
        risk: shape (N,), calibrated predicted risk of death.
        labels: shape (N,), 1 = died, 0 = survived.
        raw: optional shape (N,), the risk before calibration.
        n_bins: number of equal-width bins on [0, 1] (same binning as the ECE).
        title: figure title.
        path: optional PNG destination.

    Returns:
        The figure.
    """
    curves = [("calibrated", risk_bins(risk, labels, n_bins), "#e45756", "o")]
    if raw is not None:
        curves.insert(0, ("raw", risk_bins(raw, labels, n_bins), "#4c78a8", "s"))
    fig = Figure(figsize=(_FIGSIZE[0], _FIGSIZE[1] * 1.3), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="predicted = observed")
    for name, bins, color, marker in curves:
        shown = bins.count > 0
        top.plot(
            bins.mean_risk[shown],
            bins.observed[shown],
            marker=marker,
            color=color,
            label=f"{name} risk",
        )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("observed share who died")
    top.set_title(title)
    top.legend(loc="upper left", fontsize="small")
    calibrated = curves[-1][1]
    centers = (calibrated.lower + calibrated.upper) / 2
    width = calibrated.upper - calibrated.lower
    bottom.bar(centers, calibrated.count, width=width, color="#bbbbbb", edgecolor="black")
    for x, count in zip(centers, calibrated.count, strict=True):
        if count > 0:
            bottom.text(x, count, str(int(count)), ha="center", va="bottom", fontsize="x-small")
    bottom.set_ylabel("stays")
    bottom.set_ylim(0, max(1, int(calibrated.count.max())) * 1.3)
    bottom.set_xlabel("predicted risk of death (calibrated; 0 = survives, 1 = dies)")
    return _maybe_save(fig, path)


def risk_histogram_figure(
    risk: Any,
    labels: Any,
    *,
    n_bins: int = 20,
    title: str = "Predicted risk of death, by outcome",
    path: str | os.PathLike | None = None,
) -> Figure:
    """Histogram of predicted risk, one series per observed outcome (binary task).

    Args:
        risk: shape (N,), predicted probability of the positive outcome.
        labels: shape (N,), 0/1.
        n_bins: histogram bins on [0, 1].
        title: axes title.
        path: optional PNG destination.

    Returns:
        The figure.
    """
    r = to_numpy(risk)
    y = as_labels(labels)
    if r.shape != y.shape:
        raise ValueError(f"risk {r.shape} and labels {y.shape} must both be (N,)")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    fig = _new_figure()
    ax = fig.add_subplot()
    for outcome, color, name in ((0, "#4c78a8", "survived"), (1, "#e45756", "died")):
        subset = r[y == outcome]
        ax.hist(subset, bins=edges, alpha=0.6, color=color, label=f"{name} (n={subset.size})")
    ax.set_xlim(0, 1)
    ax.set_xlabel("predicted risk of death")
    ax.set_ylabel("number of stays")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return _maybe_save(fig, path)


# What each referral panel shows, in words a clinician reads; lower is better except AUROC.
_REFERRAL_PANELS = (
    ("nll", "log loss (NLL) of kept stays (lower is better)"),
    ("brier", "Brier score of kept stays (lower is better)"),
    ("ece", "calibration error of kept stays (lower is better)"),
    ("auroc", "AUROC of kept stays (higher is better)"),
)
_RANKING_WORDS = {
    "epistemic": "model disagreement (epistemic)",
    "total": "total uncertainty",
    "aleatoric": "data noise (aleatoric)",
}


def referral_figure(
    curve: ReferralCurve,
    *,
    title: str = "Referral: how the stays the model keeps fare as the rest go to a clinician",
    path: str | os.PathLike | None = None,
) -> Figure:
    """Retained-stays NLL, Brier, ECE and AUROC against coverage, three referral strategies.

    One panel per metric (2 x 2), each with the model's ranking, random referral and the
    oracle (which uses the outcomes). AUROC is shown beside the others, never alone: at low
    prevalence referring uncertain stays removes most deaths, so the kept stays' AUROC can
    fall while every kept risk is better. The ECE of few stays is biased upwards by its
    binning (see the random curve rise as coverage falls), so compare strategies at the
    same coverage, not a coverage with another. For a multi-class curve (AUROC undefined)
    the fourth panel shows accuracy.

    Args:
        curve: a :class:`pipeline.uncertainty.ReferralCurve`.
        title: figure title.
        path: optional PNG destination.

    Returns:
        The figure.
    """
    fig = Figure(figsize=(9.0, 7.5), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True).ravel()
    percent = 100 * curve.coverages
    strategies = (
        (curve.ranked, f"refer by {_RANKING_WORDS[curve.by]}", "#4c78a8", "o", "-"),
        (curve.random, f"refer at random (mean of {curve.n_random})", "grey", None, "--"),
        (curve.oracle, "oracle: refer worst-predicted first (uses outcomes)", "#54a24b", None, ":"),
    )
    panels = list(_REFERRAL_PANELS)
    if not np.any(np.isfinite(curve.ranked.auroc)):
        panels[3] = ("accuracy", "accuracy of kept stays (higher is better)")
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for metrics, name, color, marker, style in strategies:
            ax.plot(
                percent,
                getattr(metrics, metric),
                marker=marker,
                markersize=3,
                linestyle=style,
                color=color,
                label=name,
            )
        if curve.report_coverage is not None:
            ax.axvline(
                100 * curve.report_coverage,
                color="#e45756",
                linewidth=1,
                label=f"this report keeps {100 * curve.report_coverage:g}%",
            )
        ax.set_ylabel(label, fontsize="small")
        ax.grid(alpha=0.3)
    for ax in axes[2:]:
        ax.set_xlabel("share of stays kept by the model (%)")
    # One legend below the panels: inside an axes it hides the curves it explains.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize="small")
    fig.suptitle(title)
    return _maybe_save(fig, path)


def severity_figure(
    curves: dict[str, dict[str, dict[int, float]]],
    *,
    metrics: tuple[str, ...] = ("accuracy", "nll", "ece"),
    title: str = "Metrics under corruption",
    path: str | os.PathLike | None = None,
) -> Figure:
    """Metric vs corruption severity, one panel per metric and one line per run.

    Severity 0 is the clean test set; severities 1-5 are means over the corruption types.

    Args:
        curves: run label -> metric name -> {severity: value}. Missing points are skipped.
        metrics: Metric names, one panel each.
        title: Figure title.
        path: Optional PNG destination.

    Returns:
        The figure.
    """
    fig = Figure(figsize=(4.0 * len(metrics), 3.6), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        for label, values in curves.items():
            points = sorted(values.get(metric, {}).items())
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", label=label)
        ax.set_xlabel("severity (0 = clean)")
        ax.set_ylabel(metric)
        ax.set_xticks(range(0, 6))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.suptitle(title)
    return _maybe_save(fig, path)


def trajectory_figure(
    hours: Any, risk: Any, low: Any, high: Any, *, title: str = "Risk trajectory"
) -> Figure:
    """One stay's hourly risk with its credible interval as a band.

    Args:
        hours: ``(T,)`` prediction hours since ICU admission.
        risk: ``(T,)`` calibrated risk at each hour.
        low: ``(T,)`` lower end of the interval.
        high: ``(T,)`` upper end of the interval.
        title: Figure title.

    Returns:
        The figure.
    """
    fig = Figure(figsize=(4.0, 2.6), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.fill_between(hours, low, high, color="#4c78a8", alpha=0.25, label="interval")
    ax.plot(hours, risk, color="#4c78a8", label="risk")
    ax.set_ylim(0, 1)
    ax.set_xlabel("hours since ICU admission")
    ax.set_ylabel("risk of death in 24 h")
    ax.set_title(title, fontsize="small")
    return fig
