"""Flow parameters, deployment files and the CLI surface; none of these start Prefect."""

import os
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows import params
from flows.cli import app
from flows.deployments import DeploymentError, default_config_path, load_config
from flows.image_params import ImageTrainParams, ImageValidateParams
from flows.params import ParameterError, validate

COMMANDS = [
    "synth", "extract", "train", "report", "train-images", "validate-images",
    "pipeline", "serve", "deploy", "demo",
]  # fmt: skip


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"mimic_dir": "MISSING"}, "parameter 'mimic_dir': MISSING is not a folder"),
        ({"seed": -1}, "parameter 'seed': Input should be greater than or equal to 0 (got -1)"),
        (
            {"val_fraction": 0.5, "test_fraction": 0.5},
            "val_fraction=0.5 and test_fraction=0.5 must sum",
        ),
        ({"val_fraction": 1.5}, "val_fraction=1.5: each split share must be > 0 and < 1"),
        ({"sed": 1}, "parameter 'sed': unknown parameter"),
    ],
)
def test_extract_params_name_the_bad_parameter(tmp_path, values, expected):
    arguments = {"mimic_dir": tmp_path, "out_dir": tmp_path / "features", **values}
    if arguments["mimic_dir"] == "MISSING":
        arguments["mimic_dir"] = tmp_path / "missing"
        expected = expected.replace("MISSING", str(tmp_path / "missing"))
    with pytest.raises(ParameterError) as info:
        validate("extract_mimic", params.ExtractParams, arguments)
    assert str(info.value).startswith("extract_mimic: ")
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"train": {"optim": {"lr": -1}}}, "parameter 'train.optim.lr': must be a finite"),
        ({"train": {"batch_size": 0}}, "parameter 'train.batch_size': must be >= 1, got 0"),
        ({"train": {"seed": True}}, "parameter 'train.seed': must be an integer, got True"),
        ({"train": {"epochs": 3}}, "parameter 'train.epochs': unknown field"),
        ({"train": {"method": "rank1"}}, "parameter 'train': set the method with 'methods'"),
        ({"methods": ["bnn"]}, "parameter 'methods.0': Input should be 'rank1'"),
        ({"methods": ["rank1", "rank1"]}, "parameter 'methods': each method may appear once"),
        ({"methods": []}, "parameter 'methods'"),
        ({"model": {"rnn_dim": 0}}, "parameter 'model.rnn_dim'"),
        ({"coverage": 0}, "parameter 'coverage'"),
    ],
)
def test_clinical_params_name_the_bad_parameter(tmp_path, values, expected):
    with pytest.raises(ParameterError, match="^clinical_pipeline: ") as info:
        validate("clinical_pipeline", params.ClinicalParams, {"mimic_dir": tmp_path, **values})
    assert expected in str(info.value)


def test_clinical_params_defaults_and_layout(tmp_path):
    p = validate("clinical_pipeline", params.ClinicalParams, {"mimic_dir": str(tmp_path)})
    assert p.mimic_dir == tmp_path and p.methods == ["rank1", "deterministic"]
    assert p.features_dir == Path("outputs/mimic/features")
    assert p.reports_dir == Path("outputs/mimic/reports")


