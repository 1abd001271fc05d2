"""The MIMIC-III benchmark's sequence tasks: decompensation, length of stay, phenotyping.

* :mod:`~pipeline.tasks.data`: the tasks (:data:`TASKS`), one split's arrays
  (:class:`TaskData`) and :func:`load_task_split`.
* :mod:`~pipeline.tasks.batching`: :class:`StayBatches`, batches of whole length-bucketed
  stays with all their samples.
* :mod:`~pipeline.tasks.evaluate`: the benchmark metrics beside NLL/Brier/ECE, temperature
  scaling (one per label for phenotyping) and the per-sample uncertainty decomposition.
* :mod:`~pipeline.tasks.job`: :func:`train_task`, the training job (one MLflow run in the
  task's experiment, ``mimic-<task>``) with its typed :class:`TaskMetrics`.
"""

from pipeline.tasks.batching import StayBatches
from pipeline.tasks.data import (
    LOS_BUCKET_DAYS,
    LOS_BUCKET_MEAN_HOURS,
    TASKS,
    TaskData,
    TaskName,
    TaskSpec,
    load_task_split,
    task_data,
    task_spec,
)
from pipeline.tasks.evaluate import (
    LabelTemperatures,
    SampleUncertainty,
    fit_scaler,
    sample_uncertainty,
    task_metrics,
    task_referral,
)
from pipeline.tasks.job import TaskMetrics, predict_task, train_task

__all__ = [
    "LOS_BUCKET_DAYS",
    "LOS_BUCKET_MEAN_HOURS",
    "TASKS",
    "LabelTemperatures",
    "SampleUncertainty",
    "TaskMetrics",
    "StayBatches",
    "TaskData",
    "TaskName",
    "TaskSpec",
    "fit_scaler",
    "load_task_split",
    "task_data",
    "predict_task",
    "sample_uncertainty",
    "task_metrics",
    "task_referral",
    "task_spec",
    "train_task",
]
