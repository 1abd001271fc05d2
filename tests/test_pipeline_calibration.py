import json

import numpy as np
import pytest
import torch

from pipeline import metrics
from pipeline.calibration import TemperatureScaler, calibrate_and_report, fit_temperature


def planted_binary(rng, n, scale=3.0, members=4):
    """True logit z, labels ~ Bernoulli(sigmoid(z)), member logits = scale * z + small noise."""
    z = rng.normal(0.0, 1.5, size=n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    logits = scale * z[None, :] + 0.05 * rng.normal(size=(members, n))
    return logits, labels


def test_temperature_recovers_planted_overconfidence():
    rng = np.random.default_rng(0)
    val_logits, val_labels = planted_binary(rng, 6000)
    test_logits, test_labels = planted_binary(rng, 6000)
    scaler, report = calibrate_and_report(
        val_logits, val_labels, test_logits, test_labels, task="binary", num_members=4
    )
    assert scaler.temperature == pytest.approx(3.0, rel=0.12)
    assert report["calibrated"]["nll"] < report["raw"]["nll"] - 0.05
    assert report["calibrated"]["ece"] < report["raw"]["ece"] / 2
    # Scaling every member by the same T nearly keeps the ranking (exactly for one member).
    assert report["calibrated"]["auroc"] == pytest.approx(report["raw"]["auroc"], abs=1e-3)


def test_temperature_multiclass_underconfident_and_torch_input():
    rng = np.random.default_rng(1)
    z = rng.normal(0.0, 2.0, size=(4000, 4))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(4, p=row) for row in p])
    logits = np.stack([0.5 * z, 0.5 * z])  # under-confident: the best T is 0.5
    scaler = fit_temperature(torch.tensor(logits), torch.tensor(labels))
    assert scaler.temperature == pytest.approx(0.5, rel=0.1)
    assert metrics.mixture_nll(scaler.apply(logits), labels) < metrics.mixture_nll(logits, labels)


def test_well_calibrated_logits_keep_temperature_near_one():
    rng = np.random.default_rng(2)
    logits, labels = planted_binary(rng, 6000, scale=1.0, members=2)
    assert fit_temperature(logits, labels).temperature == pytest.approx(1.0, abs=0.1)


def test_scaler_json_round_trip_and_validation():
    scaler = TemperatureScaler(2.5)
    restored = TemperatureScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert restored == scaler
    np.testing.assert_allclose(scaler.apply(np.array([[5.0, -2.5]])), [[2.0, -1.0]])
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            TemperatureScaler(bad)
    with pytest.raises(ValueError, match="method"):
        TemperatureScaler.from_dict({"method": "isotonic", "temperature": 1.0})
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(np.array([[np.nan, 1.0]]), [0, 1])
