"""pipeline.shift: scoring helpers on constructed arrays, and the cohort filter."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from pipeline import shift


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


def test_where_parses_column_and_value_and_refuses_identifiers_and_times():
    where = shift.Where.parse("dbsource=carevue")
    assert (where.column, where.value, str(where)) == ("dbsource", "carevue", "dbsource=carevue")
    for text in ("dbsource", "=carevue", "dbsource="):
        with pytest.raises(ValueError, match="COLUMN=VALUE"):
            shift.Where.parse(text)
    for column in ("subject_id", "icustay_id", "intime"):
        with pytest.raises(ValueError, match=f"cannot be chosen by '{column}'"):
            shift.Where.parse(f"{column}=1")


def test_where_keeps_the_matching_stays_in_order_and_names_a_missing_column(tmp_path):
    stays = pl.DataFrame({"dbsource": ["carevue", "metavision", "carevue"], "age": [70, 50, 60]})
    assert shift.Where.parse("dbsource=carevue").rows(stays, tmp_path).tolist() == [0, 2]
    # Compared as text, so a number column is chosen by its printed value.
    assert shift.Where.parse("age=50").rows(stays, tmp_path).tolist() == [1]
    with pytest.raises(ValueError, match=r"stays.parquet: no column 'unit'"):
        shift.Where.parse("unit=MICU").rows(stays, tmp_path)
