"""Does a model's per-patient uncertainty flag stays unlike its training ones? Cohort comparison.

A logged run (:func:`pipeline.ehr.train_ehr`) scores two cohorts with its temperature-scaled
member logits: an *in-distribution* cohort (a split of the feature folder it trained on)
and a *shifted* one (the stays of a second feature folder, z-scored with the training
folder's normaliser by :func:`pipeline.cohorts.load_normalised_as`: refitting the
statistics on the new cohort would re-centre it onto the training one and hide the shift).
For each cohort :class:`CohortScore` holds AUROC, mixture NLL and ECE against the true risk
where the stays record one, and, for the shifted cohort, the AUROC with which each
uncertainty of :func:`pipeline.uncertainty.decompose` (total entropy, aleatoric entropy,
epistemic mutual information, width of the 5-95% member interval) separates its stays
(label 1) from the in-distribution ones (label 0); 0.5 is chance. Spearman(epistemic,
predicted risk) says how much the epistemic part carries that the risk does not.

Either cohort can be narrowed to the stays whose stays-table column has one value
(:class:`Where`, e.g. ``dbsource=carevue``): real MIMIC-III charts with CareVue (2001-2008)
or MetaVision (2008-2012), and ``features.mimic.extract`` keeps each stay's ``dbsource``,
so one feature folder of the full database gives both cohorts. A model trained on that
folder has seen both charting systems: comparing its test stays by ``dbsource`` measures
whether its uncertainty differs between them, not how it meets a system it never saw (for
that, train on a folder extracted from the stays of one system only).

``bench/shift.py`` uses these functions for its synthetic shifts and its own-cohort mode;
``flows.shift.compare_cohorts`` (``rank1 compare-cohorts``) for a user's cohorts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from features.mimic.loader import load_split
from features.mimic.manifest import STAYS_FILE, load_manifest
from features.mimic.tables import IDENTIFIER_COLUMNS
from pipeline import tracking
from pipeline.calibration import TemperatureScaler
from pipeline.cohorts import load_normalised_as
from pipeline.config import TrainConfig
from pipeline.ehr import check_trained_on, feature_fingerprint, load_scorer
from pipeline.metrics import auroc, ece_against_truth, mixture_nll
from pipeline.predict import predict_logits
from pipeline.uncertainty import PredictiveUncertainty, decompose

IN_DISTRIBUTION = "in-distribution"
#: The uncertainties compared, in the order of :class:`CohortScore`'s ``detect_*`` fields.
UNCERTAINTIES = ("total", "aleatoric", "epistemic", "interval")
#: Stays columns a cohort may not be chosen by: identifiers and admission times would put
#: a patient's identifier (or date) into the logged comparison.
UNSELECTABLE_COLUMNS = frozenset(IDENTIFIER_COLUMNS | {"intime", "outtime"})
_WHERE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.+)$")


@dataclass(frozen=True)
class Cohort:
    """Stays scored by a model, normalised with its training folder's statistics.

    Attributes:
        name: ``"in-distribution"``, a shift's name or a description of the stays.
        x: (N, hours, channels) float32 inputs.
        y: (N,) 0/1 outcomes.
        true_risk: (N,) the risk each outcome was drawn from, or None (real data).
        base_risk: (N,) the base cohort's planted formula on the same levels, i.e. what a
            perfect model of the training cohort predicts, or None (real data).
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor
    true_risk: np.ndarray | None
    base_risk: np.ndarray | None


@dataclass(frozen=True)
class CohortScore:
    """One model on one cohort (NaN where a number is undefined).

    Attributes:
        cohort: The cohort's name.
        stays: Stays scored.
        deaths: Of which died.
        auroc: AUROC of the calibrated mixture risk (NaN with one class only).
        planted_auroc: AUROC of the cohort's true risk on the same stays.
        nll: Mixture NLL of the calibrated member logits, nats.
        ece_true_risk: ECE of the calibrated risk against the true risk.
        ece_base_risk: ECE against the base formula's risk on the same stays: low here and
            high against the true risk means the model learnt the base cohort well and the
            world changed; equal to ``ece_true_risk`` in distribution.
        detect_total: AUROC of total entropy separating these stays from the in-distribution
            ones (NaN for the in-distribution cohort itself).
        detect_aleatoric: The same for the aleatoric entropy.
        detect_epistemic: The same for the epistemic part (mutual information).
        detect_interval: The same for the width of the member interval.
        spearman_epistemic_risk: Spearman(epistemic, predicted risk) on these stays.
    """

    cohort: str
    stays: int
    deaths: int
    auroc: float
    planted_auroc: float
    nll: float
    ece_true_risk: float
    ece_base_risk: float
    detect_total: float
    detect_aleatoric: float
    detect_epistemic: float
    detect_interval: float
    spearman_epistemic_risk: float


