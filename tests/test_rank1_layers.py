"""Correctness of the rank-1 layers against explicit per-example references."""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import rank1
from rank1 import Rank1Config, Rank1Conv2d, Rank1Linear, Rank1LSTM, _fused

K = 4


def _draw(layer, names, n, clip=True):
    return [getattr(layer, nm).sample(n, layer.sampling, clip=clip) for nm in names]


@pytest.mark.parametrize("posterior", ["normal", "cauchy"])
@pytest.mark.parametrize("sampling", ["example", "member"])
def test_linear_matches_per_example_effective_weight(posterior, sampling):
    torch.manual_seed(0)
    layer = Rank1Linear(
        6, 5, rank1=Rank1Config(ensemble_size=K, posterior=posterior, sampling=sampling)
    )
    with torch.no_grad():
        layer.bias.normal_()
    n = 3
    x = torch.randn(K * n, 6)
    torch.manual_seed(1)
    out = layer(x)
    torch.manual_seed(1)
    r, s = _draw(layer, ("r", "s"), n)
    r, s = r.expand(K, n, 6), s.expand(K, n, 5)
    for k in range(K):
        for i in range(n):
            # The effective weight of this member and example: W * (s r^T).
            w_eff = layer.weight * torch.outer(s[k, i], r[k, i])
            ref = F.linear(x[k * n + i], w_eff, layer.bias[k])
            torch.testing.assert_close(out[k * n + i], ref, rtol=1e-5, atol=1e-5)


def test_linear_accepts_middle_dims_sharing_one_draw_per_row():
    torch.manual_seed(0)
    layer = Rank1Linear(4, 3, rank1=Rank1Config(ensemble_size=2))
    x = torch.randn(2 * 3, 7, 4)
    torch.manual_seed(5)
    out = layer(x)
    torch.manual_seed(5)
    flat = torch.stack([layer(x[:, t]) for t in range(7)], 1)
    assert out.shape == (6, 7, 3)
    # Each row's draw is shared over the middle dimension: compare with one fixed draw.
    torch.manual_seed(5)
    r, s = _draw(layer, ("r", "s"), 3)
    ref = (F.linear(x.view(2, 3, 7, 4) * r[:, :, None], layer.weight) * s[:, :, None]).view(6, 7, 3)
    ref = ref + layer.bias.repeat_interleave(3, 0)[:, None]
    torch.testing.assert_close(out, ref)
    assert not torch.allclose(out, flat)  # the per-timestep calls drew fresh factors


@pytest.mark.parametrize("posterior", ["normal", "cauchy"])
def test_conv_matches_per_example_effective_kernel(posterior):
    torch.manual_seed(0)
    layer = Rank1Conv2d(
        3, 4, 3, stride=2, padding=1, rank1=Rank1Config(ensemble_size=K, posterior=posterior)
    )
    with torch.no_grad():
        layer.bias.normal_()
    n = 2
    x = torch.randn(K * n, 3, 7, 7)
    torch.manual_seed(2)
    out = layer(x)
    torch.manual_seed(2)
    r, s = _draw(layer, ("r", "s"), n)
    for k in range(K):
        for i in range(n):
            w_eff = layer.weight * s[k, i][:, None, None, None] * r[k, i][None, :, None, None]
            ref = F.conv2d(x[k * n + i : k * n + i + 1], w_eff, layer.bias[k], 2, 1)
            torch.testing.assert_close(out[k * n + i : k * n + i + 1], ref, rtol=1e-5, atol=1e-5)


