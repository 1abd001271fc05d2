import math

import pytest
import torch
from torch import nn

import rank1
from pipeline.config import ConfigError, TrainConfig
from pipeline.objective import kl_weight, objective, tiled_nll
from pipeline.recipes import cifar_recipe, ehr_recipe, imagenet_recipe
from pipeline.train import build_optimizer, lr_factor


def test_kl_weight_is_linear_then_one():
    assert kl_weight(0, 4) == pytest.approx(0.25)
    assert kl_weight(1, 4) == pytest.approx(0.5)
    assert kl_weight(3, 4) == 1.0
    assert kl_weight(100, 4) == 1.0
    assert kl_weight(0, 0) == 1.0
    # MIMIC: 5000 annealing steps.
    assert kl_weight(2499, 5000) == pytest.approx(0.5)


def test_tiled_nll_bernoulli_hand_computed():
    # K=2 members, B=2 examples, member-major rows [m0 e0, m0 e1, m1 e0, m1 e1].
    logits = torch.tensor([0.0, 2.0, math.log(3.0), -1.0])
    y = torch.tensor([1.0, 0.0])
    expected = (
        -math.log(0.5)  # sigmoid(0) for y=1
        - math.log(1 - 1 / (1 + math.exp(-2.0)))  # y=0 with logit 2
        - math.log(0.75)  # sigmoid(log 3) = 3/4
        - math.log(1 - 1 / (1 + math.exp(1.0)))  # y=0 with logit -1
    ) / 4
    assert float(tiled_nll(logits, y, "bernoulli")) == pytest.approx(expected, rel=1e-6)


def test_tiled_nll_categorical_hand_computed():
    logits = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])  # K=2, B=1
    y = torch.tensor([0])
    expected = (-math.log(0.5) - math.log(0.75)) / 2
    assert float(tiled_nll(logits, y, "categorical")) == pytest.approx(expected, rel=1e-6)


def _reference_kl(model, prior_mean=1.0):
    """The factors' KL from torch.distributions, independent of the project's formula."""
    total = 0.0
    for f in rank1.rank1_factors(model):
        q = torch.distributions.Normal(f.loc.detach(), f.scale.detach())
        p = torch.distributions.Normal(prior_mean, f.prior_stddev)
        total += float(torch.distributions.kl_divergence(q, p).sum())
    return total


@pytest.mark.parametrize("prior_stddev", [0.1, 1.0, 3.0])
def test_project_kl_matches_torch_distributions(prior_stddev):
    torch.manual_seed(0)
    model = nn.Sequential(
        rank1.Rank1Linear(
            3, 4, rank1=rank1.Rank1Config(ensemble_size=2, prior_stddev=prior_stddev)
        ),
        rank1.Rank1Linear(
            4,
            2,
            rank1=rank1.Rank1Config(
                ensemble_size=2, prior_stddev=prior_stddev, random_sign_init=-0.5
            ),
        ),
    )
    with torch.no_grad():  # posteriors away from their init, so every term of the KL counts
        for f in rank1.rank1_factors(model):
            f.loc.add_(torch.randn_like(f.loc))
            f.scale_raw.normal_(0.0, 1.0)
    expected = _reference_kl(model)
    assert rank1.kl_divergence(model).item() == pytest.approx(expected, rel=1e-5)
    per_factor = sum(f.kl().item() for f in rank1.rank1_factors(model))
    assert per_factor == pytest.approx(expected, rel=1e-5)


def test_objective_adds_annealed_kl_over_n_and_elbo_has_no_beta():
    torch.manual_seed(0)
    layer = rank1.Rank1Linear(3, 1, rank1=rank1.Rank1Config(ensemble_size=2, prior_stddev=1.0))
    x = rank1.tile(torch.randn(5, 3), 2)
    y = torch.randint(0, 2, (5,)).float()
    logits = layer(x).squeeze(-1)
    kl = _reference_kl(layer)
    f = next(rank1.rank1_factors(layer))
    nll = float(tiled_nll(logits, y, "bernoulli").detach())
    terms = objective(
        logits, y, layer, likelihood="bernoulli", n_train=100, step=9, anneal_steps=40
    )
    assert terms.beta == pytest.approx(0.25)
    assert terms.kl.item() == pytest.approx(kl, rel=1e-6)
    assert terms.loss.item() == pytest.approx(nll + 0.25 * kl / 100, rel=1e-6)
    assert terms.elbo.item() == pytest.approx(-(nll + kl / 100), rel=1e-6)
    # kl_scale tempers the annealed weight only; the logged ELBO stays the paper's.
    tempered = objective(
        logits, y, layer, likelihood="bernoulli", n_train=100, step=9, anneal_steps=40,
        kl_scale=0.1,
    )  # fmt: skip
    assert tempered.beta == pytest.approx(0.025)
    assert tempered.loss.item() == pytest.approx(nll + 0.025 * kl / 100, rel=1e-6)
    assert tempered.elbo.item() == pytest.approx(terms.elbo.item(), rel=1e-6)
    terms.loss.backward()
    assert f.loc.grad is not None and f.loc.grad.abs().sum() > 0