@dataclass(frozen=True)
class Where:
    """The stays of a cohort whose stays-table ``column`` reads ``value`` (as text).

    Attributes:
        column: A column of ``stays.parquet``, e.g. ``dbsource``.
        value: Its value, compared as text, e.g. ``carevue``.
    """

    column: str
    value: str

    @classmethod
    def parse(cls, text: str) -> Where:
        """``"COLUMN=VALUE"`` as a :class:`Where`.

        Raises:
            ValueError: One line, if ``text`` is not ``COLUMN=VALUE`` or names an
                identifier or time column (:data:`UNSELECTABLE_COLUMNS`).
        """
        match = _WHERE.match(text)
        if match is None:
            raise ValueError(f"a cohort filter is COLUMN=VALUE (dbsource=carevue), got {text!r}")
        where = cls(match.group(1), match.group(2))
        if where.column in UNSELECTABLE_COLUMNS:
            raise ValueError(
                f"cohorts cannot be chosen by {where.column!r}: identifiers and times would "
                "reach the logged comparison"
            )
        return where

    def __str__(self) -> str:
        return f"{self.column}={self.value}"

    def rows(self, stays: pl.DataFrame, folder: Path) -> np.ndarray:
        """Indices of the stays that match, in order.

        Raises:
            ValueError: One line naming the stays table if it has no such column.
        """
        if self.column not in stays.columns:
            raise ValueError(
                f"{folder / STAYS_FILE}: no column {self.column!r} to choose stays by "
                f"(columns: {', '.join(stays.columns)})"
            )
        return np.flatnonzero((stays[self.column].cast(pl.String) == self.value).to_numpy())


@dataclass(frozen=True)
class CohortComparison:
    """A run's two cohorts scored side by side (cohort-level numbers only).

    Attributes:
        run_id: The scored run.
        parameters: Its model's parameter count, all members together.
        in_distribution: The in-distribution cohort's score.
        shifted: The shifted cohort's score, with its detection AUROCs.
        features_fingerprint: Fingerprint of the run's feature folder (``check_trained_on``).
        shifted_fingerprint: Fingerprint of the shifted folder.
        split: The in-distribution split.
        shifted_split: The shifted folder's split, or None for every stay.
        in_dist_where: The filter of the in-distribution stays, or None.
        shifted_where: The filter of the shifted stays, or None.
    """

    run_id: str
    parameters: int
    in_distribution: CohortScore
    shifted: CohortScore
    features_fingerprint: str
    shifted_fingerprint: str
    split: str
    shifted_split: str | None
    in_dist_where: Where | None
    shifted_where: Where | None

    def settings(self) -> dict[str, str]:
        """What was compared, as MLflow params: fingerprints, splits and filters, no paths."""
        return {
            "source_run_id": self.run_id,
            "features_fingerprint": self.features_fingerprint,
            "shifted_fingerprint": self.shifted_fingerprint,
            "split": self.split,
            "shifted_split": self.shifted_split or "all",
            "in_dist_where": str(self.in_dist_where or "all"),
            "shifted_where": str(self.shifted_where or "all"),
        }

    def metrics(self) -> dict[str, float]:
        """Every number of both cohorts, as ``in_dist/<field>`` and ``shifted/<field>``."""
        logged = {}
        for prefix, score in (("in_dist", self.in_distribution), ("shifted", self.shifted)):
            for field in dataclasses.fields(CohortScore):
                value = getattr(score, field.name)
                if field.name != "cohort" and not (prefix == "in_dist" and "detect" in field.name):
                    logged[f"{prefix}/{field.name}"] = float(value)
        return logged


def uncertainty_scores(u: PredictiveUncertainty) -> dict[str, np.ndarray]:
    """The four per-stay uncertainties compared, by name (:data:`UNCERTAINTIES`).

    Args:
        u: The decomposition of (S, N) member logits.

    Returns:
        Name -> (N,) scores; larger means more uncertain.
    """
    return {
        "total": u.total,
        "aleatoric": u.aleatoric,
        "epistemic": u.epistemic,
        "interval": u.interval_high - u.interval_low,
    }


