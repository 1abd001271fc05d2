"""Tiling, mixture predictions, KL terms, parameter groups and a toy fit."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import rank1
from rank1 import Rank1Config, Rank1Factor, Rank1Linear


def test_tile_untile_member_major_layout():
    x = torch.arange(6.0).view(3, 2)
    t = rank1.tile(x, 4)
    assert t.shape == (12, 2)
    assert torch.equal(t[3:6], x) and torch.equal(t[9:12], x)  # blocks, not interleaved
    u = rank1.untile(t, 4)
    assert u.shape == (4, 3, 2) and torch.equal(u[2], x)


def test_mixture_nll_is_log_mean_exp_of_member_likelihoods():
    # Two members, one example, two classes: p1 = [0.9, 0.1], p2 = [0.5, 0.5].
    logits = torch.log(torch.tensor([[[0.9, 0.1]], [[0.5, 0.5]]]))
    y = torch.tensor([0])
    expected = -math.log((0.9 + 0.5) / 2)
    assert rank1.mixture_nll(logits, y).item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(rank1.mixture_probs(logits), torch.tensor([[0.7, 0.3]]))
    per_member = rank1.member_nll(logits, y)
    assert per_member.tolist() == pytest.approx([-math.log(0.9), -math.log(0.5)], rel=1e-6)


def test_bernoulli_mixture_matches_hand_computation():
    p = torch.tensor([[0.8, 0.3], [0.6, 0.1]])  # (M=2, B=2) probabilities of class 1
    logits = torch.log(p / (1 - p))
    y = torch.tensor([1.0, 0.0])
    expected = -(math.log((0.8 + 0.6) / 2) + math.log((0.7 + 0.9) / 2)) / 2
    assert rank1.mixture_nll(logits, y, "bernoulli").item() == pytest.approx(expected, rel=1e-6)
    assert torch.allclose(rank1.mixture_probs(logits, "bernoulli"), torch.tensor([0.7, 0.2]))
    # A trailing singleton logit dimension is accepted as well.
    assert rank1.mixture_nll(logits[..., None], y, "bernoulli").item() == pytest.approx(expected)


def test_predict_stacks_samples_and_members():
    torch.manual_seed(0)
    model = nn.Sequential(Rank1Linear(3, 2, rank1=Rank1Config(ensemble_size=4)))
    out = rank1.predict(model, torch.randn(5, 3), ensemble_size=4, num_samples=3)
    assert out.shape == (3, 4, 5, 2)
    assert not torch.allclose(out[0], out[1])  # fresh draws per sample


def test_closed_form_kl_matches_monte_carlo():
    torch.manual_seed(0)
    f = Rank1Factor(3, 5, prior_stddev=0.3, random_sign_init=-0.5)
    with torch.no_grad():
        f.scale_raw.fill_(-1.0)
    closed = f.kl().item()
    q = torch.distributions.Normal(f.loc, f.scale)
    p = torch.distributions.Normal(torch.ones_like(f.loc), torch.full_like(f.loc, 0.3))
    x = q.sample((200_000,))
    mc = (q.log_prob(x) - p.log_prob(x)).sum((1, 2)).mean().item()
    assert closed == pytest.approx(mc, rel=0.01)
    torch_kl = torch.distributions.kl_divergence(q, p).sum().item()
    assert closed == pytest.approx(torch_kl, rel=1e-5)


def test_cauchy_kl_is_an_unbiased_monte_carlo_estimate():
    torch.manual_seed(0)
    f = Rank1Factor(2, 3, posterior="cauchy", prior_stddev=0.5, random_sign_init=-0.5)
    with torch.no_grad():
        f.scale_raw.fill_(-0.5)
    # 20,000 one-sample estimates at once: a factor of 20,000 copies of f's components draws
    # one independent sample per entry, so its KL / 20,000 is their mean.
    copies = 20_000
    many = Rank1Factor(2 * copies, 3, posterior="cauchy", prior_stddev=0.5)
    with torch.no_grad():
        many.loc.copy_(f.loc.repeat(copies, 1))
        many.scale_raw.copy_(f.scale_raw.repeat(copies, 1))
        est = many.kl().item() / copies
    q = torch.distributions.Cauchy(f.loc, f.scale)
    p = torch.distributions.Cauchy(torch.ones_like(f.loc), torch.full_like(f.loc, 0.5))
    exact = torch.distributions.kl_divergence(q, p).sum().item()
    assert est == pytest.approx(exact, rel=0.05)


def test_kl_divergence_sums_over_layers_and_members():
    torch.manual_seed(0)
    model = nn.Sequential(
        Rank1Linear(3, 4, rank1=Rank1Config(ensemble_size=2)), nn.ReLU(), Rank1Linear(4, 1)
    )
    manual = sum(f.kl() for f in rank1.rank1_factors(model))
    assert rank1.kl_divergence(model).item() == pytest.approx(manual.item())
    assert len(list(rank1.rank1_factors(model))) == 4
    assert rank1.kl_divergence(nn.Linear(2, 2)).item() == 0.0


def test_param_groups_never_decay_factor_posteriors():
    model = nn.Sequential(
        rank1.Rank1Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Flatten(), Rank1Linear(4, 2)
    )
    groups = rank1.param_groups(model, weight_decay=2e-4)
    shared, fast = groups
    factor_ids = {id(p) for f in rank1.rank1_factors(model) for p in f.parameters()}
    assert {id(p) for p in fast["params"]} == factor_ids
    # No per-group learning rate: the fast-weight multiplier scales gradients instead.
    assert fast["weight_decay"] == 0.0 and "lr" not in fast and "lr" not in shared
    shared_ids = {id(p) for p in shared["params"]}
    assert id(model[0].weight) in shared_ids and id(model[1].weight) in shared_ids
    assert id(model[3].bias) in shared_ids and shared["weight_decay"] == 2e-4
    assert len(shared_ids) + len(factor_ids) == len(list(model.parameters()))
    opt = torch.optim.SGD(groups, lr=0.1)  # the groups drive a real optimiser
    assert len(opt.param_groups) == 2


def _sgd_step_deltas(multiplier):
    torch.manual_seed(0)
    model = nn.Sequential(
        Rank1Linear(3, 4, rank1=Rank1Config(ensemble_size=2)), nn.Tanh(), nn.Linear(4, 1)
    )
    model.double()  # float64: the deltas p_new - p_old keep their ratio to 1e-9
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(rank1.param_groups(model, 0.0), lr=0.1)  # no momentum
    torch.manual_seed(1)
    model(torch.randn(6, 3, dtype=torch.float64)).square().mean().backward()
    rank1.scale_factor_grads_(model, multiplier)
    opt.step()
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


def test_fast_weight_multiplier_scales_the_factor_updates_of_plain_sgd():
    base, tripled = _sgd_step_deltas(1.0), _sgd_step_deltas(3.0)
    factors = {n for n in base if n.endswith((".loc", ".scale_raw"))}
    assert len(factors) == 4  # r and s of the rank-1 layer, loc and raw scale each
    for name in base:
        if name in factors:
            assert base[name].abs().sum() > 0
            assert torch.allclose(tripled[name], 3.0 * base[name], rtol=1e-9, atol=0), name
        else:
            assert torch.equal(tripled[name], base[name]), name


def test_fast_weight_multiplier_one_leaves_the_gradients_untouched():
    model = Rank1Linear(3, 2, rank1=Rank1Config(ensemble_size=2))
    model(torch.randn(4, 3)).sum().backward()
    grads = {n: (p.grad, p.grad.clone()) for n, p in model.named_parameters()}
    rank1.scale_factor_grads_(model, 1.0)
    for name, p in model.named_parameters():
        assert p.grad is grads[name][0] and torch.equal(p.grad, grads[name][1])


def test_short_fit_on_toy_problem_raises_the_elbo():
    torch.manual_seed(0)
    k, n_train = 4, 256
    x = torch.randn(n_train, 2)
    y = ((x[:, 0] * x[:, 1]) > 0).long()  # XOR-like: needs the hidden layer
    model = nn.Sequential(
        Rank1Linear(2, 32, rank1=Rank1Config(ensemble_size=k)),
        nn.ReLU(),
        Rank1Linear(32, 2, rank1=Rank1Config(ensemble_size=k)),
    )
    opt = torch.optim.Adam(rank1.param_groups(model, 0.0), lr=1e-2)

    def neg_elbo():
        logits = model(rank1.tile(x, k))
        nll = nn.functional.cross_entropy(logits, rank1.tile(y, k))
        return nll + rank1.kl_divergence(model) / n_train

    with torch.no_grad():
        before = torch.stack([neg_elbo() for _ in range(5)]).mean()
    for _ in range(300):
        opt.zero_grad()
        neg_elbo().backward()
        opt.step()
    with torch.no_grad():
        after = torch.stack([neg_elbo() for _ in range(5)]).mean()
        probs = rank1.mixture_probs(rank1.predict(model, x, k, 2).flatten(0, 1))
    assert after < before - 0.3
    assert (probs.argmax(-1) == y).float().mean() > 0.9
