import dataclasses
import hashlib
import json
import os
import shutil
import stat
from pathlib import Path
from urllib.parse import urlparse

import polars as pl
import pytest
import torch

from features.mimic.loader import FeatureFolderError, load_manifest
from pipeline import tracking
from pipeline.config import OptimConfig, ScheduleConfig, TrainConfig
from pipeline.ehr import (
    CALIBRATION_FILE,
    REFERRAL_FILE,
    feature_fingerprint,
    report_ehr,
    train_ehr,
)
from pipeline.predict import predict_member_logits
from pipeline.provenance import REFERENCE_FILE, UNLIKE_TRAINING_PERCENTILE
from pipeline.scoring_bundle import load_bundle
from rank1.models import EHRConfig

SMALL = EHRConfig(projection_dim=8, rnn_dim=16, hidden_dim=16)


def _config(method="rank1"):
    return TrainConfig(
        method=method,
        batch_size=32,
        optim=OptimConfig(lr=3e-3),
        schedule=ScheduleConfig(length=30, kl_anneal=15),
        eval_every=10,
        checkpoint_every=0,
        num_eval_samples=2,
        device="cpu",
    )


@pytest.mark.integration  # MLflow end to end
def test_train_ehr_logs_run_and_reports(tiny_ehr_features, mlflow_store, tmp_path):
    import mlflow

    result = train_ehr(
        tiny_ehr_features, _config(), experiment="test-ihm", model_config=SMALL,
        progress=False,
    )  # fmt: skip
    run_id = result.run_id
    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    run = client.get_run(run_id)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["train.method"] == "rank1"
    assert params["train.optim.lr"] == "0.003"
    assert params["model.rnn_dim"] == "16" and params["model.rank1.ensemble_size"] == "4"
    fingerprint = feature_fingerprint(load_manifest(tiny_ehr_features))
    assert params["data.feature_fingerprint"] == fingerprint
    assert tags["task"] == "in-hospital-mortality"
    assert tags["model"] == "rank1-lstm-normal-k4" and tags["dataset"] == "synthetic-mimic-iii"
    for key in ("test/auroc", "test/nll", "test_calibrated/nll", "test_calibrated/ece",
                "val/nll", "test/planted_auroc", "test/calibrated_ece_true_risk",
                "calibration/temperature", "train/val_nll"):  # fmt: skip
        assert key in metrics, key
    assert 0.5 < metrics["test/planted_auroc"] <= 1.0
    assert metrics["calibration/temperature"] == pytest.approx(result.metrics.temperature)
    history = client.get_metric_history(run_id, "train/val_nll")
    assert [m.step for m in history] == [10, 20, 30]
    # No patient identifiers anywhere in params, metrics or tags.
    for mapping in (params, metrics, tags):
        for key, value in mapping.items():
            for marker in ("subject_id", "hadm_id", "icustay_id"):
                assert marker not in key.lower() and marker not in str(value).lower()
    artifacts = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert artifacts == {
        "plots/reliability_test_calibrated.png",
        "plots/risk_histogram_test.png",
        "plots/referral_test.png",
    }
    record = tracking.load_dict(run_id, CALIBRATION_FILE)
    assert record["temperature"] == pytest.approx(result.metrics.temperature)
    assert record["ensemble_size"] == 4 and record["num_eval_samples"] == 2
    referral = tracking.load_dict(run_id, REFERRAL_FILE)
    assert referral["by"] == "epistemic" and referral["report_coverage"] == 0.8
    assert len(referral["random"]["nll"]) == len(referral["coverages"]) == 11

    # The logged model reloads and predicts the same as a fresh copy of its weights.
    from features.mimic.loader import load_split

    model = tracking.load_model(run_id, map_location="cpu")
    x, y, stays = load_split(tiny_ehr_features, "test")
    torch.manual_seed(3)
    a = predict_member_logits(model, x, 4, 2)
    torch.manual_seed(3)
    b = predict_member_logits(tracking.load_model(run_id, map_location="cpu"), x, 4, 2)
    assert a.shape == (8, x.shape[0]) and torch.equal(a, b)

    out = tmp_path / "report"
    paths = report_ehr(run_id, tiny_ehr_features, out, coverage=0.75)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for path in paths.values():
        assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o600
    table = pl.read_parquet(paths["parquet"])
    assert table.height == stays.height <= x.shape[0]
    assert table["icustay_id"].to_list() == stays["icustay_id"].to_list()
    assert table["risk"].is_between(0, 1).all()
    assert 0 < table["refer"].sum() < table.height

    # The run recorded its validation stays' epistemic percentile; the report flags by it.
    reference = tracking.load_dict(run_id, REFERENCE_FILE)
    assert reference["percentile"] == UNLIKE_TRAINING_PERCENTILE and reference["split"] == "val"
    assert reference["n_stays"] == int(params["data.n_val"]) and reference["threshold"] > 0
    expected = (table["uncertainty_epistemic"] > reference["threshold"]).to_list()
    assert table["unlike_training"].to_list() == expected
    document = json.loads(paths["json"].read_text())
    (logged,) = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    assert document["provenance"] | {"created_at": None} == {
        "run_id": run_id,
        "model_name": "model",
        "model_id": logged.model_id,
        "model_registry_version": result.registered.uri,  # registered by default
        "method": "rank1",
        "posterior": "normal",
        "feature_fingerprint": fingerprint,
        "split": "test",
        "created_at": None,
    }
    assert document["counts"]["n_unlike_training"] == sum(expected)

    # A run logged before the percentile was recorded still reports; the flag is unavailable.
    folder = Path(urlparse(run.info.artifact_uri).path)
    (folder / REFERENCE_FILE).unlink()
    old = report_ehr(run_id, tiny_ehr_features, tmp_path / "old-report", coverage=0.75)
    old_table = pl.read_parquet(old["parquet"])
    assert old_table["unlike_training"].null_count() == old_table.height
    warnings = json.loads(old["json"].read_text())["warnings"]
    assert any("flag is unavailable" in w for w in warnings)
    assert "flag is unavailable" in old["html"].read_text()


