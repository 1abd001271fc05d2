"""The MIMIC-III benchmark's sequence tasks: decompensation, length of stay, phenotyping.

* :mod:`~pipeline.tasks.data`: the tasks (:data:`TASKS`), one split's arrays
  (:class:`TaskData`) and :func:`load_task_split`.
* :mod:`~pipeline.tasks.batching`: :class:`StayBatches`, batches of whole length-bucketed
  stays with all their samples.
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
    los_bucket,
    task_spec,
)

__all__ = [
    "LOS_BUCKET_DAYS",
    "LOS_BUCKET_MEAN_HOURS",
    "TASKS",
    "StayBatches",
    "TaskData",
    "TaskName",
    "TaskSpec",
    "load_task_split",
    "los_bucket",
    "task_spec",
]
