"""bench/shift.py's seed means and tables (the benchmark itself is run by hand).

Its scoring helpers are ``pipeline.shift``'s, tested in tests/test_pipeline_shift.py.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

# The bench scripts import their siblings (machine, ehr_synthetic) as top-level modules.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import shift  # noqa: E402


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