@pytest.mark.parametrize("method", ["deterministic", "ensemble"])
def test_train_ehr_baselines(tiny_ehr_features, mlflow_store, tmp_path, method):
    import mlflow

    config = _config(method).replace(ensemble_size=2)
    run_id = train_ehr(
        tiny_ehr_features, config, experiment="test-ihm", model_config=SMALL, progress=False
    ).run_id
    run = mlflow.MlflowClient(tracking_uri=mlflow_store).get_run(run_id)
    assert run.data.params["train.method"] == method
    metrics = run.data.metrics
    assert "test/auroc" in metrics and "test_calibrated/nll" in metrics
    if method == "ensemble":
        assert run.data.tags["model"] == "deep-ensemble-lstm-2"
        assert "train/member_1/val_nll" in metrics
        assert tracking.load_dict(run_id, CALIBRATION_FILE)["ensemble_size"] == 2
    else:
        assert run.data.tags["model"] == "deterministic-lstm"
        assert tracking.load_dict(run_id, CALIBRATION_FILE)["ensemble_size"] == 1
        # No epistemic part: nothing to compare with, and the report says why.
        assert tracking.load_dict(run_id, REFERENCE_FILE)["threshold"] is None
        # The model's scoring bundle says so too: no posterior, no epistemic threshold.
        bundle = load_bundle(run_id)
        assert (bundle.method, bundle.posterior, bundle.ensemble_size) == (method, None, 1)
        assert bundle.reference().threshold is None
        paths = report_ehr(run_id, tiny_ehr_features, tmp_path / "report")
        table = pl.read_parquet(paths["parquet"])
        assert table["unlike_training"].null_count() == table.height
        document = json.loads(paths["json"].read_text())
        assert document["provenance"]["method"] == "deterministic"
        assert document["provenance"]["posterior"] is None
        assert any(w.startswith("Deterministic model") for w in document["warnings"])


def test_train_ehr_refuses_torchrun(tiny_ehr_features, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="single process"):
        train_ehr(tiny_ehr_features, _config(), progress=False)


def test_feature_fingerprint_is_that_of_the_entries_as_stored(tiny_ehr_features):
    # Runs logged before the manifest was typed recorded this hash of the raw JSON entries;
    # the typed manifest must give the same, or their reports would be refused.
    raw = json.loads((tiny_ehr_features / "manifest.json").read_text())
    entries = {key: raw[key] for key in ("channels", "hours", "normaliser")}
    canonical = json.dumps(entries, sort_keys=True, separators=(",", ":")).encode("utf-8")
    expected = hashlib.sha256(canonical).hexdigest()[:16]
    assert feature_fingerprint(load_manifest(tiny_ehr_features)) == expected


def test_report_refuses_a_feature_folder_the_run_was_not_trained_on(
    tiny_ehr_features, mlflow_store, tmp_path
):
    # A run that recorded the fingerprint of tiny_ehr_features (and has no model: the check
    # must come before anything is loaded or written).
    trained_on = feature_fingerprint(load_manifest(tiny_ehr_features))
    params = {"data": {"feature_fingerprint": trained_on}}
    with tracking.start_run("test-ihm", params=params) as run:
        pass
    other = tmp_path / "other-features"
    shutil.copytree(tiny_ehr_features, other)
    manifest = json.loads((other / "manifest.json").read_text())
    key = next(k for k, v in manifest["normaliser"].items() if isinstance(v, list))
    manifest["normaliser"][key][0] += 1.0  # e.g. statistics fitted on another cohort
    (other / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "report"
    with pytest.raises(FeatureFolderError, match="differ from the feature folder run") as info:
        report_ehr(run.info.run_id, other, out)
    assert str(info.value).startswith(str(other / "manifest.json"))
    assert "\n" not in str(info.value) and not out.exists()


def test_cli_report_with_a_tampered_model_fails_in_one_line_and_runs_nothing(
    tiny_ehr_features, mlflow_store, tmp_path
):
    import mlflow
    from typer.testing import CliRunner

    from flows.cli import app
    from rank1.models import EHRModel

    with tracking.start_run("test-ihm") as run:
        tracking.log_model(EHRModel(dataclasses.replace(SMALL, input_features=3)))
    (logged,) = mlflow.MlflowClient().search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    folder = Path(urlparse(logged.artifact_location).path)
    # Whatever file holds the weights (weights.pt now, data/model.pth in the old format).
    (weights,) = [p for p in folder.rglob("*") if p.suffix in (".pt", ".pth")]
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"projection.weight": Payload()}, weights)
    out = tmp_path / "report"
    args = ["report", "--run", run.info.run_id, "--features", str(tiny_ehr_features)]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {weights}: refusing to load")
    assert not marker.exists() and not out.exists()
