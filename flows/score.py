"""Prefect flow ``score_mimic``: tonight's ICU patients scored by the approved model.

The flow form of :func:`pipeline.scoring.score_mimic`: a registered version (by default
``models:/mimic-ihm-rank1@champion``) scores the stays of a raw export, of the newest
export under a folder of dated exports (for a nightly schedule: ``flows/deployments.yaml``'s
``nightly-scoring``), or of an existing feature folder, and writes the per-patient report
with its drift section. The scoring run in MLflow holds cohort-level numbers only, and so
do the flow's result and its log lines: counts, the mean risk, the shares referred and
flagged, and the names of the variables that drifted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.params import ScoreParams, validate
from flows.tasks import retried_task

SCORE_TIMEOUT_S = 3600


def newest_export(exports_dir: Path) -> Path:
    """The sub-folder of ``exports_dir`` modified last that holds an ICUSTAYS table.

    Raises:
        ValueError: If no sub-folder holds one (one line, naming the folder).
    """
    from features.mimic.tables import MimicInputError, table_path

    def holds_tables(folder: Path) -> bool:
        try:
            table_path(folder, "ICUSTAYS")
        except MimicInputError:
            return False
        return True

    exports = [p for p in exports_dir.iterdir() if p.is_dir() and holds_tables(p)]
    if not exports:
        raise ValueError(f"{exports_dir}: no sub-folder holds an ICUSTAYS table to score")
    return max(exports, key=lambda p: (p.stat().st_mtime, p.name))


@retried_task(1, 10, timeout_seconds=SCORE_TIMEOUT_S)
def score_export(params: ScoreParams) -> dict[str, Any]:
    """Score the stays and log the run; the result holds no identifier.

    Returns:
        ``{"run_id", "model", "stays", "skipped", "as_of", "mean_risk", "referred",
        "unlike_training", "drifted", "files"}``.
    """
    from pipeline.scoring import score_mimic

    logger = get_run_logger()
    mimic_dir, out_dir = params.mimic_dir, params.out_dir
    if params.exports_dir is not None:
        mimic_dir = newest_export(params.exports_dir)
        out_dir = params.out_dir / mimic_dir.name
        logger.info("newest export: %s", mimic_dir)
    result = score_mimic(
        params.model_uri,
        out_dir,
        mimic_dir=mimic_dir,
        features_dir=params.features_dir,
        split=params.split,
        as_of=params.as_of,
        coverage=params.coverage,
        experiment=params.experiment,
        progress=False,
    )
    cohort = result.cohort
    drifted = [] if cohort.drift is None else [v.describe() for v in cohort.drift.major]
    logger.info(
        "%s scored %d stays (mean risk %.3f; %d referred, %s unlike training); skipped %s",
        result.model.describe(),
        cohort.stays,
        cohort.mean_risk,
        cohort.referred,
        "n/a" if cohort.unlike_training is None else cohort.unlike_training,
        cohort.skipped or "none",
    )
    for line in drifted:
        logger.warning("drift: %s", line)
    return {
        "run_id": result.run_id,
        "model": result.model.describe(),
        "stays": cohort.stays,
        "skipped": cohort.skipped,
        "as_of": None if cohort.as_of is None else cohort.as_of.isoformat(sep=" "),
        "mean_risk": cohort.mean_risk,
        "referred": cohort.referred,
        "unlike_training": cohort.unlike_training,
        "drifted": drifted,
        "files": {kind: str(path) for kind, path in result.files.items()},
    }


@flow(name="score-mimic", validate_parameters=False)
def score_mimic(params: ScoreParams) -> dict[str, Any]:
    """Score new ICU stays with a registered model; write the report, log the run.

    Args:
        params: :class:`flows.params.ScoreParams` (or a mapping of them), checked first.

    Returns:
        See :func:`score_export`.
    """
    params = validate("score_mimic", ScoreParams, params)
    return score_export(params)
