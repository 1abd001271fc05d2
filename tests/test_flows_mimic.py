"""The MIMIC-III flows end to end on a temporary Prefect API and MLflow store."""

import os
import shutil
import stat

import polars as pl
import pytest
from typer.testing import CliRunner

from flows.params import ClinicalParams, ParameterError

# Small but real training: the flows are under test here, not the model's accuracy.
TRAIN = {
    "batch_size": 32,
    "optim": {"lr": 3e-3},
    "schedule": {"length": 16, "kl_anneal": 8},
    "eval_every": 8,
    "checkpoint_every": 0,
    "device": "cpu",
}
MODEL = {"projection_dim": 8, "rnn_dim": 16, "hidden_dim": 16}
ID_COLUMNS = ("subject_id", "hadm_id", "icustay_id")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working folder with its own MLflow store, used as the current directory."""

    root = tmp_path_factory.mktemp("flows_mimic")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        yield root


@pytest.fixture(scope="module")
def synthetic_mimic(workdir):
    from features.synthetic import generate

    generate(workdir / "mimic", patients=150, seed=0)
    return workdir / "mimic"


def _client():
    import mlflow

    return mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def test_extraction_outdated_compares_hashes_and_settings(tmp_path, tiny_ehr_features):
    from flows.mimic import extraction_outdated

    raw = tiny_ehr_features.parent / "mimic"
    mimic = tmp_path / "mimic"
    shutil.copytree(raw, mimic)
    args = (mimic, tiny_ehr_features, 0, 0.15, 0.15)
    assert extraction_outdated(*args) is None
    assert extraction_outdated(mimic, tmp_path / "none", 0, 0.15, 0.15).startswith("no feature")
    assert extraction_outdated(mimic, tiny_ehr_features, 1, 0.15, 0.15) == (
        "the split settings changed"
    )
    # Same size, different content: only the hash can tell.
    table = mimic / "PATIENTS.csv"
    text = table.read_text()
    last = text.rstrip("\n").rsplit("\n", 1)[1]
    digit = next(c for c in reversed(last) if c.isdigit())
    swapped = last[::-1].replace(digit, "9" if digit != "9" else "8", 1)[::-1]
    table.write_text(text.replace(last, swapped))
    assert table.stat().st_size == (raw / "PATIENTS.csv").stat().st_size
    assert extraction_outdated(*args) == "PATIENTS changed content"
    table.write_text(text + "\n")
    assert extraction_outdated(*args) == "PATIENTS changed size"


def test_a_manifest_that_does_not_load_is_outdated(tmp_path, tiny_ehr_features):
    import json

    from flows.mimic import extraction_outdated

    out = tmp_path / "features"
    shutil.copytree(tiny_ehr_features, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["schema_version"] = 2  # same tables and settings, but a layout this code can't read
    (out / "manifest.json").write_text(json.dumps(manifest))
    reason = extraction_outdated(tiny_ehr_features.parent / "mimic", out, 0, 0.15, 0.15)
    assert reason.startswith("the existing manifest does not load (") and "re-extract" in reason


def test_bad_parameters_fail_before_any_work(prefect_harness, workdir, synthetic_mimic):
    from flows.mimic import clinical_pipeline, extract_mimic

    out = workdir / "never"
    with pytest.raises(ParameterError, match="extract_mimic: parameter 'mimic_dir'"):
        extract_mimic({"mimic_dir": workdir / "missing", "out_dir": out})
    with pytest.raises(ParameterError, match="parameter 'train.optim.lr'"):
        clinical_pipeline(
            {"mimic_dir": synthetic_mimic, "out_dir": out, "train": {"optim": {"lr": -1.0}}}
        )
    with pytest.raises(ParameterError, match="parameter 'methods.0'"):
        clinical_pipeline({"mimic_dir": synthetic_mimic, "out_dir": out, "methods": ["bayes"]})
    assert not out.exists()


def test_clinical_pipeline_end_to_end(prefect_harness, workdir, synthetic_mimic):
    from flows.mimic import clinical_pipeline

    out = workdir / "out"
    result = clinical_pipeline(ClinicalParams(
        mimic_dir=synthetic_mimic, out_dir=out, methods=["rank1", "deterministic"], train=TRAIN,
        model=MODEL, experiment="flows-test",
    ))  # fmt: skip
    assert result["extracted"] is True
    assert set(result["runs"]) == {"rank1", "deterministic"}
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    stays = pl.read_parquet(out / "features" / "stays.parquet")
    for method, html in result["reports"].items():
        folder = out / "reports" / method
        assert html == str(folder / "report.html")
        for name in ("report.html", "report.csv", "report.json", "report.parquet"):
            assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
        report = pl.read_parquet(folder / "report.parquet")
        assert report.height == stays.filter(pl.col("split") == "test").height

    client = _client()
    for method, run_id in result["runs"].items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["train.method"] == method
        assert run.data.params["model.rnn_dim"] == "16"
        assert run.data.tags["dataset"] == "synthetic-mimic-iii"
        assert run.info.run_name.startswith(method + "-")
        assert "test_calibrated/nll" in run.data.metrics
        # Each run became a version of its method's registered model (register_as's default).
        (version,) = client.search_model_versions(
            f"name = 'mimic-ihm-{method}' and run_id = '{run_id}'"
        )
        assert version.tags["method"] == method
        # No patient identifier reaches MLflow: neither a column name nor an id value.
        ids = {str(v) for column in ID_COLUMNS for v in stays[column].to_list()}
        logged = {**run.data.params, **run.data.tags, **version.tags}
        for key, value in logged.items():
            assert not any(c in key.lower() or c in value.lower() for c in ID_COLUMNS)
            assert value not in ids

    # Unchanged inputs: extraction is skipped and the feature folder is kept as it is.
    manifest = out / "features" / "manifest.json"
    before = manifest.stat().st_mtime_ns
    again = clinical_pipeline(ClinicalParams(
        mimic_dir=synthetic_mimic, out_dir=out, methods=["deterministic"], train=TRAIN,
        model=MODEL, experiment="flows-test",
    ))  # fmt: skip
    assert again["extracted"] is False
    assert manifest.stat().st_mtime_ns == before
    assert again["runs"]["deterministic"] != result["runs"]["deterministic"]


def test_flow_runs_carry_no_patient_identifiers(prefect_harness, workdir):
    """Flow-run names and parameters hold paths and settings only."""
    import asyncio

    from prefect.client.orchestration import get_client

    async def runs():
        async with get_client() as client:
            return await client.read_flow_runs()

    flow_runs = asyncio.run(runs())
    assert flow_runs, "the pipeline test above must have run first"
    for run in flow_runs:
        text = (run.name + " " + repr(run.parameters)).lower()
        assert not any(column in text for column in ID_COLUMNS)


def test_report_flow_refuses_a_missing_feature_folder(prefect_harness, workdir):
    from flows.mimic import report_mimic

    with pytest.raises(ParameterError, match="parameter 'features_dir': .* not a feature folder"):
        report_mimic({"run_id": "a" * 32, "features_dir": workdir / "nothing", "out_dir": "r"})


def test_cli_pipeline_failure_is_one_line(prefect_harness, workdir):
    from flows.cli import app

    result = CliRunner().invoke(app, ["pipeline", "--mimic-dir", str(workdir / "missing")])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: clinical_pipeline: parameter 'mimic_dir': {workdir / 'missing'} is not a folder"
    ]
    assert "Traceback" not in result.output


def test_cli_pipeline_bad_input_table_is_one_line(prefect_harness, workdir, synthetic_mimic):
    from flows.cli import app

    broken = workdir / "broken"
    shutil.copytree(synthetic_mimic, broken)
    (broken / "ICUSTAYS.csv").write_text("not,a,mimic,table\n1,2,3,4\n")
    result = CliRunner().invoke(
        app, ["pipeline", "--mimic-dir", str(broken), "--out", str(workdir / "b"), "--steps", "4"]
    )
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "ICUSTAYS" in errors[0]
    assert "Traceback" not in result.output


@pytest.mark.slow
@pytest.mark.demo
def test_clinical_pipeline_on_mimic_demo(prefect_harness, workdir, demo_dir):
    from flows.mimic import clinical_pipeline

    out = workdir / "demo"
    result = clinical_pipeline(ClinicalParams(
        mimic_dir=demo_dir, out_dir=out, methods=["rank1"], train=TRAIN, model=MODEL,
        experiment="flows-demo",
    ))  # fmt: skip
    run = _client().get_run(result["runs"]["rank1"])
    assert run.data.tags["dataset"] == "mimic-iii"
    assert "test/auroc" in run.data.metrics or "test/nll" in run.data.metrics
    report = pl.read_parquet(out / "reports" / "rank1" / "report.parquet")
    stays = pl.read_parquet(out / "features" / "stays.parquet")
    assert report.height == stays.filter(pl.col("split") == "test").height > 0


def test_tasks_retry_transient_errors_only(prefect_harness):
    from prefect import flow, task

    from flows.tasks import retry_transient

    attempts = {"value": 0, "io": 0}

    @task(retries=2, retry_delay_seconds=0, retry_condition_fn=retry_transient)
    def fails(kind: str) -> None:
        attempts[kind] += 1
        raise ValueError("bad input") if kind == "value" else OSError("disk hiccup")

    @flow
    def run(kind: str):
        return fails(kind, return_state=True)

    # A bad input fails at once; an I/O error uses both retries.
    assert run("value", return_state=True).is_failed() and attempts["value"] == 1
    assert run("io", return_state=True).is_failed() and attempts["io"] == 3
