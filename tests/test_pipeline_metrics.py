import math

import numpy as np
import pytest
import torch

import rank1
from pipeline import metrics


def logit(p):
    p = np.asarray(p, dtype=np.float64)
    return np.log(p) - np.log1p(-p)


def test_mixture_probs_and_nll_binary_by_hand():
    # Two paths; the mixture of 0.5/0.75 and 0.75/0.5 is 0.625 for both examples.
    logits = np.array([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    labels = np.array([1, 0])
    np.testing.assert_allclose(metrics.mixture_probs(logits), [0.625, 0.625])
    expected = -(math.log(0.625) + math.log(0.375)) / 2
    assert metrics.mixture_nll(logits, labels) == pytest.approx(expected, rel=1e-12)
    # torch tensors give the same result as numpy.
    t = torch.tensor(logits, dtype=torch.float32)
    assert metrics.mixture_nll(t, torch.tensor(labels)) == pytest.approx(expected, rel=1e-6)


def test_mixture_nll_multiclass_by_hand_and_is_not_member_average():
    logits = np.array([[[0.0, 0.0, 0.0]], [[math.log(2.0), 0.0, 0.0]]])  # (M=2, N=1, C=3)
    # Path probabilities of class 0: 1/3 and 1/2 -> mixture 5/12.
    assert metrics.mixture_nll(logits, [0]) == pytest.approx(-math.log(5 / 12))
    average_of_members = -(math.log(1 / 3) + math.log(1 / 2)) / 2
    assert metrics.mixture_nll(logits, [0]) < average_of_members
    np.testing.assert_allclose(metrics.mixture_probs(logits), [[5 / 12, 7 / 24, 7 / 24]])


def test_mixture_nll_is_stable_for_extreme_logits():
    # One path is certain of the wrong class, the other of the right one: mixture = 1/2.
    logits = np.array([[-800.0], [800.0]])
    assert metrics.mixture_nll(logits, [1]) == pytest.approx(math.log(2.0))
    # All paths certain of the wrong class: finite, equal to the logit magnitude.
    assert metrics.mixture_nll(np.array([[-800.0], [-800.0]]), [1]) == pytest.approx(800.0)


def test_ece_by_hand_binary_and_last_bin():
    probs = np.array([0.9, 0.2, 0.6, 1.0])
    labels = np.array([1, 0, 0, 1])
    # Confidences 0.9, 0.8, 0.6, 1.0 fall in four different bins; p = 1.0 in the last one.
    # Correct: yes, yes, no, yes -> (0.1 + 0.2 + 0.6 + 0.0) / 4.
    assert metrics.ece(probs, labels) == pytest.approx(0.225)
    # The same predictions written as two-class probabilities give the same ECE.
    two_class = np.stack([1 - probs, probs], axis=1)
    assert metrics.ece(two_class, labels) == pytest.approx(0.225)
    # One bin: |accuracy - mean confidence| = |0.75 - 0.825|.
    assert metrics.ece(probs, labels, n_bins=1) == pytest.approx(0.075)


def test_ece_shared_bin_and_multiclass():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.65, 0.25], [0.3, 0.3, 0.4]])
    labels = np.array([0, 0, 2])
    # Bins (15): 0.7 -> 10, 0.65 -> 9, 0.4 -> 6; correct: yes, no, yes.
    expected = (abs(1 - 0.7) + abs(0 - 0.65) + abs(1 - 0.4)) / 3
    assert metrics.ece(probs, labels) == pytest.approx(expected)
    bins = metrics.reliability_bins(probs, labels)
    assert bins["count"].sum() == 3
    assert bins["accuracy"][9] == 0.0 and bins["confidence"][10] == pytest.approx(0.7)


def test_risk_bins_are_of_the_risk_itself_over_0_to_1():
    # Risks below 0.5 stay below 0.5 (top-label confidence would fold 0.1 onto 0.9).
    risk = np.array([0.0, 0.1, 0.12, 0.45, 0.9, 1.0])
    labels = np.array([0, 0, 1, 0, 1, 1])
    bins = metrics.risk_bins(risk, labels, n_bins=5)
    assert bins.lower[0] == 0.0 and bins.upper[-1] == 1.0
    assert bins.count.tolist() == [3, 0, 1, 0, 2] and bins.count.sum() == risk.size
    assert bins.mean_risk[0] == pytest.approx(0.22 / 3) and math.isnan(bins.mean_risk[1])
    assert bins.observed[0] == pytest.approx(1 / 3) and bins.observed[2] == 0.0
    assert bins.observed[4] == 1.0 and bins.mean_risk[4] == pytest.approx(0.95)
    with pytest.raises(ValueError, match=r"\(N,\)"):
        metrics.risk_bins(np.full((3, 2), 0.5), [0, 1, 0])


