"""`rank1 demo` at toy sizes: every printed path exists and the runs are in MLflow."""

import re
import stat

import pytest
from typer.testing import CliRunner


@pytest.mark.slow
def test_demo_command_end_to_end(prefect_harness, tmp_path, monkeypatch):
    import mlflow

    from flows.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(
        app,
        ["demo", "--out", "out", "--patients", "200", "--steps", "10",
         "--image-epochs", "0.25", "--severities", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for method in ("rank1", "deterministic"):
        assert (out / "mimic" / "reports" / method / "report.html").is_file()
        assert f"out/mimic/reports/{method}/report.html" in result.output
    # With no MLFLOW_TRACKING_URI the store is ./mlflow.db in the working folder.
    db = tmp_path / "mlflow.db"
    assert f"MLflow store: sqlite:///{db}" in result.output
    assert f"mlflow ui --backend-store-uri sqlite:///{db}" in result.output
    run_ids = re.findall(r"MLflow run [a-z0-9 ]+:\s+([0-9a-f]{32})", result.output)
    assert len(run_ids) == 4
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiments = {client.get_run(r).info.experiment_id for r in run_ids}
    names = {client.get_experiment(e).name for e in experiments}
    assert names == {"demo-mimic-ihm", "demo-images"}
    # New patients: the rank-1 run is the champion of its own registered model, and it
    # scored the demo's second export into scoring/<export>/.
    champion = client.get_model_version_by_alias("demo-mimic-ihm-rank1", "champion")
    assert champion.run_id in run_ids
    assert (out / "scoring" / "tonight" / "report.html").is_file()
    assert "new patients scored:" in result.output
    assert "by models:/demo-mimic-ihm-rank1/1 (champion)" in result.output
    scoring_run = re.search(r"MLflow scoring run:\s+([0-9a-f]{32})", result.output).group(1)
    assert client.get_run(scoring_run).data.tags["rank1.source_run"] == champion.run_id
