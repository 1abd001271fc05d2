"""Referral: the default ranking, and curves against random referral and the oracle."""

import json

import numpy as np
import polars as pl
import pytest
from scipy.stats import spearmanr

from pipeline import metrics
from pipeline import uncertainty as unc
from pipeline.report import build_report_table, render_html

PAID_COVERAGES = [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]


def logit(p):
    p = np.asarray(p, dtype=np.float64)
    return np.log(p) - np.log1p(-p)


def disagreement_cohort():
    """100 stays, every risk below 0.5, where member disagreement marks the noisy labels.

    * 60 stays: both members say 0.4 and 24 of them die (the risk is right).
    * 40 stays: members say 0.02 and 0.18 (mixture 0.1) but half of them die, so their
      labels are noise relative to the mean prediction.

    Total entropy ranks the 0.4 stays (entropy 0.67) above the 0.1 stays (0.33): it refers
    the well-predicted stays first. Only the members' disagreement points at the bad ones.
    """
    agree_labels = np.array([1, 0, 1, 0, 0] * 12)  # 24 of 60 die, spread evenly
    noisy_labels = np.array([1, 0] * 20)  # 20 of 40 die
    members = np.concatenate(
        [np.full((2, 60), 0.4), np.stack([np.full(40, 0.02), np.full(40, 0.18)])], axis=1
    )
    # Interleave the groups so the input order (the stable sort's tie-break) favours neither.
    perm = np.random.default_rng(0).permutation(100)
    labels = np.concatenate([agree_labels, noisy_labels])[perm]
    return logit(members[:, perm]), labels


def test_members_rank_by_epistemic_one_path_falls_back_to_total():
    members = logit(np.array([[0.1, 0.3, 0.2], [0.3, 0.1, 0.2]]))
    out = unc.decompose(members)
    assert out.n_paths == 2 and out.ranking == "epistemic"
    np.testing.assert_array_equal(out.score(), out.epistemic)
    single = unc.decompose(members[:1])
    assert single.n_paths == 1 and single.ranking == "total"
    np.testing.assert_array_equal(single.score(), single.total)
    assert unc.default_ranking(4) == "epistemic" and unc.default_ranking(1) == "total"
    with pytest.raises(ValueError):
        unc.default_ranking(0)
    assert unc.referral_curve(members[:1], [0, 1, 0], n_random=2).by == "total"


def test_total_entropy_is_the_risk_below_one_half():
    """Why total entropy is not the default: below 0.5 it ranks exactly like the risk."""
    rng = np.random.default_rng(1)
    members = rng.normal(-2.0, 0.6, size=(4, 200))
    out = unc.decompose(members)
    assert out.probs.max() < 0.5
    assert spearmanr(out.total, out.probs).statistic == pytest.approx(1.0)
    assert spearmanr(out.epistemic, out.probs).statistic < 0.9


def test_epistemic_referral_beats_random_and_total_does_not():
    logits, labels = disagreement_cohort()
    by_default = unc.referral_curve(logits, labels, coverages=PAID_COVERAGES)
    by_total = unc.referral_curve(logits, labels, coverages=PAID_COVERAGES, by="total")
    assert by_default.by == "epistemic"
    assert np.all(by_default.ranked.nll < by_default.random.nll)
    assert np.all(by_total.ranked.nll >= by_total.random.nll)
    # Same seed, same random orders: the two curves' random strategy is the same.
    np.testing.assert_array_equal(by_default.random.nll, by_total.random.nll)


def test_random_referral_is_deterministic_for_a_seed():
    logits, labels = disagreement_cohort()
    first = unc.referral_curve(logits, labels, n_random=20, seed=7)
    again = unc.referral_curve(logits, labels, n_random=20, seed=7)
    other = unc.referral_curve(logits, labels, n_random=20, seed=8)
    for name in unc.RETAINED_METRICS:
        np.testing.assert_array_equal(getattr(first.random, name), getattr(again.random, name))
    assert not np.array_equal(first.random.nll, other.random.nll)
    assert first.seed == 7 and first.n_random == 20