def _lstm_reference(layer, x, lengths, draws):
    """A per-member, per-example loop with effective weights W * (s r^T)."""
    r_ih, s_ih, r_hh, s_hh = draws
    k_, n = r_ih.shape[0], r_ih.shape[1]
    hid = layer.hidden_size
    outs = torch.zeros(x.shape[0], x.shape[1], hid)
    h_last = torch.zeros(x.shape[0], hid)
    for k in range(k_):
        for i in range(n):
            row = k * n + i
            w_ih = layer.weight_ih_l0 * torch.outer(s_ih[k, i], r_ih[k, i])
            w_hh = layer.weight_hh_l0 * torch.outer(s_hh[k, i], r_hh[k, i])
            h = torch.zeros(hid)
            c = torch.zeros(hid)
            for t in range(x.shape[1]):
                if t < lengths[row]:
                    z = w_ih @ x[row, t] + w_hh @ h + layer.bias_l0[k]
                    i_, f_, g_, o_ = z.chunk(4)
                    c = torch.sigmoid(f_) * c + torch.sigmoid(i_) * torch.tanh(g_)
                    h = torch.sigmoid(o_) * torch.tanh(c)
                outs[row, t] = h
            h_last[row] = h
    return outs, h_last


@pytest.mark.parametrize("posterior", ["normal", "cauchy"])
def test_lstm_matches_per_example_loop_with_lengths(posterior):
    torch.manual_seed(0)
    layer = Rank1LSTM(
        3, 4, batch_first=True, rank1=Rank1Config(ensemble_size=2, posterior=posterior)
    )
    n = 3
    x = torch.randn(2 * n, 5, 3)
    lengths = torch.tensor([5, 2, 4])
    torch.manual_seed(3)
    out, (h_n, c_n) = layer(x, lengths=lengths)
    torch.manual_seed(3)
    draws = _draw(layer, ("r_ih_l0", "s_ih_l0", "r_hh_l0", "s_hh_l0"), n, clip=False)
    ref_out, ref_h = _lstm_reference(layer, x, lengths.repeat(2), draws)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(h_n[0], ref_h, rtol=1e-4, atol=1e-5)


def test_lstm_mask_equals_lengths_and_time_major_equals_batch_first():
    torch.manual_seed(0)
    layer = Rank1LSTM(3, 4, num_layers=2, rank1=Rank1Config(ensemble_size=2, sampling="mean"))
    x = torch.randn(6, 6, 3)  # (T, K*B, D)
    lengths = torch.tensor([6, 3, 1])
    mask = torch.arange(6)[None, :] < lengths[:, None]
    a, (ha, ca) = layer(x, lengths=lengths)
    b, (hb, cb) = layer(x, mask=mask)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(ha, hb)
    layer.batch_first = True
    c, (hc, _) = layer(x.transpose(0, 1), lengths=lengths)
    torch.testing.assert_close(c.transpose(0, 1), a)
    torch.testing.assert_close(hc, ha)


def test_gradcheck_float64_all_layers():
    torch.manual_seed(0)
    d = torch.float64
    layers = [
        (
            Rank1Linear(3, 2, dtype=d, rank1=Rank1Config(ensemble_size=2)),
            torch.randn(4, 3, dtype=d),
        ),
        (
            Rank1Conv2d(2, 2, 3, padding=1, dtype=d, rank1=Rank1Config(ensemble_size=2)),
            torch.randn(2, 2, 4, 4, dtype=d),
        ),
        (
            Rank1LSTM(2, 3, batch_first=True, dtype=d, rank1=Rank1Config(ensemble_size=2)),
            torch.randn(4, 3, 2, dtype=d),
        ),
    ]
    for layer, x in layers:
        names = [n for n, _ in layer.named_parameters()]
        params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
        x = x.requires_grad_(True)

        def fn(x, *ps, layer=layer, names=names):
            torch.manual_seed(7)  # the same factor draws on every evaluation
            out = functional_call(layer, dict(zip(names, ps, strict=True)), (x,))
            return out[0] if isinstance(out, tuple) else out

        assert torch.autograd.gradcheck(fn, (x, *params), atol=1e-6)


def _fixed_at_one(layer):
    with torch.no_grad():
        for f in rank1.rank1_factors(layer):
            f.loc.fill_(1.0)
    layer.sampling = "mean"
    return layer


