"""Image-benchmark jobs: presets vs the spec, the small CNN, train + validate into MLflow."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import ConfigError
from pipeline.images import (
    EpochShuffleSampler,
    ImageJobConfig,
    corruption_summary,
    image_preset,
)
from rank1.models import SmallCNN, SmallCNNConfig

# --------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", ["wrn28-10-cifar10", "wrn28-10-cifar100"])
def test_wrn_presets_match_spec_5_1(name):
    job = image_preset(name)
    t = job.train
    assert job.model == "wrn28-10" and job.dataset == name.split("-")[-1]
    assert t.method == "rank1" and t.ensemble_size == 4 and t.posterior == "normal"
    assert t.batch_size == 128  # unique images; the rank-1 model tiles them to 512 rows
    assert t.optim.name == "sgd" and t.optim.nesterov and t.optim.momentum == 0.9
    assert t.optim.lr == pytest.approx(0.1)
    assert t.optim.weight_decay == pytest.approx(2e-4) and t.optim.decay_norm
    s = t.schedule
    assert (s.unit, s.length, s.warmup, s.decay_factor) == ("epochs", 250, 1, 0.2)
    assert s.decay_at == [100, 200, 225] and s.kl_anneal == 200
    assert job.prior_stddev == 0.1 and t.num_eval_samples == 1 and not t.bf16


def test_resnet50_preset_matches_spec_5_2():
    job = image_preset("resnet50-imagenet")
    t = job.train
    assert job.model == "resnet50" and job.dataset == "imagenet"
    assert t.batch_size == 1024 and t.optim.lr == pytest.approx(0.4)
    s = t.schedule
    assert (s.length, s.warmup, s.decay_factor, s.kl_anneal) == (135, 5, 0.1, 90)
    assert s.decay_at == [45, 90, 120]
    assert job.prior_stddev == 0.05 and job.random_sign_init == 0.75
    # BN is not decayed on ImageNet (the reference's name filter missed the bn* layers).
    assert t.optim.weight_decay == pytest.approx(2e-4) and not t.optim.decay_norm


def test_preset_overrides_keep_the_recipe_shape():
    cauchy = image_preset("wrn28-10-cifar10", posterior="cauchy")
    assert cauchy.train.num_eval_samples == 4  # the paper's Cauchy rows
    short = image_preset("wrn28-10-cifar10", epochs=25, batch_size=64, ensemble_size=2, seed=3)
    assert short.train.schedule.decay_at == pytest.approx([10, 20, 22.5])
    assert short.train.schedule.kl_anneal == pytest.approx(20)
    assert short.train.batch_size == 64 and short.train.optim.lr == pytest.approx(0.05)
    assert short.train.seed == 3
    det = image_preset("wrn28-10-cifar10", method="deterministic")
    assert det.train.schedule.length == 200 and det.train.schedule.decay_at == [80, 160, 180]
    assert det.train.batch_size == 128  # 128 unique images, untiled
    ens = image_preset("cnn-digits", method="ensemble", ensemble_size=3)
    assert ens.train.members == 3 and ens.train.batch_size == 32
    with pytest.raises(ConfigError, match="method"):
        image_preset("cnn-digits", method="bayes")
    with pytest.raises(ConfigError, match="dataset"):
        image_preset("resnet50-imagenet", dataset="digits")
    with pytest.raises(ConfigError, match="unknown image preset"):
        image_preset("nope")


def test_job_config_round_trips_through_a_dict():
    job = image_preset("cnn-digits", method="ensemble", epochs=2)
    again = ImageJobConfig.from_dict(job.to_dict())
    assert again == job


def test_decay_norm_false_moves_batchnorm_to_an_undecayed_group():
    from pipeline.train import build_optimizer

    job = image_preset("resnet50-imagenet")
    model = SmallCNN()
    groups = {g["name"]: g for g in build_optimizer(model, job.train).param_groups}
    bn_ids = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
              for p in m.parameters()}  # fmt: skip
    assert {id(p) for p in groups["norm"]["params"]} == bn_ids
    assert groups["norm"]["weight_decay"] == 0.0
    assert not bn_ids & {id(p) for p in groups["shared"]["params"]}
    assert groups["shared"]["weight_decay"] == pytest.approx(2e-4)


# --------------------------------------------------------------------------- model


def test_small_cnn_rank1_and_deterministic_shapes():
    k = 4
    r1 = SmallCNN(SmallCNNConfig(num_classes=7))
    det = SmallCNN(SmallCNNConfig(num_classes=7, bayesian=False))
    assert r1.ensemble_size == k and det.ensemble_size == 1
    x = torch.randn(3, 1, 16, 16)
    assert r1(x.repeat(k, 1, 1, 1)).shape == (k * 3, 7)
    assert det(x).shape == (3, 7)
    with pytest.raises(ValueError, match="divisible"):
        r1(x)  # 3 rows cannot be split over K=4 members
    n_r1 = sum(p.numel() for p in r1.parameters())
    n_det = sum(p.numel() for p in det.parameters())
    # Rank-1 adds only K (r, s) vectors per layer and per-member head biases.
    assert n_det < n_r1 < 1.2 * n_det
    # Members differ: the same image gets different logits from different members.
    out = r1.eval()(x.repeat(k, 1, 1, 1)).view(k, 3, 7)
    assert not torch.allclose(out[0], out[1])


def test_epoch_shuffle_sampler_shards_and_follows_the_seed():
    torch.manual_seed(5)
    a = EpochShuffleSampler(10, 4, world_size=2, rank=0)
    b = EpochShuffleSampler(10, 4, world_size=2, rank=1)
    ia, ib = list(a), list(b)
    assert len(ia) == len(ib) == len(a) == 4
    assert not set(ia) & set(ib)
    a.set_epoch(1)
    assert list(a) != ia
    torch.manual_seed(6)
    a.set_epoch(0)
    assert list(a) != ia


def test_corruption_summary_means_per_severity_then_over_severities():
    cells = {
        ("a", 1): {"accuracy": 0.9, "nll": 0.2, "ece": 0.01},
        ("b", 1): {"accuracy": 0.7, "nll": 0.6, "ece": 0.03},
        ("a", 3): {"accuracy": 0.5, "nll": 1.0, "ece": 0.1},
    }
    out = corruption_summary(cells)
    assert out["corrupt/b/1/nll"] == 0.6
    assert out["corrupt/mean/1/accuracy"] == pytest.approx(0.8)
    assert out["corrupt/mean/3/accuracy"] == pytest.approx(0.5)
    # Severity 1 counts once (its mean), not twice as a plain cell mean would.
    assert out["corrupt/mean/accuracy"] == pytest.approx(0.65)
    assert out["corrupt/mean/nll"] == pytest.approx((0.4 + 1.0) / 2)


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    yield tmp_path


@pytest.mark.integration  # MLflow end to end
def test_digits_train_validate_and_reload(mlflow_store):
    import mlflow

    from pipeline import tracking
    from pipeline.images import load_image_run, train_images, validate_images

    def job(method):
        j = image_preset("cnn-digits", method=method, epochs=2, experiment="t")
        return j.replace(train=j.train.replace(batch_size=j.train.batch_size * 2))  # fewer steps

    det_id = train_images(job("deterministic"), progress=False).run_id
    result = train_images(job("rank1"), progress=False)
    run_id = result.run_id
    assert result.metrics.num_params > 0 and 0 <= result.metrics.test_accuracy <= 1

    corruptions, severities = ["gaussian_noise", "contrast"], [1, 5]
    validate_images(det_id, corruptions, severities, device="cpu")
    out = validate_images(run_id, corruptions, severities, compare_run_id=det_id, device="cpu")

    run = mlflow.MlflowClient(tracking.tracking_uri()).get_run(run_id)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["train.method"] == "rank1" and params["train.ensemble_size"] == "4"
    assert params["job.preset"] == "cnn-digits" and params["job.dataset"] == "digits"
    assert tags["task"] == "image-classification" and tags["dataset"] == "digits"
    assert tags["model"].startswith("rank1-small-cnn")
    for name in ("accuracy", "nll", "ece"):
        assert 0 <= metrics[f"test/{name}"] < math.inf
        assert metrics[f"clean/{name}"] == metrics[f"test/{name}"]  # one evaluation
        for c in corruptions:
            for s in severities:
                assert f"corrupt/{c}/{s}/{name}" in metrics
        per_severity = [metrics[f"corrupt/mean/{s}/{name}"] for s in severities]
        assert metrics[f"corrupt/mean/{name}"] == pytest.approx(sum(per_severity) / 2)
        assert out[f"corrupt/mean/{name}"] == pytest.approx(metrics[f"corrupt/mean/{name}"])
    # Per-epoch training curves: one point per epoch.
    history = mlflow.MlflowClient(tracking.tracking_uri()).get_metric_history(
        run_id, "train/val_nll"
    )
    assert sorted(m.step for m in history) == [1, 2]
    assert metrics["num_params"] == result.metrics.num_params

    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run_id, "plots")}
    assert "plots/corruption_severity.png" in artifacts

    model, loaded = load_image_run(run_id)
    assert loaded.train.method == "rank1" and model.ensemble_size == 4
    assert sum(p.numel() for p in model.parameters()) == result.metrics.num_params
    x = torch.zeros(2, 1, 16, 16)
    assert model(x.repeat(4, 1, 1, 1)).shape == (8, 10)


@pytest.mark.integration  # MLflow end to end
def test_ensemble_run_logs_members_and_counts_all_parameters(mlflow_store):
    from pipeline.images import load_image_run, train_images

    j = image_preset("cnn-digits", method="ensemble", ensemble_size=2, epochs=1, experiment="t")
    j = j.replace(train=j.train.replace(batch_size=128))
    result = train_images(j, progress=False)
    model, _ = load_image_run(result.run_id)
    single = sum(p.numel() for p in SmallCNN(SmallCNNConfig(bayesian=False)).parameters())
    assert model.ensemble_size == 2 and result.metrics.num_params == 2 * single