def test_oracle_bounds_random_and_ranked_nll():
    rng = np.random.default_rng(2)
    members = rng.normal(-1.5, 1.0, size=(6, 150))
    labels = (rng.random(150) < 0.2).astype(int)
    curve = unc.referral_curve(members, labels, n_random=30)
    # Referring the largest per-stay losses first leaves the smallest possible mean loss
    # (equal at full coverage, up to the order of summation).
    assert np.all(curve.oracle.nll <= curve.random.nll + 1e-12)
    assert np.all(curve.oracle.nll <= curve.ranked.nll + 1e-12)
    assert np.all(curve.oracle.nll[:-1] < curve.random.nll[:-1])
    # For a binary outcome NLL and squared error both grow as p(y) falls: same order.
    assert np.all(curve.oracle.brier <= curve.random.brier + 1e-12)


def test_full_coverage_is_the_mixture_of_members():
    logits, labels = disagreement_cohort()
    curve = unc.referral_curve(logits, labels, coverages=[1.0], n_random=3)
    risk = metrics.mixture_probs(logits)
    for strategy in (curve.ranked, curve.random, curve.oracle):
        assert strategy.nll[0] == pytest.approx(metrics.mixture_nll(logits, labels))
        assert strategy.brier[0] == pytest.approx(metrics.brier(risk, labels))
        assert strategy.ece[0] == pytest.approx(metrics.ece(risk, labels))
        assert strategy.auroc[0] == pytest.approx(metrics.auroc(risk, labels))
    # The mixture, not the sigmoid of the mean logit (0.1 vs about 0.065 for 0.02 / 0.18).
    naive = 1 / (1 + np.exp(-logits.mean(axis=0)))
    assert curve.ranked.brier[0] != pytest.approx(metrics.brier(naive, labels))


def test_coverage_grid_holds_the_report_coverage_and_shapes_agree():
    logits, labels = disagreement_cohort()
    curve = unc.referral_curve(logits, labels, report_coverage=0.83, n_random=2)
    assert 0.83 in curve.coverages.tolist() and curve.report_coverage == 0.83
    assert curve.coverages.shape == (12,) and np.all(np.diff(curve.coverages) > 0)
    np.testing.assert_array_equal(
        curve.n_retained, [100 - unc.n_referred(1 - c, 100) for c in curve.coverages]
    )
    for strategy in (curve.ranked, curve.random, curve.oracle):
        for name in unc.RETAINED_METRICS:
            assert getattr(strategy, name).shape == (12,)
    # The report's own coverage keeps exactly the stays its refer flags keep.
    at_report = curve.n_retained[curve.coverages.tolist().index(0.83)]
    flags = unc.refer_flags(unc.decompose(logits).epistemic, 0.83)
    assert at_report == (~flags).sum()
    # Already in the grid: not added twice.
    assert unc.referral_curve(logits, labels, report_coverage=0.8, n_random=2).coverages.shape == (
        11,
    )
    with pytest.raises(ValueError):
        unc.referral_curve(logits, labels, coverages=[1.2], n_random=2)


def stays_for(labels):
    n = len(labels)
    return pl.DataFrame(
        {
            "subject_id": np.arange(n),
            "hadm_id": np.arange(n),
            "icustay_id": np.arange(n),
            "label": labels,
        }
    )


def test_report_flags_follow_the_default_ranking_and_the_page_checks_it():
    logits, labels = disagreement_cohort()
    stays = stays_for(labels)
    table = build_report_table(stays, logits, 1.0, coverage=0.6)
    epistemic = unc.decompose(logits).epistemic
    np.testing.assert_array_equal(table["refer"].to_numpy(), unc.refer_flags(epistemic, 0.6))
    assert "ranked by epistemic uncertainty" in render_html(table, title="t", coverage=0.6)
    # A page that would name a ranking other than the one behind the flags refuses.
    with pytest.raises(ValueError, match="refer flags"):
        render_html(table, title="t", coverage=0.6, referral_by="total")
    one_path = build_report_table(stays, logits[:1], 1.0, coverage=0.6)
    total = unc.decompose(logits[:1]).total
    np.testing.assert_array_equal(one_path["refer"].to_numpy(), unc.refer_flags(total, 0.6))
    assert "ranked by total" in render_html(one_path, title="t", coverage=0.6, referral_by="total")


def test_to_dict_is_strict_json():
    logits = np.array([[[5.0, 0.0]], [[0.0, 5.0]]]).repeat(4, axis=1)
    curve = unc.referral_curve(logits, [0, 1, 0, 1], n_random=2)
    record = json.loads(json.dumps(curve.to_dict(), allow_nan=False))
    assert record["ranked"]["auroc"] == [None] * 11  # undefined for multi-class
    assert record["ranked"]["nll"] == pytest.approx(curve.ranked.nll.tolist())
