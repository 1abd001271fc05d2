"""bench/shift.py's helpers on constructed arrays (the benchmark itself is run by hand)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

# The bench scripts import their siblings (machine, ehr_synthetic) as top-level modules.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import shift  # noqa: E402


def test_detection_auroc_is_chance_for_equal_scores_and_one_for_separated_ones():
    same = np.full(5, 0.3)
    assert shift.detection_auroc(same, np.full(7, 0.3)) == 0.5
    assert shift.detection_auroc(np.array([0.1, 0.2]), np.array([0.3, 0.4, 0.5])) == 1.0
    assert shift.detection_auroc(np.array([0.3, 0.4]), np.array([0.1, 0.2])) == 0.0
    assert math.isnan(shift.detection_auroc(np.array([]), np.array([0.1])))


def test_rank_correlation_is_nan_for_a_constant_side():
    a = np.array([0.1, 0.5, 0.2, 0.9])
    assert shift.rank_correlation(a, a**3) == pytest.approx(1.0)
    assert math.isnan(shift.rank_correlation(np.zeros(4), a))


def test_a_single_forward_path_has_exactly_zero_epistemic_uncertainty_and_width():
    logits = np.array([[-3.0, -1.2, 0.4, 2.0]])
    u = shift.decomposed(logits)
    assert np.array_equal(u.epistemic, np.zeros(4))
    assert np.array_equal(u.interval_high - u.interval_low, np.zeros(4))
    members = shift.decomposed(np.array([[-3.0, 0.0], [-1.0, 0.5]]))
    assert (members.epistemic > 0).all()


def _row(seed, auroc, detect):
    return shift.ShiftRow(
        seed=seed, method="m", cohort="c", parameters=100, stays=10, deaths=3, auroc=auroc,
        planted_auroc=0.8, nll=0.4, ece_true_risk=0.02, ece_base_risk=0.03,
        detect_total=detect, detect_aleatoric=detect, detect_epistemic=detect,
        detect_interval=detect,
        spearman_epistemic_risk=math.nan,
    )  # fmt: skip


def test_seed_means_average_each_number_and_ignore_nan():
    (mean,) = shift.seed_means([_row(0, 0.7, math.nan), _row(1, 0.8, 0.6)])
    assert mean.seed == -1 and mean.stays == 10 and mean.parameters == 100
    assert mean.auroc == pytest.approx(0.75)
    assert mean.detect_epistemic == pytest.approx(0.6)
    assert math.isnan(mean.spearman_epistemic_risk)
    table = shift.markdown_table([mean], ("auroc", "spearman_epistemic_risk"))
    assert table.splitlines()[-1] == "| mean | m | c | 0.7500 | n/a |"
