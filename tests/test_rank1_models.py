"""The paper's architectures: parameter counts and forward shapes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import rank1
from rank1 import Rank1Config
from rank1.models import (
    DeepEnsemble,
    EHRConfig,
    EHRModel,
    ModelSpec,
    ModelSpecError,
    ResNet50,
    ResNet50Config,
    SmallCNNConfig,
    WideResNet,
    WideResNetConfig,
    build,
    model_spec,
)


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _meta(build_model):
    """Construct on the meta device: shapes only, no memory and no time for the weights.

    The constructors and their init functions run unchanged: torch's in-place inits accept
    meta tensors and compute nothing, so the modules and shapes are those built on the CPU.
    """
    with torch.device("meta"):
        model = build_model()
    assert all(p.is_meta for p in model.parameters())
    return model


def test_resnet50_parameter_counts_match_the_paper():
    # Spec 4.3: 25,557,032 deterministic (torchvision's count) plus, per member,
    # 2 * 52,139 factor entries, and 3 extra copies of the 1,000 head biases for K = 4.
    assert _count(_meta(lambda: ResNet50(ResNet50Config(bayesian=False)))) == 25_557_032
    assert 25_557_032 + 4 * 2 * 52_139 + 3 * 1_000 == 25_977_144
    assert _count(_meta(ResNet50)) == 25_977_144  # K=4 rank-1, the paper's 26.0M


def test_wrn_28_10_parameter_counts_match_the_paper():
    assert _count(_meta(lambda: WideResNet(WideResNetConfig(bayesian=False)))) == 36_479_194
    assert 36_479_194 + 4 * 2 * 19_581 + 3 * 10 == 36_635_872
    assert _count(_meta(WideResNet)) == 36_635_872  # K=4 rank-1, the paper's 36.6M


def test_wrn_rank1_overhead_is_two_k_times_fan_sums():
    det = _meta(lambda: WideResNet(WideResNetConfig(bayesian=False)))
    r1 = _meta(WideResNet)
    fan_sum = sum(f.features for f in rank1.rank1_factors(r1))  # sum of d_in + d_out
    head_bias_extra = 3 * 10  # per-member head bias replaces one bias
    assert _count(r1) - _count(det) == 2 * 4 * fan_sum + head_bias_extra
    assert fan_sum == 19581  # the spec's sum over the 29 layers


def test_resnet50_has_the_specs_54_rank1_layers():
    r1 = _meta(ResNet50)
    factors = list(rank1.rank1_factors(r1))
    assert len(factors) == 2 * 54
    assert sum(f.features for f in factors) == 52_139


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


def _mean_draws(model):
    # Posterior means: every call is the same function, so outputs can be compared.
    if model.config.bayesian:
        rank1.set_sampling(model, "mean")
    return model


@pytest.mark.parametrize("bayesian", [True, False])
@pytest.mark.parametrize("output_dim", [1, 10])
def test_ehr_per_step_outputs_are_causal_and_padding_free(bayesian, output_dim):
    torch.manual_seed(0)
    cfg = EHRConfig(
        input_features=5, projection_dim=4, rnn_dim=8, hidden_dim=6,
        output_dim=output_dim, per_step=True, bayesian=bayesian,
    )  # fmt: skip
    model = _mean_draws(EHRModel(cfg))
    k = model.ensemble_size
    x = torch.randn(3, 20, 5)
    out = model(rank1.tile(x, k))
    width = () if output_dim == 1 else (output_dim,)
    assert out.shape == (k * 3, 20, *width)
    # Changing the rows after step t leaves the outputs at steps <= t as they were.
    t = 7
    x2 = x.clone()
    x2[:, t + 1 :] = torch.randn(3, 20 - t - 1, 5) * 50
    out2 = model(rank1.tile(x2, k))
    torch.testing.assert_close(out2[:, : t + 1], out[:, : t + 1])
    assert not torch.allclose(out2[:, t + 1 :], out[:, t + 1 :])
    # A stay alone (its own length) and padded to a longer batch: the same outputs.
    alone = model(rank1.tile(x[1:2, :9], k))
    torch.testing.assert_close(rank1.untile(out, k)[:, 1, :9], rank1.untile(alone, k)[:, 0])


def test_ehr_stay_batch_gathers_samples_and_tiles_like_a_tensor():
    torch.manual_seed(0)
    k = 4
    cfg = EHRConfig(input_features=5, projection_dim=4, rnn_dim=8, hidden_dim=6, per_step=True)
    model = _mean_draws(EHRModel(cfg))
    values = torch.randn(2, 12, 5)
    values[1, 6:] = 0.0
    batch = rank1.models.StayBatch(
        values, torch.tensor([12, 6]), torch.tensor([0, 0, 1]), torch.tensor([4, 11, 5])
    )
    tiled = rank1.tile(batch, k)
    assert tiled.values.shape == (k * 2, 12, 5) and tiled.num_samples == k * 3
    out = model(tiled)
    assert out.shape == (k * 3,)
    grid = rank1.untile(model(rank1.tile(values, k)), k)  # (K, 2, T)
    expected = grid[:, [0, 0, 1], [4, 11, 5]]  # (K, 3)
    torch.testing.assert_close(rank1.untile(out, k), expected)
    parts = rank1.untile(tiled, k)
    assert len(parts) == k
    for part in parts:
        torch.testing.assert_close(part.sample_row, batch.sample_row)
        torch.testing.assert_close(part.values, batch.values)
    # A deep ensemble splits the tiled batch into its members' parts.
    members = [EHRModel(dataclasses.replace(cfg, bayesian=False)) for _ in range(2)]
    ensemble = DeepEnsemble(members)
    both = ensemble(rank1.tile(batch, 2))
    torch.testing.assert_close(both[:3], members[0](batch))
    torch.testing.assert_close(both[3:], members[1](batch))


@pytest.mark.parametrize("bayesian", [True, False])
def test_ehr_last_step_head_of_25_labels_reads_each_stays_last_hour(bayesian):
    torch.manual_seed(0)
    cfg = EHRConfig(
        input_features=5, projection_dim=4, rnn_dim=8, hidden_dim=6, output_dim=25,
        bayesian=bayesian,
    )  # fmt: skip
    model = _mean_draws(EHRModel(cfg))
    k = model.ensemble_size
    values = torch.randn(3, 10, 5)
    lengths = torch.tensor([10, 4, 7])
    out = model(rank1.tile(values, k), lengths=lengths)
    assert out.shape == (k * 3, 25)
    padded = values.clone()
    padded[1, 4:] = 99.0
    torch.testing.assert_close(model(rank1.tile(padded, k), lengths=lengths), out)
    # The same through a StayBatch of one sample per stay (at its last step).
    batch = rank1.models.StayBatch(padded, lengths, torch.arange(3), lengths - 1)
    torch.testing.assert_close(model(rank1.tile(batch, k)), out)
    alone = model(rank1.tile(values[1:2, :4], k))
    torch.testing.assert_close(rank1.untile(out, k)[:, 1], rank1.untile(alone, k)[:, 0])


def test_ehr_default_config_keeps_the_ihm_state_dict_names():
    model = EHRModel(EHRConfig(rnn_dim=6, hidden_dim=3))
    names = set(model.state_dict())
    assert {"output.weight", "output.bias", "lstm.weight_ih_l0", "projection.weight"} <= names
    assert model.output.weight.shape == (1, 3)
    heads = EHRModel(EHRConfig(rnn_dim=6, hidden_dim=3, output_dim=10, per_step=True))
    assert set(heads.state_dict()) == names


@pytest.mark.parametrize("bayesian", [True, False])
def test_ehr_output_layer_has_the_references_he_normal_kernel(bayesian):
    # records-research Rank1BayesianRNN: DenseRank1(1, kernel_initializer="he_normal"); the
    # deterministic twin mirrors it. Keras he_normal is a normal truncated at 2 std with std
    # sqrt(2 / fan_in) / 0.8796: it reaches past every glorot_uniform value (limit
    # sqrt(6 / (fan_in + 1))) and stops at its truncation bound.
    torch.manual_seed(0)
    fan_in = 512
    model = EHRModel(EHRConfig(rnn_dim=4, hidden_dim=fan_in, bayesian=bayesian))
    w = model.output.weight.detach()
    assert w.shape == (1, fan_in)
    std = (2 / fan_in) ** 0.5 / 0.87962566103423978
    assert w.abs().max() <= 2 * std
    assert w.abs().max() > (6 / (fan_in + 1)) ** 0.5
    assert abs(w.std().item() / (2 / fan_in) ** 0.5 - 1) < 0.15


# --------------------------------------------------------------------------- specs

_SMALL_SPECS = [
    ("ehr", EHRConfig(input_features=5, projection_dim=4, rnn_dim=6, hidden_dim=3)),
    ("ehr", EHRConfig(input_features=5, rnn_dim=6, bayesian=False)),
    (
        "small_cnn",
        SmallCNNConfig(channels=(2, 3, 4), rank1=Rank1Config(ensemble_size=2, prior="cauchy")),
    ),
    ("wide_resnet", WideResNetConfig(depth=10, width_multiplier=1, num_classes=3)),
    ("resnet50", ResNet50Config(layers=(1, 1, 1, 1), num_classes=3, bayesian=False)),
]


@pytest.mark.parametrize(("kind", "config"), _SMALL_SPECS)
def test_model_spec_json_round_trip_is_exact_and_rebuilds(kind, config):
    model = build(kind, config)
    spec = model_spec(model)
    assert spec == ModelSpec(kind, config)
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    assert type(again.config.rank1.prior_stddev) is float
    rebuilt = again.build()
    assert type(rebuilt) is type(model)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == shapes
    # build() takes the JSON-ready form too.
    assert model_spec(build(kind, spec.to_dict()["config"])) == spec


def test_model_json_written_before_rank1_config_was_frozen_still_loads():
    # The model.json form of an EHR model as stored before the layers took one Rank1Config:
    # the format did not change, so stored models still rebuild and load.
    stored = {
        "kind": "ehr",
        "config": {
            "input_features": 5,
            "projection_dim": 4,
            "rnn_dim": 6,
            "hidden_dim": 3,
            "bayesian": True,
            "rank1": {
                "ensemble_size": 4,
                "posterior": "normal",
                "prior": None,
                "prior_mean": 1.0,
                "prior_stddev": 1.0,
                "random_sign_init": 0.5,
                "dropout_rate": 0.001,
                "sampling": "example",
            },
        },
    }
    spec = ModelSpec.from_dict(stored)
    # The task heads' two fields came later; a config stored without them is the IHM model.
    added = {"output_dim": 1, "per_step": False}
    assert spec.to_dict() == {"kind": "ehr", "config": {**stored["config"], **added}}
    model = spec.build()
    assert model.lstm.rank1 == Rank1Config(prior_stddev=1.0) == model.output.rank1
    model.load_state_dict(build("ehr", spec.config).state_dict(), strict=True)


def test_deep_ensemble_of_mixed_members_round_trips():
    members = [build(kind, config) for kind, config in _SMALL_SPECS[:2]]
    ensemble = DeepEnsemble(members)
    spec = model_spec(ensemble)
    assert spec.kind == "deep_ensemble" and len(spec.config.members) == 2
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    rebuilt = again.build()
    assert isinstance(rebuilt, DeepEnsemble) and rebuilt.ensemble_size == 2
    assert set(rebuilt.state_dict()) == set(ensemble.state_dict())


def test_model_spec_copies_the_config():
    model = build("ehr", EHRConfig(rnn_dim=6))
    spec = model_spec(model)
    model.config.rnn_dim = 9
    assert spec.config.rnn_dim == 6
    # The factor settings cannot be edited in place at all: the layers were built from them.
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.rank1.prior_stddev = 9.0


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda d: d.update(kind="os.system"), r"model\.kind: unknown model kind 'os\.system'"),
        (lambda d: d.update(extra=1), r"model: unknown key 'extra'"),
        (lambda d: d["config"].update(evil=1), r"model\.config: unknown key 'evil'"),
        (lambda d: d["config"].pop("rnn_dim"), r"model\.config: missing key 'rnn_dim'"),
        (lambda d: d["config"].update(rnn_dim="6"), r"model\.config\.rnn_dim: expected int"),
        (lambda d: d["config"].update(rnn_dim=True), r"model\.config\.rnn_dim: expected int"),
        (
            lambda d: d["config"]["rank1"].update(posterior="laplace"),
            r"model\.config\.rank1\.posterior: expected one of \['normal', 'cauchy'\]",
        ),
        (lambda d: d["config"].update(rank1=[]), r"model\.config\.rank1: expected an object"),
        (
            lambda d: d["config"]["rank1"].update(prior_stddev=0),
            r"model\.config\.rank1: prior_stddev must be > 0, got 0\.0",
        ),
    ],
)
def test_model_spec_refuses_foreign_json_with_one_line(edit, match):
    data = model_spec(build("ehr", EHRConfig(rnn_dim=6))).to_dict()
    edit(data)
    with pytest.raises(ModelSpecError, match=match) as info:
        ModelSpec.from_dict(data)
    assert "\n" not in str(info.value)


def test_model_spec_refuses_other_modules():
    with pytest.raises(TypeError, match="cannot describe a Linear"):
        model_spec(torch.nn.Linear(2, 3))
    with pytest.raises(ModelSpecError, match="unknown model kind"):
        build("linear", {})
