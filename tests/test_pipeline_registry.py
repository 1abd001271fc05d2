"""The model registry of the IHM models: register, promote, resolve, and the scoring bundle."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from typer.testing import CliRunner

from features.mimic.loader import load_manifest, load_split
from flows.cli import app
from flows.params import ParameterError, TrainParams, validate
from pipeline import tracking
from pipeline.config import OptimConfig, ScheduleConfig, TrainConfig
from pipeline.ehr import (
    CALIBRATION_FILE,
    SELECTION_METRIC,
    feature_fingerprint,
    load_scorer,
    train_ehr,
)
from pipeline.predict import predict_member_logits
from pipeline.provenance import REFERENCE_FILE
from pipeline.scoring_bundle import BUNDLE_DOCUMENT, load_bundle
from rank1.models import EHRConfig, EHRModel

SMALL = EHRConfig(projection_dim=8, rnn_dim=16, hidden_dim=16)
NAME = "mimic-ihm-rank1"  # the default registered model of a rank-1 training


def _config(lr: float = 3e-3) -> TrainConfig:
    return TrainConfig(
        method="rank1",
        batch_size=32,
        optim=OptimConfig(lr=lr),
        schedule=ScheduleConfig(length=30, kl_anneal=15),
        eval_every=10,
        checkpoint_every=0,
        num_eval_samples=2,
        device="cpu",
    )


@pytest.fixture(scope="module")
def trained(tiny_ehr_features, mlflow_store):
    """Two trainings of the default registered model, both asking to be promoted if better.

    The second barely trains (a tiny learning rate), so its validation NLL differs.
    """
    first = train_ehr(
        tiny_ehr_features, _config(), experiment="test-registry", model_config=SMALL,
        progress=False, promote_if_better=True,
    )  # fmt: skip
    second = train_ehr(
        tiny_ehr_features, _config(lr=1e-6), experiment="test-registry", model_config=SMALL,
        progress=False, promote_if_better=True,
    )  # fmt: skip
    return first, second


def _tiny_run(metrics: dict[str, float] | None = None, documents=None) -> str:
    """A run with a tiny logged model (no training) and the given metrics."""
    with tracking.start_run("test-registry-fake") as run:
        tracking.log_model(
            EHRModel(dataclasses.replace(SMALL, input_features=3)), documents=documents
        )
        if metrics:
            tracking.log_metrics(metrics)
    return run.info.run_id


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and text.strip() == text, text
    return text


def _model_folder(version: tracking.ModelVersionRef) -> Path:
    import mlflow

    location = mlflow.MlflowClient().get_logged_model(version.model_id).artifact_location
    return Path(urlparse(location).path)


# --------------------------------------------------------------------------- training


@pytest.mark.integration  # MLflow end to end
def test_training_registers_each_run_as_the_next_version(trained, tiny_ehr_features):
    import mlflow

    first, second = trained
    assert first.registered.name == second.registered.name == NAME
    assert (first.registered.version, second.registered.version) == (1, 2)
    assert first.registered.uri == f"models:/{NAME}/1"
    for result in trained:
        assert result.registered.run_id == result.run_id
        assert result.registered.model_id == tracking.logged_model_id(result.run_id)
    assert first.registered in tracking.run_versions(first.run_id)
    assert tracking.run_versions(_tiny_run()) == ()
    with pytest.raises(tracking.RegistryError, match="not a run id"):
        tracking.run_versions("x' or name = 'y")
    tags = mlflow.MlflowClient().get_model_version(NAME, "1").tags
    manifest = load_manifest(tiny_ehr_features)
    assert tags == {
        "task": "in-hospital-mortality",
        "method": "rank1",
        "data.schema_version": str(manifest.schema_version),
        "data.feature_fingerprint": feature_fingerprint(manifest),
    }


@pytest.mark.integration
def test_promote_if_better_at_training_compares_validation_nll(trained):
    first, second = trained
    # No champion before the first: it became one. The second only if its NLL is lower.
    assert first.registered.aliases == ("champion",)
    nll = [tracking.run_metrics(r.run_id)[SELECTION_METRIC] for r in trained]
    assert nll[0] != nll[1]
    second_won = nll[1] < nll[0]
    assert ("champion" in second.registered.aliases) == second_won
    champion = tracking.resolve(f"models:/{NAME}@champion")
    assert champion.version == (2 if second_won else 1)


def test_promote_if_better_promotes_only_a_lower_metric(mlflow_store):
    name = "compare-val-nll"
    versions = [
        tracking.register_model(_tiny_run(metrics), name)
        for metrics in (
            {"val/nll": 0.5},
            {"val/nll": 0.6},
            {"val/nll": 0.5},
            None,
            {"val/nll": 0.4},
        )
    ]
    promoted = [
        "champion" in tracking.promote_if_better(v, metric="val/nll").aliases for v in versions
    ]
    # First (no champion yet), not worse, not a tie, not without the metric; then better.
    assert promoted == [True, False, False, False, True]
    assert tracking.resolve(f"models:/{name}@champion").version == 5
    assert tracking.alias_holder(name, "staging") is None
    assert tracking.alias_holder("never-registered") is None


# --------------------------------------------------------------------------- aliases


def test_promote_moves_the_alias_and_resolve_reads_both_forms(trained):
    name = "alias-moves"
    first, second = (tracking.register_model(r.run_id, name) for r in trained)
    assert first.aliases == second.aliases == ()
    promoted = tracking.promote(name, 2, alias="staging")
    assert promoted == dataclasses.replace(second, aliases=("staging",))
    assert tracking.resolve(f"models:/{name}@staging") == promoted
    tracking.promote(name, "1", alias="staging")  # moved: version 2 loses it
    assert tracking.resolve(f"models:/{name}/2").aliases == ()
    assert tracking.resolve(f"models:/{name}@staging").version == 1
    assert tracking.promote(name, 1).aliases == ("champion", "staging")
    assert tracking.resolve(f"  models:/{name}/1 ").run_id == trained[0].run_id


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda: tracking.resolve("models:/no-such-model@champion"),
         "no registered model 'no-such-model' (registered: "),
        (lambda: tracking.resolve(f"models:/{NAME}/99"),
         f"registered model '{NAME}' has no version 99 (latest version is "),
        (lambda: tracking.resolve(f"models:/{NAME}@staging"),
         f"registered model '{NAME}' has no alias 'staging' (aliases: champion)"),
        (lambda: tracking.resolve(f"runs:/abc/{NAME}"),
         "not a registered model URI: 'runs:/abc/mimic-ihm-rank1' (expected models:/NAME@ALIAS "
         "or models:/NAME/VERSION)"),
        (lambda: tracking.resolve(f"models:/{NAME}/latest"), "not a registered model URI: "),
        (lambda: tracking.resolve(f"models:/{NAME}/0"),
         f"not a registered model URI: 'models:/{NAME}/0'"),
        (lambda: tracking.resolve("models:/a/b/c"), "not a registered model URI: "),
        (lambda: tracking.resolve("models:/bad name/1"), "registered model name must be"),
        (lambda: tracking.promote(NAME, 99),
         f"registered model '{NAME}' has no version 99 (latest version is 2)"),
        (lambda: tracking.promote("no-such-model", 1), "no registered model 'no-such-model'"),
        (lambda: tracking.promote(NAME, 1, alias="v2"), "alias 'v2' is reserved by MLflow"),
        (lambda: tracking.promote(NAME, 1, alias="two words"), "alias must be letters"),
    ],
)  # fmt: skip
def test_every_bad_registry_request_is_one_line(trained, call, expected):
    with pytest.raises(tracking.RegistryError) as info:
        call()
    assert _one_line(info.value).startswith(expected), str(info.value)


def test_register_refuses_bad_names_and_identifiers_before_writing(trained):
    run_id = trained[0].run_id
    with pytest.raises(tracking.RegistryError, match="registered model name must be"):
        tracking.register_model(run_id, "two words")
    with pytest.raises(ValueError, match="patient identifier"):
        tracking.register_model(run_id, "leaky", tags={"cohort": "icustay_id 200001"})
    with pytest.raises(tracking.RegistryError, match="no registered model 'leaky'"):
        tracking.resolve("models:/leaky/1")
    with pytest.raises(tracking.ModelArtifactError, match="no logged model named 'other'"):
        tracking.register_model(run_id, "leaky", model_name="other")
    with pytest.raises(ValueError, match="registered model name must be"):
        train_ehr("unused", _config(), register_as="{method} model", progress=False)


# --------------------------------------------------------------------------- the bundle


@pytest.mark.integration
def test_the_registered_version_alone_carries_what_scoring_needs(trained, tiny_ehr_features):
    first = trained[0]
    version = tracking.resolve(f"models:/{NAME}/1")
    bundle = load_bundle(version)
    manifest = load_manifest(tiny_ehr_features)
    assert bundle.channels == manifest.channels and bundle.hours == manifest.hours
    assert bundle.normaliser == manifest.normaliser
    assert bundle.feature_fingerprint == feature_fingerprint(manifest)
    assert bundle.schema_version == manifest.schema_version
    assert bundle.task == "in-hospital-mortality"
    calibration = tracking.load_dict(first.run_id, CALIBRATION_FILE)
    temperature = calibration["temperature"]
    assert bundle.temperature == {"method": "temperature_scaling", "temperature": temperature}
    assert bundle.scaler().temperature == pytest.approx(first.metrics.temperature)
    assert (bundle.num_eval_samples, bundle.ensemble_size) == (2, 4)
    assert (bundle.method, bundle.posterior) == ("rank1", "normal")
    assert bundle.epistemic_reference == tracking.load_dict(first.run_id, REFERENCE_FILE)
    assert bundle.reference().threshold > 0
    # The training split's distribution, for the drift checks of scored cohorts.
    from features.mimic.loader import load_raw
    from pipeline.drift import DriftReference, fit_drift_reference

    train_grid = load_raw(tiny_ehr_features, split="train")[0]
    drift = DriftReference.from_dict(bundle.drift_reference)
    assert drift == fit_drift_reference(train_grid, manifest.channels)
    assert drift.stays == manifest.split.counts.train.stays
    assert load_bundle(first.run_id) == bundle  # the same document, read by run

    # The file is owner-only, beside the weights and the config.
    folder = _model_folder(version)
    (path,) = folder.rglob(f"{BUNDLE_DOCUMENT}.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert {p.name for p in path.parent.iterdir()} >= {"weights.pt", "model.json"}

    # The weights load from the version too, as the run's model.
    x, _, _ = load_split(tiny_ehr_features, "test")
    by_version = tracking.load_model(version, map_location="cpu")
    torch.manual_seed(3)
    a = predict_member_logits(by_version, x, 4, 2)
    torch.manual_seed(3)
    b = predict_member_logits(tracking.load_model(first.run_id), x, 4, 2)
    assert torch.equal(a, b)

    # So does the scorer: the temperature and settings from the bundle, as from the run.
    _, scaler, config = load_scorer(version)
    _, run_scaler, run_config = load_scorer(first.run_id)
    assert scaler.temperature == run_scaler.temperature
    assert config.num_eval_samples == run_config.num_eval_samples == 2


def test_a_tampered_or_missing_bundle_fails_in_one_line_naming_the_file(trained, tmp_path):
    document = load_bundle(trained[0].run_id).to_document()
    version = tracking.register_model(_tiny_run(documents={BUNDLE_DOCUMENT: document}), "tampered")
    (path,) = _model_folder(version).rglob(f"{BUNDLE_DOCUMENT}.json")
    assert load_bundle(version).to_document() == document
    cases = {
        "{not json": "not a JSON document",
        "[1, 2]": "expected a JSON object",
        '{"format": "something-else"}': "not a rank1-bnn-scoring-bundle document",
    }
    for text, expected in cases.items():
        path.write_text(text)
        with pytest.raises(tracking.ModelArtifactError) as info:
            load_bundle(version)
        assert _one_line(info.value).startswith(f"{path}: {expected}")
    shifted = {**document, "normaliser": {**document["normaliser"]}}
    shifted["normaliser"]["means"] = [m + 1.0 for m in document["normaliser"]["means"]]
    path.write_text(json.dumps(shifted))
    with pytest.raises(tracking.ModelArtifactError) as info:
        load_bundle(version)
    line = _one_line(info.value)
    assert line.startswith(f"{path}: not a valid scoring bundle: ") and "fingerprint" in line
    for field, value in (
        ("ensemble_size", "four"),
        ("temperature", {"method": "temperature_scaling", "temperature": -1.0}),
        ("epistemic_reference", {"percentile": 95.0}),
        ("patients", 3),  # unknown keys are refused, not carried along
    ):
        path.write_text(json.dumps({**document, field: value}))
        with pytest.raises(tracking.ModelArtifactError) as info:
            load_bundle(version)
        assert _one_line(info.value).startswith(f"{path}: not a valid scoring bundle: {field}")

    bare = tracking.register_model(_tiny_run(), "tampered")  # logged before bundles
    with pytest.raises(tracking.ModelArtifactError) as info:
        load_bundle(bare)
    assert _one_line(info.value).endswith(f"MLmodel: the model has no '{BUNDLE_DOCUMENT}' document")


@pytest.mark.parametrize("name", ["weights", "spec", "model", "Bad-Name", "../x"])
def test_log_model_refuses_document_names_before_logging(mlflow_store, name):
    import mlflow

    with tracking.start_run("test-registry-names") as run:
        with pytest.raises(ValueError, match="model document name"):
            tracking.log_model(EHRModel(dataclasses.replace(SMALL, input_features=3)),
                               documents={name: {}})  # fmt: skip
    logged = mlflow.MlflowClient().search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    assert not logged


# --------------------------------------------------------------------------- flows, CLI


def test_train_params_register_by_default_and_check_the_name(tiny_ehr_features):
    params = validate("train_mimic", TrainParams, {"features_dir": tiny_ehr_features})
    assert (params.register_as, params.promote_if_better) == ("mimic-ihm-{method}", False)
    given = {"features_dir": tiny_ehr_features, "register_as": "ihm {method}"}
    with pytest.raises(ParameterError, match="parameter 'register_as': a registered model name"):
        validate("train_mimic", TrainParams, given)
    assert TrainParams(features_dir=tiny_ehr_features, register_as=None).register_as is None


def test_cli_train_registers_and_refuses_a_bad_name_before_training(
    tiny_ehr_features, mlflow_store
):
    args = ["train", "--features", str(tiny_ehr_features), "--steps", "10", "--rnn-dim", "16",
            "--hidden-dim", "16", "--device", "cpu", "--experiment", "cli"]  # fmt: skip
    result = CliRunner().invoke(
        app, [*args, "--register-as", "cli-{method}", "--promote-if-better"]
    )
    assert result.exit_code == 0, result.output
    assert "registered models:/cli-rank1/1 (champion)" in result.output.splitlines()
    failed = CliRunner().invoke(app, [*args, "--register-as", "cli {method}"])
    assert failed.exit_code == 1 and isinstance(failed.exception, SystemExit)
    lines = [line for line in failed.output.splitlines() if line.strip()]
    assert lines == [
        "error: a registered model name must be letters, digits, '_', '.' or '-' (starting "
        "with a letter or digit; '{method}' stands for the method), got 'cli {method}'"
    ]
    assert "run_id" not in failed.output  # refused before training


def test_cli_promote_prints_one_line_and_fails_in_one(trained):
    first = trained[0]
    result = CliRunner().invoke(app, ["promote", "--model", NAME, "--version", "1"])
    assert result.exit_code == 0, result.output
    nll = tracking.run_metrics(first.run_id)[SELECTION_METRIC]
    assert result.output.splitlines() == [
        f"{NAME} version 1 is now @champion (run {first.run_id}, val/nll {nll:.4f})"
    ]
    assert tracking.resolve(f"models:/{NAME}@champion").version == 1
    for args, expected in (
        (["--model", NAME, "--version", "99"], f"error: registered model '{NAME}' has no version"),
        (["--model", "nope", "--version", "1"], "error: no registered model 'nope'"),
        (["--model", NAME, "--version", "1", "--alias", "v1"], "error: alias 'v1' is reserved"),
    ):  # fmt: skip
        failed = CliRunner().invoke(app, ["promote", *args])
        assert failed.exit_code == 1 and isinstance(failed.exception, SystemExit)
        lines = [line for line in failed.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(expected), failed.output
