"""The paper's architectures: parameter counts and forward shapes."""

from __future__ import annotations

import pytest
import torch

import rank1
from rank1.models import (
    EHRConfig,
    EHRModel,
    ResNet50,
    ResNet50Config,
    WideResNet,
    WideResNetConfig,
)


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_resnet50_parameter_counts_match_the_paper():
    assert _count(ResNet50()) == pytest.approx(25.98e6, rel=0.005)  # K=4 rank-1
    assert _count(ResNet50(ResNet50Config(bayesian=False))) == pytest.approx(25.56e6, rel=0.005)


def test_wrn_28_10_parameter_counts_match_the_paper():
    assert _count(WideResNet()) == pytest.approx(36.6e6, rel=0.005)  # K=4 rank-1
    assert _count(WideResNet(WideResNetConfig(bayesian=False))) == pytest.approx(36.5e6, rel=0.005)


def test_wrn_rank1_overhead_is_two_k_times_fan_sums():
    det = WideResNet(WideResNetConfig(bayesian=False))
    r1 = WideResNet()
    fan_sum = sum(f.features for f in rank1.rank1_factors(r1))  # sum of d_in + d_out
    head_bias_extra = 3 * 10  # per-member head bias replaces one bias
    assert _count(r1) - _count(det) == 2 * 4 * fan_sum + head_bias_extra
    assert fan_sum == 19581  # the spec's sum over the 29 layers


def test_small_wrn_and_resnet_forward_shapes_and_recipes():
    torch.manual_seed(0)
    wrn = WideResNet(WideResNetConfig(depth=10, width_multiplier=1, num_classes=5))
    x = rank1.tile(torch.randn(2, 3, 32, 32), 4)
    assert wrn(x).shape == (8, 5)
    assert ResNet50Config().rank1.prior_stddev == 0.05
    assert ResNet50Config().rank1.random_sign_init == 0.75
    assert WideResNetConfig().rank1.prior_stddev == 0.1
    small = ResNet50(ResNet50Config(layers=(1, 1, 1, 1), num_classes=3))
    assert small(rank1.tile(torch.randn(1, 3, 64, 64), 4)).shape == (4, 3)


def test_ehr_model_rank1_and_deterministic_twin():
    torch.manual_seed(0)
    cfg = EHRConfig(rnn_dim=16, hidden_dim=8)
    model = EHRModel(cfg)
    x = torch.randn(3, 48, 76)
    lengths = torch.tensor([48, 10, 1])
    logits = model(rank1.tile(x, 4), lengths=lengths)
    assert logits.shape == (12,)
    # Padding after a sequence's last valid hour must not change its prediction.
    rank1.set_sampling(model, "mean")
    x2 = x.clone()
    x2[1, 10:] = 100.0
    torch.testing.assert_close(
        model(rank1.tile(x, 4), lengths=lengths), model(rank1.tile(x2, 4), lengths=lengths)
    )
    det = EHRModel(EHRConfig(rnn_dim=16, hidden_dim=8, bayesian=False))
    out = det(x, lengths=lengths)
    assert out.shape == (3,)
    torch.testing.assert_close(out, det(x2, lengths=lengths))
    assert det.ensemble_size == 1 and model.ensemble_size == 4
