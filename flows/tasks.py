"""The project's Prefect task policy, in one place: which failures are retried, no caching.

Every task of the flows is declared with :func:`retried_task`, so the retry condition and
the cache policy cannot drift between flows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE


def retry_transient(task_obj: Any, task_run: Any, state: Any) -> bool:
    """Retry condition: retry only failures that may pass on a second try.

    A ``ValueError`` (bad input table, bad config, empty split; ``MimicInputError`` and
    ``ConfigError`` are ValueErrors) fails the same way every time, so retrying it only
    delays the error. I/O errors, a locked tracking database or a lost server may pass.

    Args:
        task_obj: The task (unused; part of Prefect's callback signature).
        task_run: The task run (unused).
        state: The failed state.

    Returns:
        Whether Prefect should apply the task's retry policy.
    """
    error = state.result(raise_on_failure=False)
    return not isinstance(error, ValueError)


def retried_task(retries: int, delay_s: float, **options: Any) -> Callable[..., Any]:
    """Prefect's ``@task`` retrying only transient failures (:func:`retry_transient`).

    Args:
        retries: Retries after the first try.
        delay_s: Seconds between tries.
        **options: Further ``prefect.task`` options (``task_run_name``, ``timeout_seconds``,
            ``persist_result``).

    Returns:
        The task decorator. Results are never cached: every run reads its inputs afresh.
    """
    return task(
        retries=retries,
        retry_delay_seconds=delay_s,
        retry_condition_fn=retry_transient,
        cache_policy=NO_CACHE,
        **options,
    )


def train_each_method(train_task: Callable[..., str], params: Any) -> dict[str, str]:
    """Run ``train_task(params, method, run_name)`` for each of ``params.methods`` in turn.

    Models train one after another: each already uses every core (or the GPU). Each MLflow
    run is named ``<method>-<flow run name>``, so the runs of one flow run go together.

    Returns:
        ``{method: MLflow run id}``.
    """
    from prefect.runtime import flow_run

    prefix = flow_run.get_name()
    return {
        method: train_task(params, method, f"{method}-{prefix}" if prefix else method)
        for method in params.methods
    }
