"""Run status: a run ended by a signal is KILLED, one left RUNNING by a dead process FAILED."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from features.io import pid_alive
from pipeline.tracking.errors import _translates_mlflow_errors
from pipeline.tracking.store import _mlflow

#: Tags that tie a run to its resumable training and to the process that runs it, so a
#: later process can tell a run left RUNNING by a dead process from one still training.
RESUME_KEY_TAG = "rank1.resume_key"
HOST_TAG = "rank1.host"
PID_TAG = "rank1.pid"
PROCESS_START_TAG = "rank1.process_start"


@dataclasses.dataclass(frozen=True)
class ProcessId:
    """One process, told apart from a later process that reuses its pid.

    Attributes:
        host: The machine's hostname.
        pid: The process id.
        start: The process's start time in clock ticks since boot (``/proc/<pid>/stat``),
            or ``""`` where there is no ``/proc``.
    """

    host: str
    pid: int
    start: str


def _process_start(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return stat.rsplit(")", 1)[1].split()[19]


def this_process() -> ProcessId:
    """The :class:`ProcessId` of the calling process."""
    import socket

    return ProcessId(socket.gethostname(), os.getpid(), _process_start(os.getpid()))


def process_alive(process: ProcessId) -> bool | None:
    """Whether ``process`` still runs: None when it ran on another host (cannot tell).

    A pid reused by a newer process counts as dead when start times are available.
    """
    if process.host != this_process().host:
        return None
    if not pid_alive(process.pid):
        return False
    return not process.start or _process_start(process.pid) in ("", process.start)


def process_tags(resume_key: str) -> dict[str, str]:
    """Tags for a new run: its resume key and the identity of this process."""
    me = this_process()
    return {
        RESUME_KEY_TAG: resume_key,
        HOST_TAG: me.host,
        PID_TAG: str(me.pid),
        PROCESS_START_TAG: me.start,
    }


@_translates_mlflow_errors
def fail_stale_runs(experiment: str, resume_key: str) -> list[str]:
    """Mark FAILED the runs with this resume key left RUNNING by a process that is gone.

    A process killed with SIGKILL (or a lost machine) cannot end its run, which then stays
    RUNNING forever. Runs of a process on another host are left alone: whether it is alive
    cannot be told from here.

    Args:
        experiment: The experiment to search.
        resume_key: The :data:`RESUME_KEY_TAG` value of the training being resumed.

    Returns:
        The ids of the runs set to FAILED.
    """
    if not re.fullmatch(r"[0-9a-f]+", resume_key):
        raise ValueError(f"resume key must be lowercase hex, got {resume_key[:20]!r}")
    client = _mlflow().MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{RESUME_KEY_TAG}` = '{resume_key}' and attributes.status = 'RUNNING'",
    )
    failed = []
    for run in runs:
        tags = run.data.tags
        try:
            owner = ProcessId(tags[HOST_TAG], int(tags[PID_TAG]), tags.get(PROCESS_START_TAG, ""))
        except (KeyError, ValueError):
            continue  # not started by train_ehr with a resume key: not ours to judge
        if process_alive(owner) is False:
            client.set_terminated(run.info.run_id, "FAILED")
            failed.append(run.info.run_id)
    return failed


@contextmanager
def killed_on_interrupt() -> Iterator[None]:
    """End the active run as KILLED when the block is interrupted, not FAILED.

    MLflow ends a run FAILED on any exception. Ctrl-C (KeyboardInterrupt), SIGTERM (which
    the CLI and Prefect turn into an exception that is not an ``Exception``) and
    ``SystemExit`` stop a healthy run from outside: those end it KILLED. Use inside
    ``with start_run(...)``.
    """
    try:
        yield
    except (Exception, GeneratorExit):
        raise
    except BaseException:
        mlflow = _mlflow()
        if mlflow.active_run() is not None:
            mlflow.end_run("KILLED")
        raise
