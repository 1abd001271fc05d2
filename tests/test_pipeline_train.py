import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.config import OptimConfig, ScheduleConfig, TrainConfig
from pipeline.predict import predict_member_logits
from pipeline.train import (
    CHECKPOINT_FILE,
    fit,
    fit_ensemble,
    load_checkpoint,
    rng_state,
    seed_everything,
    set_rng_state,
)
from rank1.models import DeepEnsemble, EHRConfig, EHRModel

SCRIPT = Path(__file__).with_name("train_script.py")


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _tiny(bayesian=True):
    return EHRModel(
        EHRConfig(input_features=5, projection_dim=4, rnn_dim=8, hidden_dim=8, bayesian=bayesian)
    )


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, 5, generator=g)
    y = (x[:, :, 0].mean(1) > 0).float()
    return x, y


@pytest.mark.integration  # a training subprocess, killed and resumed
def test_resume_after_sigkill_is_bit_identical(tmp_path):
    steps = 60
    full = subprocess.run(
        [sys.executable, SCRIPT, "--ckpt", tmp_path / "full", "--out", tmp_path / "full.pt",
         "--steps", str(steps)],
        env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert full.returncode == 0, full.stderr

    cmd = [sys.executable, SCRIPT, "--ckpt", tmp_path / "cut", "--out", tmp_path / "cut.pt",
           "--steps", str(steps)]  # fmt: skip
    proc = subprocess.Popen(
        [*cmd, "--sleep", "0.05"], env=_env(), stdout=subprocess.PIPE, text=True
    )
    seen = 0
    deadline = time.monotonic() + 90
    while seen < 23 and time.monotonic() < deadline:  # checkpoints at 5, 10, 15, 20
        line = proc.stdout.readline()
        if line.startswith("step "):
            seen = int(line.split()[1])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    ckpt = load_checkpoint(tmp_path / "cut" / CHECKPOINT_FILE)
    assert 20 <= ckpt["step"] < steps and not ckpt["final"]
    assert not (tmp_path / "cut.pt").exists()

    resumed = subprocess.run(
        [*cmd, "--resume"], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert resumed.returncode == 0, resumed.stderr
    first_step = int(resumed.stdout.split()[1])
    assert first_step == ckpt["step"] + 1  # continued, did not restart

    a = torch.load(tmp_path / "full.pt", weights_only=True)
    b = torch.load(tmp_path / "cut.pt", weights_only=True)
    for which in ("last", "best"):
        assert a[which].keys() == b[which].keys()
        for key in a[which]:
            assert torch.equal(a[which][key], b[which][key]), (which, key)
    assert a["history"] == b["history"]


def test_rng_state_round_trips_through_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    from pipeline.train import save_checkpoint

    seed_everything(5)
    save_checkpoint(tmp_path / "rng.pt", {"rng": rng_state()})
    expected = (torch.rand(3), np.random.rand(2), random.random())  # noqa: NPY002
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(3), np.random.rand(2), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and expected[2] == got[2]


def _config(**kw):
    base = dict(
        batch_size=32,
        optim=OptimConfig(lr=1e-2),
        schedule=ScheduleConfig(length=40, kl_anneal=20),
        eval_every=10,
        checkpoint_every=0,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def test_fit_selects_best_checkpoint_and_stops_early(tmp_path):
    x, y = _data(128, 0)
    xv, yv = _data(64, 1)
    seed_everything(0)
    evals = []
    # A large LR on a deterministic model: val NLL rises after a few evaluations.
    config = _config(
        method="deterministic",
        optim=OptimConfig(lr=0.3, grad_clip_norm=None),
        schedule=ScheduleConfig(length=400),
        eval_every=5,
        patience=3,
    )
    result = fit(
        _tiny(False), (x, y), (xv, yv), likelihood="bernoulli", n_train=128, config=config,
        checkpoint_dir=tmp_path, progress=False, on_eval=lambda s, m: evals.append((s, m)),
    )  # fmt: skip
    nlls = [m["val_nll"] for _, m in evals]
    assert result.best_val_nll == min(nlls)
    assert result.best_step == evals[nlls.index(min(nlls))][0]
    assert result.stopped_early and result.steps < 400
    assert all(n > result.best_val_nll for n in nlls[-3:])
    ckpt = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert ckpt["step"] == result.steps and ckpt["final"]
    # The returned model holds the best weights, which the checkpoint kept too.
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, ckpt["best_model"][key])
    logits = predict_member_logits(result.model, xv, 1)
    from pipeline.metrics import mixture_nll

    assert mixture_nll(logits, yv) == pytest.approx(result.best_val_nll, rel=1e-5)


def test_fit_rank1_learns_and_predicts_sample_major():
    x, y = _data(256, 0)
    xv, yv = _data(128, 1)
    seed_everything(0)
    model = _tiny(True)
    result = fit(
        model, (x, y), (xv, yv), likelihood="bernoulli", n_train=256,
        config=_config(schedule=ScheduleConfig(length=120, kl_anneal=60)), progress=False,
    )  # fmt: skip
    assert result.history[-1]["train_nll"] < result.history[0]["train_nll"]
    assert result.best_val_nll < 0.6
    logits = predict_member_logits(result.model, xv, 4, num_samples=3)
    assert logits.shape == (12, 128)
    # Path m = s*K + k: the s-th block of K rows is one tiled pass.
    torch.manual_seed(1)
    direct = torch.stack([result.model(xv.repeat(4, 1, 1)).view(4, 128) for _ in range(3)])
    torch.manual_seed(1)
    again = predict_member_logits(result.model, xv, 4, num_samples=3)
    assert torch.allclose(again.view(3, 4, 128), direct, atol=1e-6)


def test_deep_ensemble_members_are_independent():
    x, y = _data(128, 0)
    config = _config(method="ensemble", ensemble_size=3, schedule=ScheduleConfig(length=10))
    ensemble, results = fit_ensemble(
        lambda: _tiny(False), (x, y), None, likelihood="bernoulli", n_train=128,
        config=config, progress=False,
    )  # fmt: skip
    assert (
        config.to_dict()
        == _config(method="ensemble", ensemble_size=3, schedule=ScheduleConfig(length=10)).to_dict()
    )  # each member's seed comes from config.replace; the config is never changed
    assert isinstance(ensemble, DeepEnsemble) and ensemble.ensemble_size == 3
    assert len(results) == 3
    w = [m.output.weight for m in ensemble.members]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    logits = predict_member_logits(ensemble, x[:7], 3, num_samples=4)
    assert logits.shape == (3, 7)  # deterministic members: one sample
    for k, member in enumerate(ensemble.members):
        assert torch.allclose(logits[k], member(x[:7]), atol=1e-6)


def test_resume_refuses_a_different_config(tmp_path):
    x, y = _data(64, 0)
    seed_everything(0)
    fit(_tiny(False), (x, y), None, likelihood="bernoulli", n_train=64,
        config=_config(method="deterministic", schedule=ScheduleConfig(length=4)),
        checkpoint_dir=tmp_path, progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="optim.lr"):
        fit(_tiny(False), (x, y), None, likelihood="bernoulli", n_train=64,
            config=_config(method="deterministic", schedule=ScheduleConfig(length=4),
                           optim=OptimConfig(lr=0.5)),
            checkpoint_dir=tmp_path, resume=True, progress=False)  # fmt: skip


def test_fit_accepts_a_dataloader():
    x, y = _data(64, 0)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=8, shuffle=False
    )
    model = nn.Sequential(nn.Flatten(), nn.Linear(30, 1), nn.Flatten(0))
    result = fit(
        model, loader, loader, likelihood="bernoulli", n_train=64,
        config=_config(method="deterministic", batch_size=8,
                       schedule=ScheduleConfig(length=20)), progress=False,
    )  # fmt: skip
    assert result.steps == 20 and len(result.history) == 2


def test_cauchy_posterior_trains_through_the_same_trainer():
    from pipeline.ehr import model_config_for

    config = _config(posterior="cauchy", schedule=ScheduleConfig(length=20, kl_anneal=10))
    base = EHRConfig(projection_dim=4, rnn_dim=8, hidden_dim=8)
    model_config = model_config_for(config, base, input_features=5)
    assert model_config.bayesian and model_config.rank1.posterior == "cauchy"
    assert model_config_for(config.replace(method="deterministic"), base).bayesian is False
    x, y = _data(128, 0)
    seed_everything(0)
    result = fit(
        EHRModel(model_config), (x, y), (x[:32], y[:32]), likelihood="bernoulli",
        n_train=128, config=config, progress=False,
    )  # fmt: skip
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history)
    assert result.history[-1]["kl"] != 0.0


