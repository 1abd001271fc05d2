import math

import numpy as np
import pytest
import torch

from pipeline import uncertainty as unc


def logit(p):
    p = np.asarray(p, dtype=np.float64)
    return np.log(p) - np.log1p(-p)


def h(p):
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_identical_members_have_no_epistemic_uncertainty():
    logits = np.tile(logit([0.2, 0.7, 0.95]), (4, 1))
    out = unc.decompose(logits)
    np.testing.assert_allclose(out.epistemic, 0.0, atol=1e-12)
    np.testing.assert_allclose(out.total, [h(0.2), h(0.7), h(0.95)])
    np.testing.assert_allclose(out.aleatoric, out.total)
    np.testing.assert_allclose(out.probs, [0.2, 0.7, 0.95])
    np.testing.assert_allclose(out.interval_low, out.interval_high)


def test_confident_disagreement_is_epistemic():
    logits = logit(np.array([[0.01], [0.99], [0.01], [0.99]]))
    out = unc.decompose(torch.tensor(logits))
    assert out.probs[0] == pytest.approx(0.5)
    assert out.total[0] == pytest.approx(math.log(2))
    assert out.aleatoric[0] == pytest.approx(h(0.01))
    assert out.epistemic[0] == pytest.approx(math.log(2) - h(0.01))
    assert out.epistemic[0] > 10 * out.aleatoric[0]
    assert out.interval_low[0] == pytest.approx(0.01) and out.interval_high[0] == pytest.approx(
        0.99
    )


def test_coin_flip_members_are_aleatoric():
    out = unc.decompose(np.zeros((3, 2)))
    np.testing.assert_allclose(out.aleatoric, math.log(2))
    np.testing.assert_allclose(out.epistemic, 0.0, atol=1e-12)


def test_multiclass_decomposition_and_interval():
    # Two members certain of different classes among three.
    logits = np.array([[[20.0, 0.0, 0.0]], [[0.0, 20.0, 0.0]]])
    out = unc.decompose(logits, interval=(0, 100))
    assert out.probs.shape == (1, 3)
    assert out.total[0] == pytest.approx(math.log(2), abs=1e-6)
    assert out.epistemic[0] == pytest.approx(math.log(2), abs=1e-6)
    np.testing.assert_allclose(out.interval_high[0, :2], 1.0, atol=1e-6)
    np.testing.assert_allclose(out.interval_low[0, :2], 0.0, atol=1e-6)
    # Percentiles over paths match numpy's on the path probabilities.
    probs = np.linspace(0.05, 0.95, 19)
    wide = unc.decompose(logit(probs)[:, None], interval=(10, 90))
    assert wide.interval_low[0] == pytest.approx(np.percentile(probs, 10))
    assert wide.interval_high[0] == pytest.approx(np.percentile(probs, 90))
    with pytest.raises(ValueError):
        unc.decompose(logits, interval=(95, 5))


def constructed_cohort():
    """20 confident, correct cases and 10 uncertain cases that are wrong half the time."""
    confident = np.array([0.05] * 10 + [0.95] * 10)
    confident_labels = np.array([0] * 10 + [1] * 10)
    # Uncertain cases: members disagree (0.22 vs 0.82 or 0.18 vs 0.78), mixture 0.52 or 0.48.
    uncertain = np.array([0.52, 0.48] * 5)
    uncertain_labels = np.array([0, 1] * 5)  # every uncertain case is misclassified
    mean = np.concatenate([confident, uncertain])
    labels = np.concatenate([confident_labels, uncertain_labels])
    spread = np.concatenate([np.zeros(20), np.full(10, 0.3)])
    members = np.stack([mean - spread, mean + spread])
    return logit(members), labels


def test_referral_raises_retained_accuracy():
    logits, labels = constructed_cohort()
    curve = unc.referral_curve(logits, labels, coverages=[1.0, 0.9, 0.8, 2 / 3, 0.5])
    np.testing.assert_allclose(curve.coverages, [0.5, 2 / 3, 0.8, 0.9, 1.0])
    np.testing.assert_array_equal(curve.n_retained, [15, 20, 24, 27, 30])
    assert curve.by == "epistemic"  # two members: the default ranking
    assert curve.ranked.accuracy[-1] == pytest.approx(20 / 30)
    assert curve.ranked.accuracy[1] == pytest.approx(1.0)
    assert np.all(np.diff(curve.ranked.accuracy[1:]) < 0)
    assert curve.ranked.auroc[1] == pytest.approx(1.0) and curve.ranked.auroc[-1] < 1.0
    by_total = unc.referral_curve(logits, labels, coverages=[2 / 3, 1.0], by="total")
    assert by_total.by == "total" and by_total.ranked.accuracy[0] == pytest.approx(1.0)
    assert set(curve.to_dict()) == {
        "coverages",
        "n_retained",
        "ranked",
        "random",
        "oracle",
        "by",
        "report_coverage",
        "n_random",
        "seed",
    }
    assert set(curve.to_dict()["oracle"]) == {"nll", "brier", "ece", "auroc", "accuracy"}


def test_referral_curve_multiclass_has_no_auroc():
    logits = np.array([[[5.0, 0.0]], [[0.0, 5.0]]]).repeat(4, axis=1)
    curve = unc.referral_curve(logits, [0, 1, 0, 1], n_random=3)
    assert np.all(np.isnan(curve.ranked.auroc)) and np.all(np.isnan(curve.random.auroc))
    assert np.all(np.isfinite(curve.ranked.nll)) and np.all(np.isfinite(curve.ranked.accuracy))
    np.testing.assert_allclose(curve.coverages, unc.DEFAULT_COVERAGES)
    assert len(curve.coverages) == 11 and curve.coverages[0] == pytest.approx(0.5)


def test_refer_flags_at_coverage():
    u = np.array([0.1, 0.9, 0.3, 0.8, 0.0, 0.5, 0.2, 0.4, 0.6, 0.7])
    flags = unc.refer_flags(u, coverage=0.8)
    assert flags.dtype == bool
    np.testing.assert_array_equal(np.flatnonzero(flags), [1, 3])
    assert not unc.refer_flags(u, coverage=1.0).any()
    assert unc.refer_flags(u, coverage=0.0).all()
    # 0.7 * 10 is not exactly 7 in floating point; still 3 referrals at coverage 0.7.
    assert unc.refer_flags(u, coverage=0.7).sum() == 3
    with pytest.raises(ValueError):
        unc.refer_flags(u, coverage=1.5)