def test_train_params_build_configs(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    p = validate(
        "train_mimic",
        params.TrainParams,
        {"features_dir": tmp_path, "methods": ["deterministic"], "train": {"seed": 3},
         "model": {"rnn_dim": 8}},
    )  # fmt: skip
    config = p.train_config("deterministic")
    assert config.method == "deterministic" and config.seed == 3
    assert p.model.ehr_config().rnn_dim == 8 and p.model.ehr_config().hidden_dim == 128
    with pytest.raises(ParameterError, match="parameter 'features_dir': .* not a feature folder"):
        validate("train_mimic", params.TrainParams, {"features_dir": tmp_path / "x"})


def test_report_params_check_run_id_and_split(tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    base = {"run_id": "a" * 32, "features_dir": tmp_path, "out_dir": tmp_path / "r"}
    assert validate("report_mimic", params.ReportParams, base).split == "test"
    with pytest.raises(ParameterError, match="parameter 'run_id'"):
        validate("report_mimic", params.ReportParams, {**base, "run_id": "../../etc"})
    with pytest.raises(ParameterError, match="parameter 'split'"):
        validate("report_mimic", params.ReportParams, {**base, "split": "holdout"})


def test_image_params_check_preset_corruptions_and_severities():
    with pytest.raises(ParameterError, match="parameter 'preset': unknown image preset"):
        validate("train_images", ImageTrainParams, {"preset": "vgg"})
    with pytest.raises(ParameterError, match="parameter 'epochs'"):
        validate("train_images", ImageTrainParams, {"epochs": 0})
    with pytest.raises(ParameterError, match="parameter 'device'"):
        validate("train_images", ImageTrainParams, {"device": "gpu"})
    job = validate("train_images", ImageTrainParams, {"epochs": 2}).job("deterministic")
    assert job.dataset == "digits" and job.train.method == "deterministic"

    run = {"run_id": "f" * 32}
    with pytest.raises(ParameterError, match="parameter 'severities.0'"):
        validate("validate_images", ImageValidateParams, {**run, "severities": [0]})
    with pytest.raises(ParameterError, match="unknown corruption 'rain'"):
        validate("validate_images", ImageValidateParams, {**run, "corruptions": ["rain"]})
    p = validate("validate_images", ImageValidateParams, run)
    assert len(p.names()) == 16 and p.severities == [1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- deployment files


def _write(tmp_path, text):
    path = tmp_path / "deployments.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_packaged_deployments_load_when_their_data_folder_exists(tmp_path, monkeypatch):
    assert default_config_path().is_file()
    monkeypatch.chdir(tmp_path)
    # Relative parameters resolve against the folder `rank1 serve` runs in.
    with pytest.raises(DeploymentError, match="deployment 'nightly-clinical': .*'mimic_dir'"):
        load_config()
    (tmp_path / "outputs" / "mimic-synthetic").mkdir(parents=True)
    with pytest.raises(DeploymentError, match="deployment 'nightly-scoring': .*'exports_dir'"):
        load_config()
    (tmp_path / "outputs" / "icu-exports").mkdir(parents=True)
    config = load_config()
    by_name = {entry.name: entry for entry in config.deployments}
    assert by_name["nightly-clinical"].cron == "0 2 * * *"
    assert by_name["nightly-clinical"].entrypoint == "flows.mimic:clinical_pipeline"
    assert by_name["nightly-scoring"].entrypoint == "flows.score:score_mimic"
    assert by_name["weekly-image-validation"].entrypoint == "flows.images:image_benchmark"
    assert config.limit == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("- {name: a, flow: nope, cron: '0 2 * * *'}", "deployment 'a': flow: unknown flow 'nope'"),
        ("- {name: a, flow: train_images}", "give exactly one of 'cron' and 'interval_seconds'"),
        (
            "- {name: a, flow: train_images, cron: '0 2 * *', interval_seconds: 5}",
            "deployment 'a': cron: Invalid cron string",
        ),
        ("- {name: a, flow: train_images, cron: '0 2 * * *', timezone: Mars/Base}",
         "unknown time zone 'Mars/Base'"),
        ("- {name: a, flow: train_images, interval_seconds: 0}", "interval_seconds"),
        (
            "- {name: a, flow: train_images, interval_seconds: 60, parameters: {epochs: -1}}",
            "deployment 'a': parameters: parameter 'epochs'",
        ),
        (
            "- {name: a, flow: train_images, interval_seconds: 60}\n"
            "  - {name: a, flow: train_images, interval_seconds: 90}",
            "deployment name 'a' appears more than once",
        ),
    ],
)  # fmt: skip
def test_bad_deployment_files_are_refused_with_the_reason(tmp_path, body, expected):
    path = _write(tmp_path, f"deployments:\n  {body}\n")
    with pytest.raises(DeploymentError) as info:
        load_config(path)
    assert str(info.value).startswith(str(path))
    assert expected in str(info.value)


def test_unreadable_deployment_file(tmp_path):
    with pytest.raises(DeploymentError, match="cannot read"):
        load_config(tmp_path / "none.yaml")
    with pytest.raises(DeploymentError, match="not valid YAML"):
        load_config(_write(tmp_path, "deployments: [\n"))


# --------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: rank1 " + command in " ".join(result.output.split())


def test_top_level_help_lists_every_command():
    # That importing the CLI stays light is a policy: tests/test_policy.py.
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


def test_serve_refuses_without_a_server(tmp_path, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    flow_file = tmp_path / "tiny.py"
    flow_file.write_text("from prefect import flow\n\n@flow\ndef tiny():\n    return 1\n")
    path = _write(
        tmp_path,
        f"""
        deployments:
          - name: tiny
            flow: {flow_file}:tiny
            interval_seconds: 60
        """,
    )
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        result = CliRunner().invoke(app, ["serve", "--config", str(path)])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "PREFECT_API_URL is not set" in errors[0]
    assert "prefect server start" in errors[0] and "Traceback" not in result.output


def test_serve_check_lists_schedules_without_serving(tmp_path):
    path = _write(
        tmp_path,
        """
        deployments:
          - {name: weekly, flow: train_images, cron: "0 4 * * 0", timezone: Europe/Paris}
          - {name: often, flow: train_images, interval_seconds: 600, paused: true}
        """,
    )
    result = CliRunner().invoke(app, ["serve", "--config", str(path), "--check"])
    assert result.exit_code == 0, result.output
    assert "weekly: train_images, cron '0 4 * * 0' Europe/Paris" in result.output
    assert "often: train_images, every 600 s (paused)" in result.output


def test_packaged_example_checks_after_make_demo_and_lists_every_schedule(tmp_path, monkeypatch):
    from features.synthetic import generate

    monkeypatch.chdir(tmp_path)
    # As `make demo`: the training tables and an export of new patients.
    generate(tmp_path / "outputs" / "mimic-synthetic", patients=3, seed=0)
    generate(tmp_path / "outputs" / "icu-exports" / "tonight", patients=3, seed=1)
    result = CliRunner().invoke(app, ["serve", "--check"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "nightly-clinical: clinical_pipeline, cron '0 2 * * *' UTC",
        "nightly-scoring: score_mimic, cron '0 6 * * *' UTC",
        "weekly-image-validation: image_benchmark, cron '0 4 * * 0' UTC",
    ]


def test_serve_with_a_bad_file_gives_one_line(tmp_path):
    path = _write(tmp_path, "deployments:\n  - {name: a, flow: nope, cron: '0 2 * * *'}\n")
    result = CliRunner().invoke(app, ["serve", "--config", str(path)])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0 and "unknown flow 'nope'" in result.output


def test_importing_flows_sets_offline_prefect_defaults():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_SERVER_", "MPL"))}
    code = (
        "import os, flows\n"
        "print(os.environ['PREFECT_SERVER_ANALYTICS_ENABLED'],"
        " os.environ['PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["false", "60"]


def test_train_and_pipeline_build_the_same_config_from_the_same_options(tmp_path, monkeypatch):
    """``rank1 train --steps 300`` and ``rank1 pipeline --steps 300`` train the same config."""
    import pipeline.ehr
    from flows.cli import mimic as cli_mimic

    seen = {}

    def fake_train_ehr(features, config, **kwargs):
        seen["train"] = config
        raise ValueError("stop here")

    def fake_run_flow(flow_fn, params_model, values):
        seen["pipeline"] = validate("clinical_pipeline", params_model, values)
        raise SystemExit(0)

    monkeypatch.setattr(pipeline.ehr, "train_ehr", fake_train_ehr)
    monkeypatch.setattr(cli_mimic, "run_flow", fake_run_flow)
    shared = ["--steps", "300", "--batch-size", "8", "--device", "cpu"]
    CliRunner().invoke(app, ["train", "--features", str(tmp_path), *shared])
    CliRunner().invoke(app, ["pipeline", "--mimic-dir", str(tmp_path), *shared])
    for method in ("rank1", "deterministic"):
        trained = seen["train"].replace(method=method)
        assert seen["pipeline"].train_config(method) == trained
    config = seen["train"]
    assert (config.schedule.length, config.schedule.kl_anneal) == (300, 150)
    assert (config.eval_every, config.checkpoint_every, config.batch_size) == (30, 30, 8)


def test_flow_parameter_models_compose_their_parts():
    clinical = params.ClinicalParams.model_fields
    for part in (params.SplitSettings, params.TrainSettings):
        for name, field in part.model_fields.items():
            assert clinical[name].default == field.default, name
    assert clinical["coverage"].default == params.ReportParams.model_fields["coverage"].default
    assert params.ModelSizes().ehr_config().rnn_dim == 256  # EHRConfig's own default