def detection_auroc(in_dist: np.ndarray, shifted: np.ndarray) -> float:
    """AUROC with which a score separates shifted stays (label 1) from in-distribution ones.

    Args:
        in_dist: (N0,) scores of the in-distribution stays.
        shifted: (N1,) scores of the shifted stays; larger should mean "shifted".

    Returns:
        The AUROC (ties count one half, so a constant score gives 0.5); NaN if either side
        is empty.
    """
    if in_dist.size == 0 or shifted.size == 0:
        return math.nan
    labels = np.concatenate([np.zeros(in_dist.size), np.ones(shifted.size)])
    return float(roc_auc_score(labels, np.concatenate([in_dist, shifted])))


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rho of two (N,) arrays, NaN when either side is constant (a deterministic MI)."""
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def decomposed(logits: np.ndarray) -> PredictiveUncertainty:
    """``decompose`` of (S, N) logits, with the epistemic part of one path set to exactly 0.

    With one path the mutual information is 0 by definition, but ``decompose`` computes it
    as a difference of two entropies evaluated in different ways, which leaves float noise
    of ~1e-17 nats; ranking stays by that noise would give a deterministic model a
    meaningless detection AUROC and Spearman instead of 0.5 and NaN.
    """
    u = decompose(logits)
    if logits.shape[0] == 1:
        u = dataclasses.replace(u, epistemic=np.zeros_like(u.epistemic))
    return u


def calibrated_logits(
    model: torch.nn.Module, scaler: TemperatureScaler, config: TrainConfig, x: torch.Tensor
) -> np.ndarray:
    """Temperature-scaled (S * K, N) member logits of (N, hours, channels) inputs.

    Evaluated on the CPU as every job evaluates (``predict_logits``' fixed seed).
    """
    return scaler.apply(predict_logits(model, x, config, torch.device("cpu")))


def score_cohorts(
    model: torch.nn.Module,
    scaler: TemperatureScaler,
    config: TrainConfig,
    cohorts: list[Cohort],
) -> list[CohortScore]:
    """One score per cohort; ``cohorts[0]`` is the in-distribution one the others are detected from.

    Args:
        model: The trained model.
        scaler: Its fitted temperature.
        config: Evaluation settings (``num_eval_samples``).
        cohorts: The in-distribution cohort first, then the shifted ones.

    Returns:
        A :class:`CohortScore` per cohort, in order; the first has NaN detection AUROCs.
    """
    scored = []
    for cohort in cohorts:
        logits = calibrated_logits(model, scaler, config, cohort.x)
        scored.append((cohort, logits, decomposed(logits)))
    reference = uncertainty_scores(scored[0][2])
    results = []
    for index, (cohort, logits, u) in enumerate(scored):
        scores = uncertainty_scores(u)
        detect = {
            name: math.nan if index == 0 else detection_auroc(reference[name], scores[name])
            for name in UNCERTAINTIES
        }
        y = cohort.y.numpy()
        truth, base = cohort.true_risk, cohort.base_risk
        results.append(
            CohortScore(
                cohort=cohort.name,
                stays=int(y.size),
                deaths=int(y.sum()),
                auroc=auroc(u.probs, y),
                planted_auroc=math.nan if truth is None else auroc(truth, y),
                nll=mixture_nll(logits, y),
                ece_true_risk=math.nan if truth is None else ece_against_truth(u.probs, truth),
                ece_base_risk=math.nan if base is None else ece_against_truth(u.probs, base),
                **{f"detect_{name}": value for name, value in detect.items()},
                spearman_epistemic_risk=rank_correlation(u.epistemic, u.probs),
            )
        )
    return results


def true_risk(stays: pl.DataFrame) -> np.ndarray | None:
    """The stays' ``true_risk`` column (synthetic cohorts only), or None."""
    return stays["true_risk"].to_numpy() if "true_risk" in stays.columns else None


def _subset(
    loaded: tuple[torch.Tensor, torch.Tensor, pl.DataFrame],
    where: Where | None,
    folder: Path,
    name: str,
    what: str,
) -> Cohort:
    """The loaded stays that ``where`` keeps, as a cohort; refuses an empty one."""
    x, y, stays = loaded
    if where is not None:
        keep = where.rows(stays, folder)
        rows = torch.from_numpy(keep)
        x, y, stays = x[rows], y[rows], stays[keep.tolist()] if keep.size else stays.clear()
    if stays.height == 0:
        raise ValueError(f"{folder}: no stays in {what}{f' where {where}' if where else ''}")
    return Cohort(name, x, y, true_risk(stays), None)


def compare_cohorts(
    run_id: str,
    features_dir: str | os.PathLike,
    shifted_dir: str | os.PathLike,
    *,
    split: str = "test",
    shifted_split: str | None = None,
    in_dist_where: Where | None = None,
    shifted_where: Where | None = None,
) -> CohortComparison:
    """Score a logged run on its own folder's ``split`` and on a second folder's stays.

    Nothing is written: the caller logs or prints the result.

    Args:
        run_id: An MLflow run written by :func:`pipeline.ehr.train_ehr`.
        features_dir: The feature folder the run trained on (checked by fingerprint).
        shifted_dir: The feature folder to compare with (the same channels and hours);
            scored with ``features_dir``'s normaliser. May be ``features_dir`` itself,
            with ``shifted_split`` other than ``"train"`` and a ``shifted_where`` filter.
        split: The in-distribution split of ``features_dir``.
        shifted_split: The split of ``shifted_dir`` to score, or None for every stay (a
            user's other cohort was not trained on, so all of it is unseen).
        in_dist_where: Keep only these in-distribution stays (e.g. ``dbsource=carevue``).
        shifted_where: Keep only these shifted stays (e.g. ``dbsource=metavision``).

    Returns:
        The two cohorts' scores and what was compared.

    Raises:
        FeatureFolderError: If ``features_dir`` is not the run's folder, or the folders'
            channels or hours differ, or a file is missing (one line naming it).
        ValueError: One line, if a cohort is empty, a filter names no column of the
            stays table, or ``shifted_dir`` is the run's folder scored on stays it was
            trained on.
        pipeline.tracking.TrackingError: If the run does not exist.
    """
    features, shifted = Path(features_dir), Path(shifted_dir)
    if features.resolve() == shifted.resolve() and shifted_split in (None, "train"):
        # The run fitted its training stays (and their noise): as "shifted" they would
        # look more familiar than any unseen stay and the detection AUROC would mean nothing.
        raise ValueError(
            f"{shifted}: the run's own feature folder; compare another of its splits "
            "(val or test), not stays the model was trained on"
        )
    fingerprint = check_trained_on(run_id, features)
    model, scaler, config = load_scorer(run_id)
    reference = _subset(
        load_split(features, split), in_dist_where, features, IN_DISTRIBUTION, f"its {split} split"
    )
    what = f"its {shifted_split} split" if shifted_split else "it"
    other = _subset(
        load_normalised_as(shifted, features, split=shifted_split),
        shifted_where,
        shifted,
        str(shifted_where) if shifted_where else shifted.name,
        what,
    )
    in_dist, shifted_score = score_cohorts(model, scaler, config, [reference, other])
    return CohortComparison(
        run_id=run_id,
        parameters=sum(p.numel() for p in model.parameters()),
        in_distribution=in_dist,
        shifted=shifted_score,
        features_fingerprint=fingerprint,
        shifted_fingerprint=feature_fingerprint(load_manifest(shifted)),
        split=split,
        shifted_split=shifted_split,
        in_dist_where=in_dist_where,
        shifted_where=shifted_where,
    )


def log_comparison(comparison: CohortComparison, experiment: str) -> str:
    """Log a comparison to a new MLflow run tagged with the scored run; return its id.

    A run of its own, not the training run: the training run records one training and its
    own test metrics, and one model is compared with many cohorts, each comparison with its
    own settings; reopened, the training run's metrics would be overwritten by the last one.

    Args:
        comparison: From :func:`compare_cohorts`.
        experiment: MLflow experiment of the comparison runs.

    Returns:
        The new run's id. Its params are :meth:`CohortComparison.settings` (no paths, no
        identifiers), its metrics :meth:`CohortComparison.metrics`, and its tag
        ``rank1.source_run`` the scored run's id.
    """
    with tracking.start_run(
        experiment,
        params=comparison.settings(),
        tags={"rank1.source_run": comparison.run_id, "rank1.kind": "cohort-comparison"},
    ) as run:
        tracking.log_metrics(comparison.metrics())
        return run.info.run_id
