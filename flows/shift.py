"""Prefect flow ``compare_cohorts``: does a trained run's uncertainty flag a second cohort?

The user-facing form of the shift benchmark (``bench/shift.py``): a run written by
``train_mimic`` scores its own feature folder's test split (in distribution) and a second
cohort (another feature folder, or another split of the same one, optionally narrowed by a
stays column such as ``dbsource``: CareVue vs MetaVision stays of real MIMIC-III), with
``pipeline.shift.compare_cohorts``. The flow logs the cohort-level numbers to a new MLflow
run tagged ``rank1.source_run`` with the scored run (why a new run:
``pipeline.shift.log_comparison``) and, with an ``out_dir``, writes them to an owner-only
``comparison.json``.

Nothing per patient leaves the task: the result, the logs, the MLflow run and the file hold
counts, metrics, fingerprints and the filters as given. A bad input (an unknown run, a
folder with other channels, an empty cohort) fails before anything is logged or written.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from prefect import flow, get_run_logger

from flows.params import CompareParams, validate
from flows.tasks import retried_task

COMPARE_TIMEOUT_S = 3600
#: The file written into ``out_dir``.
COMPARISON_FILE = "comparison.json"


@retried_task(2, 10, timeout_seconds=COMPARE_TIMEOUT_S)
def score_and_log(params: CompareParams) -> dict[str, Any]:
    """Score both cohorts, log the comparison run, write ``comparison.json`` if asked.

    Returns:
        ``{"comparison_run_id", "source_run_id", "settings", "in_distribution",
        "shifted", "json" (path or None)}``; the two cohorts as
        :class:`pipeline.shift.CohortScore` fields.
    """
    from features.io import make_private_dir, write_private_text
    from pipeline.shift import Where, compare_cohorts, log_comparison

    logger = get_run_logger()

    def where(text: str | None) -> Where | None:
        return None if text is None else Where.parse(text)

    comparison = compare_cohorts(
        params.run_id,
        params.features_dir,
        params.shifted_dir,
        split=params.split,
        shifted_split=params.shifted_split,
        in_dist_where=where(params.in_dist_where),
        shifted_where=where(params.shifted_where),
    )
    # Only now, with both cohorts scored, is anything logged or written.
    run_id = log_comparison(comparison, params.experiment)
    result = {
        "comparison_run_id": run_id,
        "source_run_id": params.run_id,
        "settings": comparison.settings(),
        "in_distribution": dataclasses.asdict(comparison.in_distribution),
        "shifted": dataclasses.asdict(comparison.shifted),
        "json": None,
    }
    if params.out_dir is not None:
        path = make_private_dir(params.out_dir) / COMPARISON_FILE
        # NaN (an AUROC of a one-class cohort) as null: strict JSON readers refuse NaN.
        text = json.dumps(_nan_as_none(result), indent=2) + "\n"
        result["json"] = str(write_private_text(path, text))
    for name in ("in_distribution", "shifted"):
        score = result[name]
        logger.info(
            "%s: %d stays (%d deaths), AUROC %.3f, NLL %.4f",
            name,
            score["stays"],
            score["deaths"],
            score["auroc"],
            score["nll"],
        )
    shifted = result["shifted"]
    logger.info(
        "detection AUROC: total %.3f, aleatoric %.3f, epistemic %.3f, interval %.3f "
        "(MLflow run %s)",
        shifted["detect_total"],
        shifted["detect_aleatoric"],
        shifted["detect_epistemic"],
        shifted["detect_interval"],
        run_id,
    )
    return result


def _nan_as_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _nan_as_none(item) for key, item in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value


@flow(name="compare-cohorts", validate_parameters=False)
def compare_cohorts(params: CompareParams) -> dict[str, Any]:
    """Score a trained run on its in-distribution stays and on a second cohort.

    Args:
        params: :class:`flows.params.CompareParams` (or a mapping of them), checked first.

    Returns:
        See :func:`score_and_log`.
    """
    params = validate("compare_cohorts", CompareParams, params)
    return score_and_log(params)
