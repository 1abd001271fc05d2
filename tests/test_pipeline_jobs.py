"""The shared training-job runner: typed results, one model tag, one length format."""

import dataclasses

import pytest
import torch

from pipeline.config import ScheduleConfig, TrainConfig
from pipeline.jobs import (
    RunSpec,
    TrainingResult,
    describe_length,
    fit_models,
    model_tag,
    run_training,
)
from pipeline.train import FitResult


def _fit(seconds: float, steps: int, best: int) -> FitResult:
    return FitResult(torch.nn.Linear(1, 1), steps, best, 0.5, False, seconds=seconds)


@dataclasses.dataclass(frozen=True)
class _Metrics:
    auroc: float
    planted: float | None = None


def test_training_result_sums_seconds_and_averages_steps_over_members():
    result = TrainingResult("r", torch.nn.Linear(1, 1), (_fit(2, 10, 4), _fit(3, 20, 8)), None)
    assert result.seconds == 5 and result.steps == 15 and result.best_step == 6


def test_rows_lists_train_seconds_then_the_metrics_that_are_set():
    result = TrainingResult("r", torch.nn.Linear(1, 1), (_fit(2, 10, 4),), _Metrics(0.75))
    assert result.rows() == {"train_seconds": 2.0, "auroc": 0.75}


def test_one_model_tag_for_every_job():
    rank1 = TrainConfig(method="rank1", posterior="cauchy", ensemble_size=4)
    assert model_tag(rank1, "lstm") == "rank1-lstm-cauchy-k4"
    assert model_tag(rank1.replace(method="ensemble"), "small-cnn") == "deep-ensemble-small-cnn-4"
    assert model_tag(rank1.replace(method="deterministic"), "lstm") == "deterministic-lstm"


def test_describe_length_writes_whole_lengths_without_a_decimal():
    config = TrainConfig(schedule=ScheduleConfig(length=200.0, kl_anneal=100))
    assert describe_length(config) == "200 steps"
    epochs = config.replace(schedule=ScheduleConfig(unit="epochs", length=0.5, kl_anneal=1))
    assert describe_length(epochs) == "0.5 epochs"


def _tiny_data(n=32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 5, 3, generator=g)  # (stays, hours, channels)
    return x, (x[:, 0, 0] > 0).float()


def _config(method):
    return TrainConfig(
        method=method, ensemble_size=2, batch_size=8, device="cpu", bf16=False,
        schedule=ScheduleConfig(length=4, kl_anneal=2), eval_every=2, checkpoint_every=0,
    )  # fmt: skip


def _model():
    from rank1.models import EHRConfig, EHRModel

    sizes = dict(input_features=3, projection_dim=4, rnn_dim=4, hidden_dim=4)
    return EHRModel(EHRConfig(bayesian=False, **sizes))


@pytest.mark.parametrize("method", ["deterministic", "ensemble"])
def test_fit_models_seeds_the_model_like_a_hand_written_fit(method):
    from pipeline.train import fit, fit_ensemble, seed_everything

    data = _tiny_data()
    common = dict(likelihood="bernoulli", n_train=32, config=_config(method), progress=False)
    model, fits = fit_models(_model, data, data, **common)
    if method == "ensemble":
        expected, _ = fit_ensemble(_model, data, data, **common)
        assert len(fits) == 2
    else:
        seed_everything(0)
        expected = fit(_model(), data, data, **common).model
        assert len(fits) == 1
    for a, b in zip(model.state_dict().values(), expected.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_run_training_logs_one_run_and_returns_the_evaluation(tmp_path, monkeypatch):
    import mlflow

    from pipeline import tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    data = _tiny_data()
    seen = []

    def evaluate(model):
        seen.append(mlflow.active_run().info.run_id)  # evaluated inside the run
        return _Metrics(0.5)

    result = run_training(
        _model, data, data, run=RunSpec("t", {"a": 1}, {"task": "x"}),
        evaluate=evaluate, likelihood="bernoulli", n_train=32,
        config=_config("deterministic"), progress=False,
    )  # fmt: skip
    assert seen == [result.run_id] and result.metrics == _Metrics(0.5)
    metrics = tracking.run_metrics(result.run_id)
    assert metrics["steps"] == 4 and metrics["best_step"] == result.best_step
    history = mlflow.MlflowClient(tracking.tracking_uri()).get_metric_history(
        result.run_id, "train/val_nll"
    )
    assert [m.step for m in history] == [2, 4]
    assert next(result.model.parameters()).device.type == "cpu"


def test_cli_train_prints_the_typed_result(tiny_ehr_features, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flows.cli import app

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app,
        [
            "train", "--features", str(tiny_ehr_features), "--method", "deterministic",
            "--steps", "2", "--batch-size", "8", "--rnn-dim", "4", "--hidden-dim", "4",
            "--device", "cpu",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    run_line = next(line for line in lines if line.startswith("run_id "))
    assert len(run_line.split()[1]) == 32
    names = [line.split()[0] for line in lines if line.startswith("  ")]
    assert names[:2] == ["train_seconds", "val_nll"]
    assert "test_calibrated_ece" in names and "test_planted_auroc" in names  # synthetic data