def test_k1_with_unit_factors_equals_plain_layers():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    r1 = _fixed_at_one(Rank1Linear.from_linear(lin, rank1=Rank1Config(ensemble_size=1)))
    x = torch.randn(4, 5)
    torch.testing.assert_close(r1(x), lin(x))

    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    rc = _fixed_at_one(Rank1Conv2d.from_conv2d(conv, rank1=Rank1Config(ensemble_size=1)))
    xi = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(rc(xi), conv(xi))

    lstm = nn.LSTM(3, 5, batch_first=True)
    rl = _fixed_at_one(Rank1LSTM(3, 5, batch_first=True, rank1=Rank1Config(ensemble_size=1)))
    with torch.no_grad():
        rl.weight_ih_l0.copy_(lstm.weight_ih_l0)
        rl.weight_hh_l0.copy_(lstm.weight_hh_l0)
        rl.bias_l0.copy_((lstm.bias_ih_l0 + lstm.bias_hh_l0)[None])
    xs = torch.randn(2, 6, 3)
    out, (h, c) = rl(xs)
    ref, (hr, cr) = lstm(xs)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(h, hr)
    torch.testing.assert_close(c, cr)


def test_posterior_means_are_repeatable_and_sampling_is_not():
    torch.manual_seed(0)
    model = nn.Sequential(Rank1Linear(4, 8), nn.ReLU(), Rank1Linear(8, 2)).eval()
    x = rank1.tile(torch.randn(3, 4), 4)
    a, b = model(x), model(x)
    assert not torch.allclose(a, b)  # sampling happens in eval mode too (spec 1.8)
    rank1.set_sampling(model, "mean")
    torch.testing.assert_close(model(x), model(x))


def test_cauchy_path_is_finite_and_clipped():
    torch.manual_seed(0)
    layer = Rank1Linear(16, 16, rank1=Rank1Config(posterior="cauchy", ensemble_size=4))
    with torch.no_grad():
        layer.r.scale_raw.fill_(3.0)  # a heavy-tailed, wide posterior
    x = torch.randn(4 * 256, 16, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert torch.isfinite(layer.r.loc.grad).all() and torch.isfinite(x.grad).all()
    r = layer.r.sample(256)
    assert r.abs().max() <= 10.0 and r.abs().max() == 10.0  # wide Cauchy tails hit the clip
    kl = rank1.kl_divergence(layer)
    assert torch.isfinite(kl)


def test_batch_not_divisible_by_k_raises():
    layer = Rank1Linear(3, 2, rank1=Rank1Config(ensemble_size=4))
    with pytest.raises(ValueError, match="not divisible by ensemble_size=4"):
        layer(torch.randn(6, 3))
    with pytest.raises(ValueError, match="not divisible"):
        Rank1Conv2d(1, 1, 1, rank1=Rank1Config(ensemble_size=4))(torch.randn(5, 1, 2, 2))
    with pytest.raises(ValueError, match="not divisible"):
        Rank1LSTM(1, 1, rank1=Rank1Config(ensemble_size=4))(torch.randn(3, 5, 1))
    with pytest.raises(ValueError, match="not divisible"):
        rank1.untile(torch.randn(7, 2), 2)


def test_factor_parameter_overhead_is_exact():
    d_in, d_out = 7, 5
    for k in (1, 4):
        layer = Rank1Linear(d_in, d_out, rank1=Rank1Config(ensemble_size=k))
        n_params = sum(p.numel() for p in layer.parameters())
        assert n_params == d_in * d_out + 2 * k * (d_in + d_out) + k * d_out
        conv = Rank1Conv2d(d_in, d_out, 3, bias=False, rank1=Rank1Config(ensemble_size=k))
        assert sum(p.numel() for p in conv.parameters()) == d_in * d_out * 9 + 2 * k * (
            d_in + d_out
        )


def test_initialisation_follows_the_spec():
    torch.manual_seed(0)
    f = rank1.Rank1Factor(4, 10000, random_sign_init=0.75)
    assert set(f.loc.unique().tolist()) == {-1.0, 1.0}
    assert abs((f.loc == 1).float().mean().item() - 0.75) < 0.02
    scale = f.scale
    assert 0.025 < scale.min() and scale.max() < 0.039  # dropout rate 1e-3 -> ~0.0316
    g = rank1.Rank1Factor(4, 10000, random_sign_init=-0.5)
    assert abs(g.loc.mean().item() - 1.0) < 0.02 and abs(g.loc.std().item() - 0.5) < 0.02
    lstm = Rank1LSTM(3, 4, rank1=Rank1Config(ensemble_size=2))
    assert torch.equal(lstm.bias_l0[:, 4:8], torch.ones(2, 4))  # unit forget bias per member
    assert torch.equal(lstm.bias_l0[:, :4], torch.zeros(2, 4))


def test_bf16_autocast_training_step_gives_grads_in_parameter_dtypes():
    # The fused kernels' backward must cope with the bf16 compute dtype of autocast.
    torch.manual_seed(0)
    model = nn.Sequential(
        Rank1Conv2d(3, 4, 3, padding=1, bias=False, rank1=Rank1Config(ensemble_size=2)),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        Rank1Linear(4 * 6 * 6, 3, rank1=Rank1Config(ensemble_size=2)),
    )
    x = torch.randn(4, 3, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(x).float().square().mean() + rank1.kl_divergence(model) / 100
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == p.dtype, name
        assert torch.isfinite(p.grad).all(), name
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"ensemble_size": 0}, "ensemble_size must be an int >= 1"),
        ({"ensemble_size": True}, "ensemble_size must be an int >= 1"),
        ({"posterior": "laplace"}, "posterior must be one of"),
        ({"prior": "laplace"}, "prior must be None or one of"),
        ({"prior_stddev": 0.0}, "prior_stddev must be > 0"),
        ({"dropout_rate": 1.0}, r"dropout_rate must be in \(0, 1\)"),
        ({"sampling": "per-row"}, "sampling must be one of"),
    ],
)
def test_rank1_config_checks_every_setting_once(change, match):
    with pytest.raises(ValueError, match=match):
        Rank1Config(**change)
    with pytest.raises(ValueError, match=match):  # derived copies are checked too
        dataclasses.replace(Rank1Config(), **change)


