"""The names of the four mimic3-benchmarks tasks, importable without polars.

The command line and the flows' parameter models name tasks before any data is read, and
``rank1 --help`` must not load polars (see :mod:`features.mimic.tasks` for the tasks).
"""

from __future__ import annotations

from typing import Literal

#: The four benchmark tasks, as named on the command line.
TASKS = ("ihm", "decompensation", "length-of-stay", "phenotyping")
Task = Literal["ihm", "decompensation", "length-of-stay", "phenotyping"]
#: The tasks built on whole stays (variable-length hourly rows).
SequenceTask = Literal["decompensation", "length-of-stay", "phenotyping"]
SEQUENCE_TASKS: tuple[SequenceTask, ...] = ("decompensation", "length-of-stay", "phenotyping")
