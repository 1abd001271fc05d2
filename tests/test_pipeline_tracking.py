import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from pipeline import tracking


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh())
        self.head = torch.nn.Linear(5, 1)

    def forward(self, x):
        return self.head(self.body(x))


@dataclasses.dataclass
class OptimConfig:
    lr: float = 3e-4
    steps: int = 10


def test_tracking_uri_default_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert tracking.default_artifact_location() == (tmp_path.resolve() / "mlartifacts").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.tracking_uri() == "http://127.0.0.1:5000"
    assert tracking.default_artifact_location() is None


def test_flatten_params_nested_and_dataclass():
    flat = tracking.flatten_params(
        {"model": {"k": 4, "lstm": {"hidden": 8}}, "optim": OptimConfig(), "out": Path("/x")}
    )
    assert flat == {
        "model.k": 4,
        "model.lstm.hidden": 8,
        "optim.lr": 3e-4,
        "optim.steps": 10,
        "out": "/x",
    }


@pytest.mark.parametrize(
    ("kind", "mapping", "match"),
    [
        ("params", {"data.subject_id": 123}, "patient identifier"),
        ("tags", {"Patient_Name": "x"}, "patient identifier"),
        ("metrics", {"risk_icustay_id_200001": 0.3}, "patient identifier"),
        ("tags", {"note": "worst case hadm_id=100001"}, "mentions a patient identifier"),
        ("params", {"risks": list(range(100))}, "sequence of 100"),
        ("params", {"ids": np.arange(10)}, "array of 10"),
    ],
)
def test_guard_refuses_patient_data(kind, mapping, match):
    with pytest.raises(ValueError, match=match):
        tracking.check_no_patient_data(mapping, kind)


def test_start_run_guard_fires_before_mlflow_touches_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(ValueError, match="stay_id"):
        with tracking.start_run("exp", params={"cohort": {"stay_id": 5}}):
            pass
    assert not (tmp_path / "mlflow.db").exists()
    with pytest.raises(RuntimeError, match="no active MLflow run"):
        tracking.log_metrics({"nll": 0.1})
    with pytest.raises(ValueError, match="patient identifier"):
        with tracking.start_run("exp", run_name="icustay_id 200001"):
            pass
    assert not (tmp_path / "mlflow.db").exists()
    # Ordinary configuration and free text about patients are allowed.
    tracking.check_no_patient_data(
        {"model.hidden": 128, "interval": (5, 95), "about": "predicts patient mortality"}, "tags"
    )


def test_run_params_metrics_artifacts_and_model_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    torch.manual_seed(0)
    model = TinyNet().eval()
    config = {"model": {"k": 4, "hidden": 5}, "optim": OptimConfig()}

    with tracking.start_run(
        "rank1-test", run_name="r1", params=config, tags={"task": "ihm"}
    ) as run:
        tracking.log_metrics({"nll": 0.25, "auroc": np.float64(0.8)}, step=1, prefix="val/")
        tracking.log_metrics({"ece": torch.tensor(0.05)})
        fig = Figure()
        fig.add_subplot().plot([0, 1], [0, 1])
        tracking.log_figure(fig, "plots/diag.png")
        tracking.log_dict({"method": "temperature_scaling", "temperature": 1.7}, "scaler.json")
        with pytest.raises(ValueError, match="patient"):
            tracking.log_metrics({"patient_count": 3})
        with pytest.raises(TypeError):
            tracking.log_metrics({"nll": "low"})
        tracking.log_model(model)
        run_id = run.info.run_id

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    stored = client.get_run(run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.params == {
        "model.k": "4",
        "model.hidden": "5",
        "optim.lr": "0.0003",
        "optim.steps": "10",
    }
    assert stored.data.metrics == {"val/nll": 0.25, "val/auroc": 0.8, "ece": pytest.approx(0.05)}
    assert stored.data.tags["task"] == "ihm"
    assert {a.path for a in client.list_artifacts(run_id)} >= {"plots", "scaler.json"}
    scaler_path = client.download_artifacts(run_id, "scaler.json", str(tmp_path / "dl"))
    assert json.loads(Path(scaler_path).read_text())["temperature"] == 1.7
    # Artifacts live beside the database, inside tmp_path.
    assert list((tmp_path / "mlartifacts").rglob("diag.png"))

    reloaded = tracking.load_model(run_id)
    assert type(reloaded) is TinyNet
    x = torch.randn(7, 3)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), model(x))
    requirements = list(tmp_path.rglob("requirements.txt"))
    assert requirements
    # Only what we passed (MLflow adds itself): nothing inferred from the environment.
    names = {line.split("==")[0] for line in requirements[0].read_text().split()}
    assert names == {"torch", "rank1-bnn", "mlflow"}