def test_layers_take_one_rank1_config_and_keep_nn_names():
    config = Rank1Config(ensemble_size=3, posterior="cauchy", prior_stddev=0.5)
    layers = [
        Rank1Linear(4, 2, rank1=config),
        Rank1Conv2d(4, 2, 3, rank1=config),
        Rank1LSTM(4, 2, rank1=config),
    ]
    for layer in layers:
        assert layer.rank1 is config and layer.ensemble_size == 3
        for factor in rank1.rank1_factors(layer):
            assert (factor.ensemble_size, factor.posterior, factor.prior) == (3, "cauchy", "cauchy")
            assert factor.prior_stddev == 0.5
    # Saved weights load by these names: they are nn.Linear's / nn.LSTM's plus the factors.
    factors = {f"{side}.{p}" for side in "rs" for p in ("loc", "scale_raw")}
    assert set(layers[0].state_dict()) == {"weight", "bias", *factors}
    assert set(layers[1].state_dict()) == {"weight", "bias", *factors}
    lstm_factors = {
        f"{f}_l0.{p}" for f in ("r_ih", "s_ih", "r_hh", "s_hh") for p in ("loc", "scale_raw")
    }
    assert set(layers[2].state_dict()) == {"weight_ih_l0", "weight_hh_l0", "bias_l0", *lstm_factors}
    assert Rank1Linear(4, 2).rank1 == Rank1Config()  # None means the defaults
    with pytest.raises(TypeError, match="rank1 must be a Rank1Config"):
        Rank1Linear(4, 2, rank1={"ensemble_size": 2})
    with pytest.raises(TypeError, match="ensemble_size"):  # the settings come only as rank1=
        Rank1Linear(4, 2, ensemble_size=2)


