"""The image-benchmark jobs: train, then evaluate on clean and corrupted test images.

A rank-1 BNN, its deterministic twin or a deep ensemble is trained and evaluated, and
everything is logged to MLflow. The recipes (:func:`image_preset`, :data:`PRESETS`) live
with every other recipe in :mod:`pipeline.recipes`; the job config
(:class:`ImageJobConfig`) with the other configs in :mod:`pipeline.config`. This package:

* :mod:`pipeline.images.data`: the resumable epoch sampler, loaders, seeded evaluation;
* :mod:`pipeline.images.training`: :func:`build_model` and :func:`train_images`;
* :mod:`pipeline.images.validation`: :func:`validate_images` and its parts.
"""

from pipeline.config import ImageJobConfig
from pipeline.images.data import EpochShuffleSampler
from pipeline.images.training import (
    JOB_FILE,
    TASK,
    ImageMetrics,
    build_model,
    count_parameters,
    train_images,
)
from pipeline.images.validation import (
    CORRUPTION_METRICS,
    SUMMARY_PLOT,
    clean_metrics,
    corruption_summary,
    evaluate_corruption,
    load_image_run,
    log_validation,
    severity_curves,
    validate_images,
)
from pipeline.recipes import PRESETS, image_preset

__all__ = [
    "CORRUPTION_METRICS",
    "JOB_FILE",
    "PRESETS",
    "SUMMARY_PLOT",
    "TASK",
    "EpochShuffleSampler",
    "ImageJobConfig",
    "ImageMetrics",
    "build_model",
    "clean_metrics",
    "corruption_summary",
    "count_parameters",
    "evaluate_corruption",
    "image_preset",
    "load_image_run",
    "log_validation",
    "severity_curves",
    "train_images",
    "validate_images",
]
