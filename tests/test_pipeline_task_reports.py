"""Per-patient reports of the whole-stay tasks, from hand-made member logits."""

from __future__ import annotations

import stat

import numpy as np
import polars as pl
import pytest

from pipeline.report.tasks import (
    decompensation_report,
    length_of_stay_report,
    phenotyping_report,
    write_task_report,
)
from pipeline.tasks import LOS_BUCKET_MEAN_HOURS


def _samples(hours_per_stay: dict[int, list[int]]) -> pl.DataFrame:
    rows = [
        (stay, stay * 10, stay * 100, h) for stay, hours in hours_per_stay.items() for h in hours
    ]
    return pl.DataFrame(rows, schema=["subject_id", "hadm_id", "icustay_id", "hour"], orient="row")


def test_decompensation_report_keeps_each_hour_and_flags_the_latest(tmp_path):
    samples = _samples({1: [5, 6, 7], 2: [5, 6], 3: [5]})
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, samples.height))
    logits[:, 4] = [-6.0, 6.0, -6.0, 6.0]  # stay 2's latest hour: members disagree
    report = decompensation_report(
        samples.with_columns(label=pl.lit(0)), logits, 2.0, coverage=0.67
    )
    assert report.rows.height == 6 and report.rows["hour"].to_list() == [5, 6, 7, 5, 6, 5]
    risk = 1 / (1 + np.exp(-logits / 2.0))
    np.testing.assert_allclose(report.rows["risk"].to_numpy(), risk.mean(axis=0))
    latest = dict(zip(report.stays["icustay_id"], report.stays["hour"], strict=True))
    assert latest == {100: 7, 200: 6, 300: 5}
    # One of three stays referred: the one whose members disagree at its latest hour.
    assert report.stays.filter(pl.col("refer"))["icustay_id"].to_list() == [200]
    paths = write_task_report(report, tmp_path / "report")
    page = paths["html"].read_text()
    assert page.count("data:image/png;base64") == 3 and "1 of 3 stays referred (33%)" in page
    for path in paths.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert pl.read_csv(paths["csv"]).height == 6


def test_length_of_stay_report_gives_a_bucket_distribution():
    samples = _samples({1: [5, 6]})
    logits = np.zeros((2, 2, 10))
    logits[:, 0, 8] = 5.0  # first sample: 8-14 days
    report = length_of_stay_report(samples, logits, 1.0)
    probs = report.rows.select(pl.selectors.starts_with("p_")).to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert report.rows["predicted_bucket"][0] == 8
    assert report.rows["predicted_remaining_hours"][0] == pytest.approx(LOS_BUCKET_MEAN_HOURS[8])
    with pytest.raises(ValueError, match="expected"):
        length_of_stay_report(samples, logits[:, :, :9], 1.0)


def test_phenotyping_report_rows_are_stay_then_phenotype():
    stays = _samples({1: [0], 2: [0]}).drop("hour")
    names = [f"condition {j}" for j in range(25)]
    logits = np.full((3, 2, 25), -4.0)
    logits[:, 1, 3] = 4.0  # stay 2 is likely to have condition 3
    temperatures = np.ones(25)
    report = phenotyping_report(stays, logits, temperatures, names, labels=np.zeros((2, 25)))
    assert report.rows.height == 50
    row = report.rows.filter(pl.col("icustay_id") == 200, pl.col("phenotype") == "condition 3")
    assert row["risk"][0] > 0.9
    summary = dict(zip(report.stays["icustay_id"], report.stays["likely_phenotypes"], strict=True))
    assert summary == {100: 0, 200: 1}
    assert report.stays["most_likely"][1].startswith("condition 3 (98%)")
