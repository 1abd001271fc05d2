import dataclasses
import json
import os
import pickle
import stat
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from pipeline import tracking
from rank1.models import EHRConfig, EHRModel


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
    model = _tiny_ehr().eval()
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
    assert type(reloaded) is EHRModel and reloaded.config == model.config
    x = torch.randn(8, 10, 3)  # a tiled batch: K = 4 members of 2
    with torch.no_grad():
        torch.manual_seed(1)
        expected = model(x)
        torch.manual_seed(1)
        torch.testing.assert_close(reloaded(x), expected)
    requirements = list(tmp_path.rglob("requirements.txt"))
    assert requirements
    # Only what we passed (MLflow adds itself): nothing inferred from the environment.
    names = {line.split("==")[0] for line in requirements[0].read_text().split()}
    assert names == {"torch", "rank1-bnn", "mlflow"}


def test_logged_model_is_an_mlflow_model_of_weights_and_config(tmp_path, monkeypatch):
    import mlflow
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    model = _tiny_ehr()
    with tracking.start_run("rank1-test") as run:
        uri = tracking.log_model(model)
    # A first-class logged model of the run (listed under its Models, registrable)...
    client = mlflow.MlflowClient()
    logged = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert [(m.name, m.source_run_id) for m in logged] == [("model", run.info.run_id)]
    # ...made of a state dict and a JSON config: no pickled object anywhere in it.
    files = {p.name for p in (tmp_path / "mlartifacts").rglob("*") if p.is_file()}
    assert {"weights.pt", "model.json", "MLmodel", "mlflow_model.py"} <= files
    assert not {name for name in files if name.endswith((".pkl", ".pth", ".pickle"))}
    document = json.loads(next((tmp_path / "mlartifacts").rglob("model.json")).read_text())
    assert document["model"]["kind"] == "ehr"
    # MLflow's own pyfunc loader serves it (this runs our code file, never a pickle).
    probs = mlflow.pyfunc.load_model(uri).predict(np.zeros((2, 10, 3), np.float32))
    assert probs.shape == (2,) and ((probs > 0) & (probs < 1)).all()


def _tiny_ehr():
    torch.manual_seed(0)
    return EHRModel(EHRConfig(input_features=3, projection_dim=4, rnn_dim=5, hidden_dim=3))


@pytest.fixture(scope="module")
def model_store(tmp_path_factory):
    # One store for the tampering tests: creating a sqlite schema costs seconds.
    folder = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        yield folder


def _logged_run(store: Path) -> tuple[str, Path]:
    """Log a fresh tiny model; return its run id and the folder holding its files."""
    import mlflow

    with tracking.start_run("tamper") as run:
        tracking.log_model(_tiny_ehr())
    (logged,) = mlflow.MlflowClient().search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    return run.info.run_id, Path(urlparse(logged.artifact_location).path)


class _RunsShell:
    """A pickle payload: unpickling it runs a shell command."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("container", ["pickle", "torch.save"])
def test_tampered_weights_file_fails_in_one_line_and_runs_nothing(model_store, container):
    run_id, folder = _logged_run(model_store)
    marker = model_store / f"pwned-{container}"
    payload = _RunsShell(f"touch {marker}")
    # Whatever file holds the weights (weights.pt now, data/model.pth in the old format).
    (target,) = [p for p in folder.rglob("*") if p.suffix in (".pt", ".pth")]
    if container == "pickle":
        target.write_bytes(pickle.dumps(payload))
    else:
        torch.save({"weight": payload}, target)
    with pytest.raises(tracking.ModelArtifactError) as info:
        tracking.load_model(run_id)
    message = str(info.value)
    assert "\n" not in message and str(target) in message
    assert "refusing to load" in message
    assert not marker.exists()


def test_foreign_model_files_fail_in_one_line_naming_the_file(model_store):
    run_id, folder = _logged_run(model_store)
    config = next(folder.rglob("model.json"))
    document = json.loads(config.read_text())
    original = json.dumps(document)

    document["model"]["kind"] = "pipeline.evil"
    config.write_text(json.dumps(document))
    with pytest.raises(tracking.ModelArtifactError, match="unknown model kind") as info:
        tracking.load_model(run_id)
    assert str(info.value).startswith(str(config)) and "\n" not in str(info.value)

    config.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(tracking.ModelArtifactError, match=f"^{config}: not a rank1-bnn"):
        tracking.load_model(run_id)

    document = json.loads(original)
    document["model"]["config"]["rnn_dim"] = 7  # weights of another shape
    config.write_text(json.dumps(document))
    weights = next(folder.rglob("weights.pt"))
    with pytest.raises(tracking.ModelArtifactError, match=f"^{weights}: the weights do not fit"):
        tracking.load_model(run_id)

    config.write_text(original)
    weights.unlink()
    with pytest.raises(tracking.ModelArtifactError, match=f"^{weights}: missing") as info:
        tracking.load_model(run_id)
    assert "\n" not in str(info.value)

    with pytest.raises(tracking.ModelArtifactError, match="no logged model named 'other'"):
        tracking.load_model(run_id, "other")


def test_old_pickle_format_run_is_refused(model_store):
    import mlflow.pytorch

    with tracking.start_run("old-format") as run:
        mlflow.pytorch.log_model(
            _tiny_ehr(), name="model", serialization_format="pickle", pip_requirements=["torch"]
        )
    with pytest.raises(tracking.ModelArtifactError, match="old pickle format; retrain") as info:
        tracking.load_model(run.info.run_id)
    assert "\n" not in str(info.value) and "MLmodel" in str(info.value)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_local_store_and_its_artifacts_are_owner_only(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    umask = os.umask(0o022)
    try:
        with tracking.start_run("modes"):
            tracking.log_dict({"temperature": 1.5}, "calibration/temperature.json")
            fig = Figure()
            fig.add_subplot().plot([0, 1], [0, 1])
            tracking.log_figure(fig, "plots/diag.png")
            tracking.log_model(_tiny_ehr())
        # The umask scope around MLflow's writes leaves the process's umask as it was.
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(umask)
    assert _mode(tmp_path / "mlflow.db") == 0o600
    artifacts = tmp_path / "mlartifacts"
    assert _mode(artifacts) == 0o700
    written = list(artifacts.rglob("*"))
    assert any(p.name == "weights.pt" for p in written)
    assert any(p.name == "diag.png" for p in written)
    for path in written:
        assert _mode(path) == (0o700 if path.is_dir() else 0o600), path


def test_a_first_read_also_creates_the_store_owner_only(tmp_path, monkeypatch):
    # `rank1 pipeline` looks for stale runs before it starts one: that read must not let
    # MLflow create the database with the umask's mode.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    umask = os.umask(0o022)
    try:
        assert tracking.fail_stale_runs("no-such-experiment", "ab12") == []
    finally:
        os.umask(umask)
    assert _mode(tmp_path / "mlflow.db") == 0o600
    assert _mode(tmp_path / "mlartifacts") == 0o700


def test_a_store_the_user_made_keeps_its_modes(tmp_path, monkeypatch):
    import sqlite3

    db = tmp_path / "mlflow.db"
    sqlite3.connect(db).close()
    os.chmod(db, 0o644)
    (tmp_path / "mlartifacts").mkdir()
    os.chmod(tmp_path / "mlartifacts", 0o755)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    with tracking.start_run("theirs"):
        pass
    assert _mode(db) == 0o644 and _mode(tmp_path / "mlartifacts") == 0o755


_FIRST_RUN = """
import pathlib, sys, time
import mlflow  # imported before the start signal, so both processes reach the store at once
from pipeline import tracking
pathlib.Path(sys.argv[2]).touch()
while not pathlib.Path(sys.argv[1]).exists():
    time.sleep(0.005)