def test_checkpoint_folder_is_created_owner_only(tmp_path):
    # The weights are fitted to patient data: the folder holding them is private too.
    previous = os.umask(0o022)
    try:
        x, y = _data(64, 0)
        fit(_tiny(bayesian=False), (x, y), None, likelihood="bernoulli", n_train=64,
            config=_config(schedule=ScheduleConfig(length=2, kl_anneal=1)),
            checkpoint_dir=tmp_path / "ck", progress=False)  # fmt: skip
    finally:
        os.umask(previous)
    assert (tmp_path / "ck" / CHECKPOINT_FILE).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "ck").stat().st_mode & 0o777 == 0o700


# --------------------------------------------------------------------------- epoch order


def _legacy_rows(n, batch, seed, epoch, step_in_epoch, rank, world):
    # The order tensors had before the trainer and the image sampler shared one class.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return order[step_in_epoch * batch : (step_in_epoch + 1) * batch][rank::world]


def test_image_loader_and_tensor_batches_share_one_epoch_order():
    from pipeline.images import image_preset
    from pipeline.images.data import train_loader
    from pipeline.train import EpochShuffleSampler
    from pipeline.train.batches import training_batches
    from pipeline.train.distributed import DistInfo

    job = image_preset("cnn-digits", method="deterministic", num_workers=0)
    unique = job.train.batch_size
    n = 3 * unique + 5  # a partial last batch, dropped
    x, y = torch.arange(n).float().unsqueeze(1), torch.arange(n)
    loader = train_loader(torch.utils.data.TensorDataset(x, y), job, torch.device("cpu"))
    assert type(loader.sampler) is EpochShuffleSampler
    tensors = training_batches((x, y), unique, 11, DistInfo())
    assert type(tensors.order) is EpochShuffleSampler
    images = training_batches(loader, unique, 11, DistInfo())  # gives the sampler seed 11
    torch.manual_seed(999)  # the global seed no longer matters once the trainer set one
    a, b = tensors.from_step(0), images.from_step(0)
    for step in range(7):  # more than two epochs of 3 steps
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
        epoch, i = divmod(step, 3)
        assert torch.equal(ya, _legacy_rows(n, unique, 11, epoch, i, 0, 1))
    tail = [yb for _, yb in _take(images.from_step(4), 3)]  # resumed inside epoch 1
    assert all(
        torch.equal(p, q)
        for p, q in zip(tail, [yb for _, yb in _take(tensors.from_step(4), 3)], strict=True)
    )


