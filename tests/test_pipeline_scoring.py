"""Scoring new patients with a registered model: same risks as the report, drift, one run."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import polars as pl
import pytest

from features.mimic.tables import MimicInputError
from features.synthetic import generate
from pipeline import tracking
from pipeline.config import OptimConfig, ScheduleConfig, TrainConfig
from pipeline.ehr import report_ehr, train_ehr
from pipeline.report import ID_COLUMNS, read_report_document
from pipeline.scoring import FeatureSchemaError, score_mimic
from rank1.models import EHRConfig

SMALL = EHRConfig(projection_dim=8, rnn_dim=16, hidden_dim=16)
CHAMPION = "models:/mimic-ihm-rank1@champion"


@pytest.fixture(scope="module")
def champion(tiny_ehr_features, mlflow_store) -> tracking.ModelVersionRef:
    """A rank-1 model trained on the tiny synthetic cohort, registered and promoted."""
    config = TrainConfig(
        batch_size=32,
        optim=OptimConfig(lr=3e-3),
        schedule=ScheduleConfig(length=30, kl_anneal=15),
        eval_every=10,
        checkpoint_every=0,
        num_eval_samples=2,
        device="cpu",
    )
    result = train_ehr(
        tiny_ehr_features, config, experiment="test-scoring", model_config=SMALL,
        progress=False, promote_if_better=True,
    )  # fmt: skip
    assert result.registered is not None and "champion" in result.registered.aliases
    return result.registered


def _edit_csv(path: Path, change) -> None:
    frame = pl.read_csv(path, infer_schema=False)
    change(frame).write_csv(path)


def _new_export(root: Path, *, seed: int, shift: str | None = None) -> Path:
    """Another synthetic hospital export, its outcome columns removed as tonight's would be."""
    tables = root / f"export-{seed}-{shift or 'base'}"
    generate(tables, patients=150, seed=seed, shift=shift)
    _edit_csv(tables / "ADMISSIONS.csv", lambda f: f.drop("DEATHTIME"))
    _edit_csv(tables / "PATIENTS.csv", lambda f: f.drop("DOD"))
    (tables / "synthetic_truth.csv").unlink()
    return tables


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.integration  # MLflow end to end
def test_scoring_a_split_gives_the_risks_of_the_report(champion, tiny_ehr_features, tmp_path):
    scored = score_mimic(
        CHAMPION, tmp_path / "scored", features_dir=tiny_ehr_features, split="test"
    )
    reported = report_ehr(champion.run_id, tiny_ehr_features, tmp_path / "report", split="test")
    ours = pl.read_parquet(scored.files["parquet"])
    theirs = pl.read_parquet(reported["parquet"])
    assert ours["icustay_id"].to_list() == theirs["icustay_id"].to_list()
    for column in ("risk", "risk_low", "risk_high", "uncertainty_epistemic", "refer"):
        assert ours[column].to_list() == theirs[column].to_list(), column
    # A scoring report never shows outcomes, even of stays whose outcome the folder holds.
    assert "outcome" not in ours.columns and "true_risk" not in ours.columns
    assert scored.model == tracking.resolve(champion.uri)


@pytest.mark.integration
def test_a_new_export_without_outcomes_is_scored_and_logged(champion, tmp_path):
    tables = _new_export(tmp_path, seed=1)
    out = tmp_path / "reports" / "2026-12-01"
    result = score_mimic(CHAMPION, out, mimic_dir=tables, progress=False)
    cohort = result.cohort
    table = pl.read_parquet(result.files["parquet"])
    assert table.height == cohort.stays > 0
    assert "outcome" not in table.columns
    assert 0 < cohort.mean_risk < 1 and cohort.as_of is not None
    assert set(cohort.skipped) == {
        "discharged_under_48h",
        "in_icu_under_48h",
        "no_event_in_first_48h",
    }
    # Another seed of the training population: no often-charted continuous variable drifts
    # badly. (Weight, charted once a stay, and the categorical GCS items, which hold one
    # value for hours on end, rest on a few dozen independent values in a cohort of 150
    # patients: pipeline.drift's docstring puts PSIs of 0.3-0.4 within their noise, and the
    # generator's planted metabolic and neurological latents widen them.)
    assert cohort.drift is not None and cohort.drift.stays == cohort.stays
    often = [
        v for v in cohort.drift.variables if v.kind == "continuous" and v.observed_hours_now >= 500
    ]
    assert len(often) >= 8 and not [v for v in often if v.level == "major"]
    # Per-patient files are owner-only; the temporary feature folder is gone.
    assert _mode(out) == 0o700
    assert all(_mode(path) == 0o600 for path in result.files.values())
    document = json.loads(result.files["json"].read_text())
    assert document["provenance"]["model_registry_version"] == champion.uri
    assert document["provenance"]["model_id"] == champion.model_id
    assert document["drift"]["stays"] == cohort.stays
    assert read_report_document(result.files["parquet"])["drift"] == document["drift"]

    # The MLflow run: cohort-level numbers, tagged with the model version, no identifier.
    import mlflow

    run = mlflow.get_run(result.run_id)
    metrics = run.data.metrics
    assert metrics["stays_scored"] == cohort.stays
    assert metrics["mean_risk"] == pytest.approx(cohort.mean_risk)
    assert "drift/psi/heart_rate" in metrics and "skipped/in_icu_under_48h" in metrics
    assert run.data.params["model.version"] == str(champion.version)
    assert run.data.tags["rank1.model_version"] == champion.uri
    assert run.data.tags["rank1.model_id"] == champion.model_id
    assert run.data.tags["rank1.source_run"] == champion.run_id
    ids = {str(v) for c in ID_COLUMNS for v in table[c].to_list()}
    logged = [*run.data.params.values(), *run.data.tags.values(), *run.data.metrics]
    assert not any(str(value) in ids for value in logged)