def test_setting_sampling_replaces_the_config_with_a_checked_copy():
    layer = Rank1Linear(3, 2, rank1=Rank1Config(ensemble_size=2))
    model = nn.Sequential(layer)
    rank1.set_sampling(model, "mean")
    assert layer.sampling == "mean" and layer.rank1 == Rank1Config(ensemble_size=2, sampling="mean")
    with pytest.raises(ValueError, match="sampling must be one of"):
        layer.sampling = "per-row"
    assert layer.sampling == "mean"


# --------------------------------------------------------------------------- the sampler

_DRAWS = 40_000  # per member: the per-entry mean is then known to about 0.5% of a stddev


def _identity_layer(loc_r, sd_r, loc_s, sd_s, sampling="example"):
    """A square Rank1Linear with W = I and no bias: unit input gives the rows ``r * s``."""
    k, d = loc_r.shape
    layer = Rank1Linear(d, d, bias=False, rank1=Rank1Config(ensemble_size=k, sampling=sampling))
    with torch.no_grad():
        layer.weight.copy_(torch.eye(d))
        for factor, loc, sd in ((layer.r, loc_r, sd_r), (layer.s, loc_s, sd_s)):
            factor.loc.copy_(loc)
            # Invert scale = softplus(raw) + 1e-7; a (near) zero sd pins the factor at loc.
            factor.scale_raw.copy_(torch.log(torch.expm1((sd - 1e-7).clamp_min(1e-30))))
    return layer


def _draws(layer, n=_DRAWS):
    """``(K, n, d)`` outputs of ``n`` unit-input rows per member."""
    k, d = layer.ensemble_size, layer.in_features
    with torch.no_grad():
        return layer(torch.ones(k * n, d)).reshape(k, n, d)


def _assert_mean_and_std(draws, mean, std):
    """Per (member, entry) sample mean and std within 5 standard errors of the truth."""
    n = draws.shape[1]
    # Standard errors of a mean and of a normal sample's std (sd / sqrt(2n)); 5 of them.
    assert (draws.mean(1) - mean).abs().le(5 * std / n**0.5).all(), (draws.mean(1), mean)
    assert (draws.std(1) - std).abs().le(5 * std / (2 * n) ** 0.5).all(), (draws.std(1), std)


# Distinct per-entry locations and scales, different across members: a sampler that mixes up
# members, entries, loc and scale, or softplus, gets some of them wrong.
_LOC = torch.tensor([[1.0, -1.0, 0.5], [2.0, 1.0, -0.5]])
_SD = torch.tensor([[0.1, 0.3, 0.05], [0.5, 0.2, 0.4]])
_PINNED = (torch.ones(2, 3), torch.zeros(2, 3))  # a factor with no noise: exactly 1


@pytest.mark.parametrize("side", ["r", "s"])
def test_gaussian_factor_draws_through_linear_have_the_posterior_mean_and_std(side):
    torch.manual_seed(0)
    args = (_LOC, _SD, *_PINNED) if side == "r" else (*_PINNED, _LOC, _SD)
    draws = _draws(_identity_layer(*args))
    _assert_mean_and_std(draws, _LOC, _SD)
    # Every (member, entry) has its own noise: no two of the K * d standardised draws are
    # correlated beyond sampling error (shared noise across members or entries would be 1).
    z = ((draws - _LOC.unsqueeze(1)) / _SD.unsqueeze(1)).transpose(0, 1).reshape(_DRAWS, -1)
    corr = torch.corrcoef(z.T)
    off_diagonal = corr[~torch.eye(corr.shape[0], dtype=torch.bool)]
    assert off_diagonal.abs().max() < 5 / _DRAWS**0.5, off_diagonal


def test_factor_sample_has_the_posterior_mean_and_std():
    # Conv2d and the LSTM draw with Rank1Factor.sample (Rank1Linear passes loc, scale and
    # noise to its core instead, as tested above): its draws follow the same posterior.
    torch.manual_seed(0)
    layer = _identity_layer(_LOC, _SD, *_PINNED)
    with torch.no_grad():
        _assert_mean_and_std(layer.r.sample(_DRAWS, "example"), _LOC, _SD)
        member = torch.cat([layer.r.sample(1, "member") for _ in range(2_000)], dim=1)
    _assert_mean_and_std(member, _LOC, _SD)


