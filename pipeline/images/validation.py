"""Validating an image run: corrupted test images, the spec section 7 summary and plot.

:func:`validate_images` reloads a run's model and logs per-corruption, per-severity metrics
to the same run, with the summary (for each severity the mean over corruptions, then the
mean over severities), the run's clean test metrics as ``clean/*`` and a summary plot.
:func:`evaluate_corruption` evaluates one (corruption, severity) cell of a loaded model
(:func:`load_image_run`, once for all cells), and :func:`log_validation` logs cells
computed elsewhere (e.g. by parallel Prefect tasks).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence

from torch import nn

from pipeline import plots, tracking
from pipeline.config import ImageJobConfig
from pipeline.images.data import evaluate_on
from pipeline.images.training import JOB_FILE
from pipeline.jobs import model_tag
from pipeline.train import resolve_device

SUMMARY_PLOT = "plots/corruption_severity.png"
#: Metrics that get per-cell and summary entries under ``corrupt/``.
CORRUPTION_METRICS = ("accuracy", "nll", "ece")

#: One cell's seeded prediction at a time. The rank-1 layers draw their noise from torch's
#: global generator (``rank1`` takes no generator), and ``predict_logits`` seeds that
#: generator with ``EVAL_SEED`` inside ``torch.random.fork_rng``, which does not guard
#: against other threads: cells evaluated in parallel threads (``flows.images`` runs up to
#: four) drew from each other's stream, restored each other's RNG state and switched the
#: shared model between eval and train mode, so corrupted metrics changed from run to run.
#: Under this lock every cell draws exactly what it draws in a sequential run. The cost:
#: predictions (including the on-the-fly corruption, which runs inside the loader) no
#: longer overlap; a ``generator=`` argument in ``rank1``'s sampling would lift it.
_PREDICT_LOCK = threading.Lock()


def load_image_run(run_id: str) -> tuple[nn.Module, ImageJobConfig]:
    """The model (on CPU, eval mode) and job config logged by :func:`train_images`.

    The model is rebuilt from its weights and JSON config; nothing is unpickled (see
    :func:`pipeline.tracking.load_model`). Load it once and share it between evaluations:
    evaluating does not change it.

    Raises:
        ModelArtifactError: If the run's model files are missing, foreign or tampered with.
    """
    job = ImageJobConfig.from_dict(tracking.load_dict(run_id, JOB_FILE))
    model = tracking.load_model(run_id, map_location="cpu")
    return model, job


def evaluate_corruption(
    model: nn.Module,
    job: ImageJobConfig,
    corruption: str,
    severity: int,
    *,
    data_dir: str | os.PathLike | None = None,
    corrupted_dir: str | os.PathLike | None = None,
    device: str = "auto",
    num_workers: int | None = None,
) -> dict[str, float]:
    """Metrics of one (corruption, severity) cell of the corrupted test set.

    Args:
        model: The trained model.
        job: Its job config (dataset, split seed, corruption seed, eval samples).
        corruption: A corruption name (``features.images.corruptions.available_corruptions``
            or, with ``corrupted_dir``, a file of the official release).
        severity: 1 to 5.
        data_dir: Clean data folder (default: the job's).
        corrupted_dir: Official CIFAR-C / ImageNet-C release; None generates on the fly.
        device: Where to run.
        num_workers: DataLoader workers (default: the job's).

    Returns:
        ``multiclass_metrics`` of the cell: accuracy, nll, ece, brier, per-member, ...
        They depend only on the model, the job's seeds, the corruption and the severity,
        also when several cells are evaluated at once in threads (see ``_PREDICT_LOCK``).
    """
    from features.images.datasets import load_corrupted

    dev = resolve_device(device)
    dataset = load_corrupted(
        job.dataset,
        corruption,
        severity,
        data_dir if data_dir is not None else job.data_dir,
        corrupted_dir,
        corruption_seed=job.corruption_seed,
        seed=job.split_seed,
        image_size=job.image_size,
    )
    with _PREDICT_LOCK:
        return evaluate_on(model.to(dev), dataset, job, dev, num_workers)


def corruption_summary(
    cells: Mapping[tuple[str, int], Mapping[str, float]],
    metrics: Sequence[str] = CORRUPTION_METRICS,
) -> dict[str, float]:
    """Per-cell metric names and the spec section 7 summary.

    For each severity the metric is averaged over the corruptions, then the per-severity
    means are averaged over severities (equal to the mean over all cells when every
    corruption has every severity).

    Args:
        cells: ``(corruption, severity) -> metrics`` of each evaluated cell.
        metrics: Which metrics to summarise.

    Returns:
        ``corrupt/<corruption>/<severity>/<metric>`` for each cell,
        ``corrupt/mean/<severity>/<metric>`` for each severity and ``corrupt/mean/<metric>``.
    """
    if not cells:
        raise ValueError("no corruption cells to summarise")
    out: dict[str, float] = {}
    for (corruption, severity), values in cells.items():
        for m in metrics:
            out[f"corrupt/{corruption}/{severity}/{m}"] = float(values[m])
    severities = sorted({s for _, s in cells})
    for m in metrics:
        per_severity = []
        for s in severities:
            row = [float(v[m]) for (_, sev), v in cells.items() if sev == s]
            out[f"corrupt/mean/{s}/{m}"] = sum(row) / len(row)
            per_severity.append(out[f"corrupt/mean/{s}/{m}"])
        out[f"corrupt/mean/{m}"] = sum(per_severity) / len(per_severity)
    return out


def severity_curves(
    metrics: Mapping[str, float], names: Sequence[str] = CORRUPTION_METRICS
) -> dict[str, dict[int, float]]:
    """Metric -> {severity: value} from a run's logged metrics (severity 0 = clean)."""
    curves: dict[str, dict[int, float]] = {}
    for m in names:
        points: dict[int, float] = {}
        clean = metrics.get(f"clean/{m}", metrics.get(f"test/{m}"))
        if clean is not None:
            points[0] = float(clean)
        for s in range(1, 6):
            if f"corrupt/mean/{s}/{m}" in metrics:
                points[s] = float(metrics[f"corrupt/mean/{s}/{m}"])
        curves[m] = points
    return curves


def clean_metrics(run_id: str) -> dict[str, float]:
    """``clean/<metric>`` of a run: its ``test/<metric>``, the one clean evaluation.

    The clean test set was evaluated once, by :func:`~pipeline.images.train_images`, with
    the seeded evaluation; evaluating it again here would be a second measurement of the
    same thing (and, beside cells evaluated in parallel threads that share torch's random
    generator, not even a repeatable one).
    """
    metrics = tracking.run_metrics(run_id)
    return {
        f"clean/{m}": float(metrics[f"test/{m}"])
        for m in CORRUPTION_METRICS
        if f"test/{m}" in metrics
    }


def log_validation(
    run_id: str,
    cells: Mapping[tuple[str, int], Mapping[str, float]],
    *,
    compare_run_id: str | None = None,
) -> dict[str, float]:
    """Log clean and corrupted metrics, the summary and the severity plot to a run.

    Args:
        run_id: The evaluated run (reopened; nothing else of it changes). Its clean test
            metrics are logged again as ``clean/*`` (see :func:`clean_metrics`).
        cells: ``(corruption, severity) -> metrics``.
        compare_run_id: Another run (e.g. the deterministic twin) drawn beside this one in
            ``plots/corruption_severity.png``; it needs logged ``corrupt/mean/*`` metrics
            (from its own validation) to show more than its clean point.

    Returns:
        Every metric logged (``clean/*`` and ``corrupt/*``).
    """
    logged = corruption_summary(cells) | clean_metrics(run_id)

    def label(rid: str) -> str:
        try:
            other = ImageJobConfig.from_dict(tracking.load_dict(rid, JOB_FILE))
            return f"{model_tag(other.train, other.model)} ({rid[:8]})"
        except Exception:  # noqa: BLE001 - a label is cosmetic; fall back to the id
            return rid[:8]

    curves = {label(run_id): severity_curves(logged)}
    if compare_run_id is not None:
        curves[label(compare_run_id)] = severity_curves(tracking.run_metrics(compare_run_id))
    by_run = {run: {m: curves[run].get(m, {}) for m in CORRUPTION_METRICS} for run in curves}
    fig = plots.severity_figure(by_run, title="Clean (0) and mean corrupted metrics")
    with tracking.resume_run(run_id):
        tracking.log_metrics(logged)
        tracking.log_figure(fig, SUMMARY_PLOT)
    return logged


def validate_images(
    run_id: str,
    corruptions: Sequence[str] | None = None,
    severities: Sequence[int] = (1, 2, 3, 4, 5),
    *,
    data_dir: str | os.PathLike | None = None,
    corrupted_dir: str | os.PathLike | None = None,
    compare_run_id: str | None = None,
    device: str = "auto",
    num_workers: int | None = None,
) -> dict[str, float]:
    """Evaluate a run's model on corrupted test images; log them and its clean metrics.

    Args:
        run_id: A run written by :func:`train_images`.
        corruptions: Corruption names (None: every generated corruption).
        severities: Severities 1-5.
        data_dir: Clean data folder (default: the one the run was trained with).
        corrupted_dir: Official corrupted release (None: generate on the fly).
        compare_run_id: A second run drawn in the summary plot.
        device: Where to run.
        num_workers: DataLoader workers (default: the job's).

    Returns:
        The logged metrics: ``clean/*``, ``corrupt/<c>/<s>/*``, ``corrupt/mean/<s>/*``,
        ``corrupt/mean/*``.
    """
    from features.images.corruptions import SEVERITIES, available_corruptions

    names = list(available_corruptions() if corruptions is None else corruptions)
    if not names:
        raise ValueError("no corruptions given")
    bad = [s for s in severities if s not in SEVERITIES]
    if bad or not severities:
        raise ValueError(f"severities must be among {SEVERITIES}, got {list(severities)}")
    model, job = load_image_run(run_id)
    cells = {
        (c, s): evaluate_corruption(
            model,
            job,
            c,
            s,
            data_dir=data_dir,
            corrupted_dir=corrupted_dir,
            device=device,
            num_workers=num_workers,
        )  # fmt: skip
        for c in names
        for s in severities
    }
    return log_validation(run_id, cells, compare_run_id=compare_run_id)