@pytest.mark.integration
def test_a_shifted_export_is_flagged_in_the_drift_section(champion, tmp_path):
    tables = _new_export(tmp_path, seed=0, shift="second-site")
    result = score_mimic(CHAMPION, tmp_path / "out", mimic_dir=tables, progress=False)
    drift = result.cohort.drift
    assert drift.variable("Mean blood pressure").level == "not charted"
    assert drift.variable("pH").level == "major"
    assert drift.variable("Temperature").level != "major"  # converted back from Fahrenheit
    page = result.files["html"].read_text()
    assert "Data drift against the training data" in page
    assert "Mean blood pressure: not charted" in page
    document = json.loads(result.files["json"].read_text())
    assert any(w.startswith("Data drift:") for w in document["warnings"])


@pytest.mark.integration
def test_the_real_demo_is_scored(champion, demo_dir, tmp_path):
    from features.mimic.extract import extract_for_scoring

    result = score_mimic(CHAMPION, tmp_path / "demo", mimic_dir=demo_dir, progress=False)
    manifest = extract_for_scoring(demo_dir, tmp_path / "features", progress=False)
    assert result.cohort.stays == manifest.stays > 0
    assert result.cohort.skipped == manifest.skipped.model_dump()


def _scoring_runs() -> int:
    import mlflow

    return len(mlflow.search_runs(experiment_names=["mimic-ihm-scoring"]))


@pytest.mark.integration
def test_bad_input_fails_in_one_line_and_writes_nothing(champion, tiny_ehr_features, tmp_path):
    out = tmp_path / "never"
    runs = _scoring_runs()
    for uri in ("models:/mimic-ihm-rank1@staging", "models:/mimic-ihm-rank1/99", "models:/nope/1"):
        with pytest.raises(tracking.RegistryError) as err:
            score_mimic(uri, out, features_dir=tiny_ehr_features)
        assert "\n" not in str(err.value)

    # A folder of another layout: one channel renamed in its manifest.
    other = tmp_path / "other"
    shutil.copytree(tiny_ehr_features, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["channels"][7] = "Glascow coma scale eye opening->Sometimes"
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeatureSchemaError, match=r"manifest.json: channel 7 is .*Sometimes"):
        score_mimic(CHAMPION, out, features_dir=other)

    # An export where no stay reaches 48 hours.
    tables = _new_export(tmp_path, seed=2)
    _edit_csv(tables / "ICUSTAYS.csv", lambda f: f.with_columns(LOS=pl.lit("1.5")))
    with pytest.raises(MimicInputError, match="no ICU stay reaches 48 hours") as err:
        score_mimic(CHAMPION, out, mimic_dir=tables, progress=False)
    assert "\n" not in str(err.value)
    assert not out.exists()
    assert _scoring_runs() == runs


def test_cli_score_refuses_bad_arguments_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    both = runner.invoke(
        app, ["score", "--out", str(tmp_path / "o"), "--mimic-dir", str(tmp_path),
              "--exports-dir", str(tmp_path)],
    )  # fmt: skip
    assert both.exit_code == 1
    assert both.output.strip() == (
        "error: score_mimic: give exactly one of mimic_dir, exports_dir and features_dir, "
        "got mimic_dir, exports_dir"
    )
    bad_uri = runner.invoke(
        app, ["score", "--out", str(tmp_path / "o"), "--mimic-dir", str(tmp_path),
              "--model", "runs:/abc/model"],
    )  # fmt: skip
    assert bad_uri.exit_code == 1 and bad_uri.output.count("\n") == 1
    assert "parameter 'model_uri': must be models:/NAME@ALIAS or models:/NAME/VERSION" in (
        bad_uri.output
    )
    assert not (tmp_path / "o").exists()


def test_cli_score_of_an_unknown_alias_is_one_line(
    champion, tiny_ehr_features, prefect_harness, tmp_path
):
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(
        app, ["score", "--out", str(tmp_path / "o"), "--features", str(tiny_ehr_features),
              "--model", "models:/mimic-ihm-rank1@staging"],
    )  # fmt: skip
    assert result.exit_code == 1
    line = result.output.strip().splitlines()[-1]
    assert line.startswith("error: RegistryError:") and "has no alias 'staging'" in line
    assert not (tmp_path / "o").exists()