def test_kl_is_summed_over_components():
    one = rank1.Rank1Linear(3, 2, rank1=rank1.Rank1Config(ensemble_size=1, random_sign_init=0.0))
    four = rank1.Rank1Linear(3, 2, rank1=rank1.Rank1Config(ensemble_size=4, random_sign_init=0.0))
    with torch.no_grad():
        for f in (*rank1.rank1_factors(one), *rank1.rank1_factors(four)):
            f.scale_raw.fill_(-3.0)
    assert rank1.kl_divergence(four).item() == pytest.approx(
        4 * rank1.kl_divergence(one).item(), rel=1e-6
    )


def test_deterministic_model_has_zero_kl():
    model = nn.Linear(3, 1)
    out = model(torch.randn(4, 3)).squeeze(-1)
    terms = objective(
        out, torch.ones(4), model, likelihood="bernoulli", n_train=10, step=0, anneal_steps=5
    )
    assert terms.kl.item() == 0.0
    assert terms.loss.item() == pytest.approx(terms.nll.item())


def test_optimizer_groups_decay_shared_weights_not_factors():
    model = nn.Sequential(
        rank1.Rank1Linear(3, 4, rank1=rank1.Rank1Config(ensemble_size=2)), nn.Linear(4, 1)
    )
    config = cifar_recipe()
    opt = build_optimizer(model, config)
    assert isinstance(opt, torch.optim.SGD)
    groups = {g["name"]: g for g in opt.param_groups}
    factor_ids = {id(p) for f in rank1.rank1_factors(model) for p in f.parameters()}
    assert groups["rank1_factors"]["weight_decay"] == 0.0
    assert {id(p) for p in groups["rank1_factors"]["params"]} == factor_ids
    assert groups["shared"]["weight_decay"] == pytest.approx(2e-4)
    shared_ids = {id(p) for p in groups["shared"]["params"]}
    assert id(model[0].weight) in shared_ids and id(model[1].bias) in shared_ids
    assert not shared_ids & factor_ids
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9


def test_recipes_match_the_paper():
    ehr = ehr_recipe()
    assert (ehr.optim.name, ehr.optim.lr, ehr.optim.grad_clip_norm) == ("adam", 3.0352e-4, 7.29199)
    assert (ehr.schedule.length, ehr.schedule.kl_anneal, ehr.batch_size) == (10_000, 5_000, 16)
    # The reference's batch 64 is 16 stays tiled 4x for rank-1, 64 stays for the others.
    assert ehr.replace(method="deterministic").batch_size == 64
    assert ehr_recipe(method="ensemble").batch_size == 64
    # fp32 and validation every 100 steps, as in the reference MIMIC script.
    assert not ehr.bf16 and ehr.eval_every == 100
    cifar = cifar_recipe()
    spe = 50_000 // cifar.batch_size
    assert spe == 390
    assert lr_factor(0, cifar, spe) == pytest.approx(1 / 390)
    assert lr_factor(389, cifar, spe) == pytest.approx(1.0)
    assert lr_factor(100 * 390 - 1, cifar, spe) == 1.0
    assert lr_factor(100 * 390, cifar, spe) == pytest.approx(0.2)
    assert lr_factor(225 * 390, cifar, spe) == pytest.approx(0.2**3)
    assert cifar.total_steps(spe) == 250 * 390
    imagenet = imagenet_recipe()
    assert imagenet.batch_size == 1024
    assert lr_factor(120 * 1251, imagenet, 1251) == pytest.approx(1e-3)


def test_config_round_trips_and_names_bad_fields():
    config = cifar_recipe(seed=3)
    assert TrainConfig.from_dict(config.to_dict()) == config
    partial = TrainConfig.from_dict({"method": "ensemble", "optim": {"lr": 1}})
    assert partial.optim.lr == 1.0 and partial.method == "ensemble"
    with pytest.raises(ConfigError, match="'optim.lrr'"):
        TrainConfig.from_dict({"optim": {"lrr": 0.1}})
    with pytest.raises(ConfigError, match="'optim.lr'"):
        TrainConfig.from_dict({"optim": {"lr": -1.0}})
    with pytest.raises(ConfigError, match="'method'"):
        TrainConfig.from_dict({"method": "mc-dropout"})
    assert TrainConfig.from_dict({"batch_size": 30}).batch_size == 30  # unique, any K
    with pytest.raises(ConfigError, match="'batch_size': must be >= 1, got 0"):
        TrainConfig.from_dict({"batch_size": 0})
    with pytest.raises(ConfigError, match="'seed': must be an integer, got True"):
        TrainConfig.from_dict({"seed": True})
    with pytest.raises(ConfigError, match="'optim.lr': must be a number, got '1'"):
        TrainConfig.from_dict({"optim": {"lr": "1"}})
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict({"optim": {"lr": -1.0}})
    assert info.value.field == "optim.lr"
    assert info.value.reason == "must be a finite number > 0, got -1.0"
    with pytest.raises(ConfigError, match=r"'schedule.decay_at\[1\]'"):
        TrainConfig.from_dict({"schedule": {"decay_at": [1, "x"]}})
    with pytest.raises(ConfigError, match="'bf16'"):
        TrainConfig.from_dict({"bf16": "yes"})