def test_image_loaders_of_two_processes_take_disjoint_shares_of_one_order():
    # fit seeds torch with seed + 7919 * rank (per-process noise); the loader's order must
    # still be the run's, or the two processes would draw overlapping images.
    from pipeline.train import EpochShuffleSampler
    from pipeline.train.batches import LoaderBatches, TensorBatches
    from pipeline.train.distributed import DistInfo

    n, batch = 20, 8
    x, y = torch.randn(n, 2), torch.arange(n)
    shares = []
    for rank in (0, 1):
        sampler = EpochShuffleSampler(n, batch, world_size=2, rank=rank)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(x, y), batch_size=batch // 2, sampler=sampler
        )
        batches = LoaderBatches(loader, seed=3)
        torch.manual_seed(3 + 7919 * rank)
        got = [yb for _, yb in _take(batches.from_step(0), 4)]
        want = [
            yb for _, yb in _take(TensorBatches(x, y, batch, 3, DistInfo(rank, 2)).from_step(0), 4)
        ]
        assert all(torch.equal(p, q) for p, q in zip(got, want, strict=True))
        shares.append(got)
    for a, b in zip(*shares, strict=True):
        assert not set(a.tolist()) & set(b.tolist())


def test_epoch_order_shards_are_disjoint_and_resume_at_any_step():
    from pipeline.train.batches import TensorBatches
    from pipeline.train.distributed import DistInfo

    n, batch, world = 23, 6, 2
    x, y = torch.randn(n, 2), torch.arange(n)
    ranks = [TensorBatches(x, y, batch, 4, DistInfo(rank=r, world_size=world)) for r in (0, 1)]
    single = TensorBatches(x, y, batch, 4, DistInfo())
    full = [[yb for _, yb in _take(b.from_step(0), 9)] for b in ranks]
    whole = [yb for _, yb in _take(single.from_step(0), 9)]
    for step in range(9):
        epoch, i = divmod(step, 3)
        for r in (0, 1):
            assert torch.equal(full[r][step], _legacy_rows(n, batch, 4, epoch, i, r, world))
        shares = torch.cat([full[0][step], full[1][step]])
        assert len(set(shares.tolist())) == batch
        assert set(shares.tolist()) == set(whole[step].tolist())
    for start in (1, 3, 5):  # inside an epoch and at its boundary
        resumed = [yb for _, yb in _take(ranks[1].from_step(start), 9 - start)]
        assert all(torch.equal(p, q) for p, q in zip(resumed, full[1][start:], strict=True))


def _take(iterator, count):
    return [next(iterator) for _ in range(count)]


def _labels(batches, start, count):
    return [yb for _, yb in _take(batches.from_step(start), count)]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


# --------------------------------------------------------------------------- fast weights


def _one_sgd_step(multiplier, clip):
    seed_everything(0)
    model = _tiny(True).double()  # float64: the deltas p_new - p_old keep their ratio
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x, y = _data(32, 0)
    optim = OptimConfig(
        name="sgd", lr=0.5, momentum=0.0, nesterov=False, grad_clip_norm=clip,
        fast_weight_lr_multiplier=multiplier,
    )  # fmt: skip
    fit(model, (x.double(), y.double()), None, likelihood="bernoulli", n_train=32,
        config=_config(optim=optim, schedule=ScheduleConfig(length=1, kl_anneal=1)),
        progress=False)  # fmt: skip
    return {n: p.detach() - before[n] for n, p in model.named_parameters()}


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_fast_weight_multiplier_multiplies_the_factor_gradients_after_the_clip(clip):
    base, scaled = _one_sgd_step(1.0, clip), _one_sgd_step(3.0, clip)
    factors = {n for n in base if n.endswith((".loc", ".scale_raw"))}
    assert factors and len(factors) < len(base)
    for name in base:
        if name in factors:  # plain SGD: the factors move 3 times as far
            assert torch.allclose(scaled[name], 3.0 * base[name], rtol=1e-6, atol=0), name
        else:  # the clip saw the same gradients, so every other update is unchanged
            assert torch.equal(scaled[name], base[name]), name