def test_r_and_s_draws_are_independent():
    # For independent r and s: E[rs] = mu_r mu_s, Var[rs] = (sd_r^2 + mu_r^2)(sd_s^2 + mu_s^2)
    # - mu_r^2 mu_s^2. A sampler that reused one noise for both would give another variance.
    torch.manual_seed(0)
    loc_s, sd_s = _LOC.flip(1), _SD.flip(1)
    draws = _draws(_identity_layer(_LOC, _SD, loc_s, sd_s))
    mean = _LOC * loc_s
    std = ((_SD**2 + _LOC**2) * (sd_s**2 + loc_s**2) - mean**2).sqrt()
    n = draws.shape[1]
    assert (draws.mean(1) - mean).abs().le(5 * std / n**0.5).all()
    # The product is not normal: bound the variance with its own sample spread instead.
    var_se = (draws - mean.unsqueeze(1)).square().var(1).sqrt() / n**0.5
    assert (draws.var(1) - std**2).abs().le(5 * var_se).all(), (draws.var(1), std**2)


def test_example_mode_draws_per_row_and_member_mode_per_member():
    torch.manual_seed(0)
    rows = 6

    def noise(sampling):
        # s pinned at 1: each output row is one draw of r, standardised to its noise.
        draws = _draws(_identity_layer(_LOC, _SD, *_PINNED, sampling), rows)
        return (draws - _LOC.unsqueeze(1)) / _SD.unsqueeze(1)

    example, member = noise("example"), noise("member")
    for k in range(2):
        # "example": every row of one member has its own draw (no two rows equal).
        assert len({tuple(row.tolist()) for row in example[k]}) == rows
        # "member": the member's rows share one draw.
        assert torch.equal(member[k], member[k, :1].expand(rows, -1))
    # Members draw independently, and successive forwards draw afresh.
    assert not torch.allclose(member[0, 0], member[1, 0])
    assert not torch.allclose(example[0], example[1])
    assert not torch.equal(member, noise("member"))


# --------------------------------------------------------------------------- fused vs plain

_FUSED_FUNCTIONS = {
    "linear": _fused._Rank1Linear,
    "conv2d": _fused._Rank1Conv2d,
    "lstm": _fused._Rank1LSTMRecurrence,
}


def test_use_fused_chooses_by_kernel_and_device_and_plain_kernels_forces_plain():
    cpu, meta = torch.zeros(1), torch.zeros(1, device="meta")  # meta stands in for a GPU
    for kernel in _FUSED_FUNCTIONS:
        assert rank1.use_fused(cpu, kernel)
    assert not rank1.use_fused(meta, "linear") and not rank1.use_fused(meta, "conv2d")
    assert rank1.use_fused(meta, "lstm")  # the hand-written BPTT serves every device
    with rank1.plain_kernels():
        with rank1.plain_kernels():  # nesting
            assert not rank1.use_fused(cpu, "lstm")
        assert not any(rank1.use_fused(cpu, kernel) for kernel in _FUSED_FUNCTIONS)
    with pytest.raises(RuntimeError), rank1.plain_kernels():
        raise RuntimeError  # leaving the block by an exception restores the default too
    assert all(rank1.use_fused(cpu, kernel) for kernel in _FUSED_FUNCTIONS)
    with pytest.raises(ValueError, match="unknown kernel"):
        rank1.use_fused(cpu, "gru")


def _flat(out):
    """All of a layer's outputs (the LSTM's ``out, (h_n, c_n)`` too) as one vector."""
    if isinstance(out, tuple):
        return torch.cat([_flat(o) for o in out])
    return out.reshape(-1)


