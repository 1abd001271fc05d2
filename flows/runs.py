"""Flow and task runs left RUNNING by a killed process: tag them, then set them Crashed.

A process killed with SIGKILL (``kill -9``, the OOM killer) cannot report its end, so its
Prefect flow and task runs stay RUNNING forever. The CLI runs each flow inside
:func:`owned_by_this_process`: every run it creates carries a tag naming this process
(host, pid, start time; see ``pipeline.tracking.ProcessId``), and before it starts, the runs
tagged by processes on this host that are gone are set Crashed. Runs of other hosts are
left alone (whether their process lives cannot be told from here). SIGTERM and Ctrl-C need
none of this: Prefect itself ends those runs Crashed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pipeline.tracking import ProcessId, process_alive, this_process

TAG_PREFIX = "rank1-process:"
_UNFINISHED = ("RUNNING", "PENDING")


def process_tag(process: ProcessId | None = None) -> str:
    """The run tag naming ``process`` (default: this one)."""
    p = process or this_process()
    return f"{TAG_PREFIX}{p.host}:{p.pid}:{p.start}"


def tag_owner(tags: list[str]) -> ProcessId | None:
    """The process named by a :func:`process_tag` among ``tags``, or None."""
    for tag in tags:
        if tag.startswith(TAG_PREFIX):
            host, pid, start = tag[len(TAG_PREFIX) :].rsplit(":", 2)
            if pid.isdigit():
                return ProcessId(host, int(pid), start)
    return None


def _is_stale(tags: list[str]) -> bool:
    owner = tag_owner(tags)
    return owner is not None and process_alive(owner) is False


def crash_stale_runs() -> int:
    """Set Crashed the unfinished flow and task runs whose tagged process is gone.

    Returns:
        How many runs were set Crashed.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    types = [StateType(name) for name in _UNFINISHED]
    message = "its process ended without reporting (killed?); found by a later run"
    crashed = 0
    with get_client(sync_client=True) as client:
        flow_runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=types))
            )
        )
        for run in flow_runs:
            if _is_stale(run.tags):
                client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                crashed += 1
        task_runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(
                state=TaskRunFilterState(type=TaskRunFilterStateType(any_=types))
            )
        )
        for run in task_runs:
            if _is_stale(run.tags):
                client.set_task_run_state(run.id, Crashed(message=message), force=True)
                crashed += 1
    return crashed


@contextmanager
def owned_by_this_process() -> Iterator[None]:
    """Set stale runs Crashed, then tag every run started in the block with this process.

    The clean-up is best effort: if the Prefect API cannot be read here, the flow itself
    reports that properly.
    """
    from prefect import tags
    from prefect.logging import get_logger

    logger = get_logger("rank1.runs")
    try:
        crashed = crash_stale_runs()
    except Exception as err:  # noqa: BLE001 - a cosmetic clean-up must not stop a run
        logger.warning("could not look for stale Prefect runs: %s", str(err).splitlines()[0])
    else:
        if crashed:
            logger.info("set %d Prefect run(s) of dead processes to Crashed", crashed)
    with tags(process_tag()):
        yield