with tracking.start_run("race"):
    pass
"""


@pytest.mark.integration  # two MLflow-logging subprocesses
def test_two_first_runs_at_once_on_a_fresh_store_both_succeed(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    repo = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": path}
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _FIRST_RUN, str(go), str(flag)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    try:
        deadline = time.monotonic() + 120
        while not all(flag.exists() for flag in ready) and time.monotonic() < deadline:
            time.sleep(0.01)
        go.touch()
        errors = [proc.communicate(timeout=120)[1] for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    for proc, err in zip(procs, errors, strict=True):
        reason = [line for line in err.splitlines() if "Error" in line] or [err[-200:]]
        assert proc.returncode == 0, reason[-1]
    experiment = mlflow.MlflowClient(uri).get_experiment_by_name("race")
    assert len(mlflow.MlflowClient(uri).search_runs([experiment.experiment_id])) == 2


def test_mlflow_errors_leave_as_one_line_tracking_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    unknown = "0123456789abcdef0123456789abcdef"
    with tracking.start_run("errors-test") as run:
        run_id = run.info.run_id
    calls = {
        "run_params": lambda: tracking.run_params(unknown),
        "run_metrics": lambda: tracking.run_metrics(unknown),
        "load_model": lambda: tracking.load_model(unknown),
        "load_dict": lambda: tracking.load_dict(run_id, "missing.json"),
    }
    for name, call in calls.items():
        with pytest.raises(tracking.TrackingError) as caught:  # noqa: PT012 - one call each
            call()
        message = str(caught.value)
        assert "\n" not in message and f"(MLflow store sqlite:///{tmp_path}/mlflow.db)" in message
        assert isinstance(caught.value, RuntimeError), name
    with pytest.raises(tracking.TrackingError, match=f"Run with id={unknown} not found"):
        with tracking.resume_run(unknown):
            pass


def test_an_unknown_run_is_not_retried_by_the_flows(tmp_path, monkeypatch):
    from flows.tasks import retry_transient

    class Failed:  # the part of a Prefect state that retry_transient reads
        def __init__(self, error):
            self.error = error

        def result(self, raise_on_failure):
            return self.error

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with pytest.raises(tracking.TrackingNotFoundError) as caught:
        tracking.run_params("0123456789abcdef0123456789abcdef")
    # Asking again gives the same answer: a ValueError, which the flows fail at once.
    assert isinstance(caught.value, ValueError)
    assert not retry_transient(None, None, Failed(caught.value))
    # An unreachable server may come back: still retried.
    assert retry_transient(None, None, Failed(tracking.TrackingError("connection refused")))


def test_tracking_error_hides_the_password_of_a_server_uri(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://user:secret@127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(tracking.TrackingError) as caught:
        tracking.run_params("0123456789abcdef0123456789abcdef")
    message = str(caught.value)
    assert "\n" not in message and message.endswith("(MLflow store http://127.0.0.1:9)")
    assert "secret" not in message