def _forward_backward(layer, x, kernel, plain, monkeypatch, **kwargs):
    """Outputs and gradients of a seeded forward and backward through one implementation."""
    function = _FUSED_FUNCTIONS[kernel]
    calls = []
    apply = function.apply
    monkeypatch.setattr(function, "apply", lambda *a: calls.append(1) or apply(*a))
    layer.zero_grad()
    x = x.detach().clone().requires_grad_(True)
    torch.manual_seed(11)  # the same factor draws through both implementations
    with rank1.plain_kernels() if plain else contextlib.nullcontext():
        out = _flat(layer(x, **kwargs))
    # A different weight on every output, so each output's gradient path counts.
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
    (out * weights).sum().backward()
    monkeypatch.undo()
    assert bool(calls) != plain  # the implementation asked for is the one that ran
    grads = {"input": x.grad, **{n: p.grad for n, p in layer.named_parameters()}}
    return out.detach(), grads


def _assert_fused_equals_plain(layer, x, kernel, monkeypatch, **kwargs):
    out_fused, grads_fused = _forward_backward(layer, x, kernel, False, monkeypatch, **kwargs)
    out_plain, grads_plain = _forward_backward(layer, x, kernel, True, monkeypatch, **kwargs)
    torch.testing.assert_close(out_fused, out_plain, rtol=1e-5, atol=1e-6)
    assert grads_fused.keys() == grads_plain.keys()
    for name, grad in grads_fused.items():
        # Posterior scales get no gradient in "mean" mode (they are not used); only there.
        if grad is None or grads_plain[name] is None:
            assert grad is None and grads_plain[name] is None, name
            assert name.endswith("scale_raw") and "mean" in repr(layer), name
            continue
        torch.testing.assert_close(grad, grads_plain[name], msg=name)


@pytest.mark.parametrize("sampling", ["example", "member", "mean"])
@pytest.mark.parametrize("posterior", ["normal", "cauchy"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_fused_and_plain_give_the_same_outputs_and_gradients(
    sampling, posterior, bias, monkeypatch
):
    torch.manual_seed(0)
    config = Rank1Config(ensemble_size=3, posterior=posterior, sampling=sampling)
    layer = Rank1Linear(6, 5, bias, rank1=config)
    with torch.no_grad():
        if bias:
            layer.bias.normal_()
        if posterior == "cauchy":
            layer.r.scale_raw.fill_(1.0)  # wide enough that some draws hit the [-10, 10] clip
    x = torch.randn(3 * 4, 2, 6)  # a middle dimension shares each row's draw
    _assert_fused_equals_plain(layer, x, "linear", monkeypatch)


@pytest.mark.parametrize("sampling", ["example", "member", "mean"])
@pytest.mark.parametrize(
    "conv_args",
    [
        {"stride": 2, "padding": 1, "bias": True},
        {"padding": "same", "dilation": 2, "groups": 2, "bias": False},
        {"padding": 1, "padding_mode": "reflect", "bias": True},
    ],
)
def test_conv2d_fused_and_plain_give_the_same_outputs_and_gradients(
    sampling, conv_args, monkeypatch
):
    torch.manual_seed(0)
    layer = Rank1Conv2d(4, 6, 3, **conv_args, rank1=Rank1Config(ensemble_size=2, sampling=sampling))
    if layer.bias is not None:
        with torch.no_grad():
            layer.bias.normal_()
    _assert_fused_equals_plain(layer, torch.randn(2 * 3, 4, 7, 7), "conv2d", monkeypatch)


@pytest.mark.parametrize("sampling", ["example", "member", "mean"])
@pytest.mark.parametrize("masked", [False, True])
def test_lstm_fused_and_plain_give_the_same_outputs_and_gradients(sampling, masked, monkeypatch):
    torch.manual_seed(0)
    config = Rank1Config(ensemble_size=2, sampling=sampling)
    layer = Rank1LSTM(3, 4, num_layers=2, batch_first=True, rank1=config)
    kwargs = {"lengths": torch.tensor([5, 2, 4])} if masked else {}
    _assert_fused_equals_plain(layer, torch.randn(2 * 3, 5, 3), "lstm", monkeypatch, **kwargs)