def test_ece_against_truth_by_hand():
    pred = [0.1, 0.15, 0.9]
    true = [0.2, 0.1, 0.7]
    assert metrics.ece_against_truth(pred, true) == pytest.approx((0.1 + 0.05 + 0.2) / 3)
    # With 5 bins the first two share a bin: |0.125 - 0.15| * 2/3 + 0.2 * 1/3.
    assert metrics.ece_against_truth(pred, true, n_bins=5) == pytest.approx(0.025 * 2 / 3 + 0.2 / 3)
    assert metrics.ece_against_truth(true, true) == 0.0


def test_brier_accuracy_auroc_auprc_by_hand():
    risk = np.array([0.1, 0.4, 0.35, 0.8])
    labels = np.array([0, 0, 1, 1])
    assert metrics.brier(risk, labels) == pytest.approx((0.01 + 0.16 + 0.65**2 + 0.04) / 4)
    assert metrics.accuracy(risk, labels) == pytest.approx(0.75)
    assert metrics.auroc(risk, labels) == pytest.approx(0.75)
    assert metrics.auprc(risk, labels) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    assert math.isnan(metrics.auroc(risk, np.zeros(4, dtype=int)))
    multi = np.array([[0.5, 0.5], [0.2, 0.8]])
    assert metrics.brier(multi, [0, 1]) == pytest.approx((0.5 + 0.08) / 2)


def test_per_member_metrics_average_samples_and_disagreement():
    # S = 2 samples x K = 2 members, path m = s * K + k.
    probs = np.array([[0.9], [0.2], [0.7], [0.4]])
    logits = logit(probs)
    members = metrics.per_member_metrics(logits, [1], num_members=2)
    np.testing.assert_allclose(members["nll"], [-math.log(0.8), -math.log(0.3)])
    np.testing.assert_allclose(members["accuracy"], [1.0, 0.0])
    # Mixture 0.55 predicts 1; member 1 (mean 0.3) disagrees.
    np.testing.assert_allclose(members["disagreement"], [0.0, 1.0])
    assert metrics.disagreement(logits, num_members=2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="multiple"):
        metrics.per_member_metrics(logits, [1], num_members=3)


def test_binary_metrics_keys_and_values():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=200)
    logits = rng.normal(size=(4, 200)) + 2.0 * (labels - 0.5)
    out = metrics.binary_metrics(logits, labels)
    for key in [
        "nll",
        "accuracy",
        "ece",
        "brier",
        "auroc",
        "auprc",
        "member_nll_mean",
        "member_accuracy_mean",
        "disagreement",
        "sensitivity",
        "ppv",
        "f1",
    ]:
        assert isinstance(out[key], float), key
    assert out["nll"] == pytest.approx(metrics.mixture_nll(logits, labels))
    assert out["auroc"] > 0.7
    # The mixture is at least as good as the average member in NLL (Jensen).
    assert out["nll"] <= out["member_nll_mean"]
    assert set(metrics.task_metrics(logits, labels)) == set(out)


def test_multiclass_metrics_keys_and_validation():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, size=50)
    logits = rng.normal(size=(2, 50, 3))
    out = metrics.multiclass_metrics(logits, labels, num_members=2)
    assert {"nll", "accuracy", "ece", "brier", "member_0_nll", "member_1_accuracy"} <= set(out)
    assert "auroc" not in out
    with pytest.raises(ValueError):
        metrics.binary_metrics(logits, labels)
    with pytest.raises(ValueError, match="labels"):
        metrics.mixture_nll(logits, labels[:-1])


# The mixture predictive exists twice: in torch for training and prediction (rank1.ensemble)
# and in numpy for the reports (pipeline.metrics). They must agree.
@pytest.mark.parametrize("members", [1, 2, 4, 7])
@pytest.mark.parametrize("classes", [None, 2, 5])  # None: a binary head, (M, N) logits
def test_numpy_and_torch_mixtures_agree(members, classes):
    generator = torch.Generator().manual_seed(members * 10 + (classes or 0))
    shape = (members, 50) if classes is None else (members, 50, classes)
    # Wide logits, some extreme, so that the log-mean-exp's stability is compared too.
    logits = torch.randn(shape, generator=generator) * 6.0  # float32, as the models give
    logits[0, :3] = 60.0
    labels = torch.randint(0, classes or 2, (50,), generator=generator)
    likelihood = "bernoulli" if classes is None else "categorical"
    # torch computes in float32, numpy (scipy) in float64: agree to float32 precision.
    torch_probs = rank1.mixture_probs(logits, likelihood)
    np.testing.assert_allclose(
        metrics.mixture_probs(logits.numpy()), torch_probs.numpy(), rtol=1e-5, atol=1e-6
    )
    target = labels.float() if classes is None else labels
    torch_nll = rank1.mixture_nll(logits, target, likelihood, reduction="none")
    numpy_nll = metrics.per_example_nll(logits.numpy(), labels.numpy())
    np.testing.assert_allclose(numpy_nll, torch_nll.numpy(), rtol=1e-5, atol=1e-6)
    assert metrics.mixture_nll(logits.numpy(), labels.numpy()) == pytest.approx(
        rank1.mixture_nll(logits, target, likelihood).item(), rel=1e-5
    )
