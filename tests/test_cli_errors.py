"""Bad input reaches the user as one ``error:`` line naming the file, and fails before work."""

from __future__ import annotations

import io
import os
import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from flows import params
from flows.cli import app
from flows.deployments import DeploymentError, code_location, load_config
from flows.image_params import ImageTrainParams, ImageValidateParams
from flows.params import ParameterError, validate
from pipeline.config import ConfigError
from pipeline.train import CHECKPOINT_FILE, load_checkpoint, resolve_device


@pytest.fixture
def no_cuda(monkeypatch):
    """Make this machine look like one without a GPU, whatever it has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def _error_line(result) -> str:
    """The command's only output line: an ``error:`` line, with no traceback."""
    assert result.exit_code == 1, result.output
    # An exception that escaped the command would be kept here instead of a SystemExit.
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    # MLflow logs that it creates a new store's tables; that is not part of the error.
    lines = [
        line
        for line in result.output.splitlines()
        if line.strip() and " INFO mlflow.store.db.utils: " not in line
    ]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output and "weights_only=False" not in result.output
    return lines[0]


def _deployments(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "deployments.yaml"
    path.write_text("deployments:\n" + textwrap.indent(textwrap.dedent(body), "  "))
    return path


# --------------------------------------------------------------------------- YAML files


def test_malformed_train_config_is_one_line_with_its_position(tmp_path):
    bad = tmp_path / "train.yaml"
    bad.write_text("seed: 1\nschedule: {length: 5\n")
    result = CliRunner().invoke(app, ["train", "--features", str(tmp_path), "--config", str(bad)])
    line = _error_line(result)
    assert f"{bad}: not valid YAML at line 3, column 1" in line


def test_non_utf8_train_config_is_one_line(tmp_path):
    bad = tmp_path / "train.yaml"
    bad.write_bytes(b"seed: 1\n# caf\xe9\n")
    result = CliRunner().invoke(app, ["train", "--features", str(tmp_path), "--config", str(bad)])
    assert f"{bad}: not UTF-8 text" in _error_line(result)


def test_bad_field_in_train_config_names_the_file(tmp_path):
    bad = tmp_path / "train.yaml"
    bad.write_text("optim: {lr: -1}\n")
    result = CliRunner().invoke(app, ["train", "--features", str(tmp_path), "--config", str(bad)])
    assert f"{bad}: config field 'optim.lr'" in _error_line(result)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"deployments: [\n", "not valid YAML at line 2, column 1"),
        (b"deployments:\n  - name: caf\xe9\n", "not UTF-8 text"),
    ],
)
def test_bad_deployment_yaml_is_one_line_naming_the_file(tmp_path, content, expected):
    bad = tmp_path / "deployments.yaml"
    bad.write_bytes(content)
    for command in (["serve", "--config", str(bad)], ["serve", "--check", "--config", str(bad)]):
        line = _error_line(CliRunner().invoke(app, command))
        assert f"{bad}: {expected}" in line


def test_read_yaml_names_file_line_and_column(tmp_path):
    from pipeline.config import read_yaml

    bad = tmp_path / "x.yaml"
    bad.write_text("a: b: c\n")
    with pytest.raises(ConfigError, match=r"x\.yaml: not valid YAML at line 1, column 5: mapping"):
        read_yaml(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        read_yaml(tmp_path / "missing.yaml")
    (tmp_path / "ok.yaml").write_text("a: [1, 2]\n")
    assert read_yaml(tmp_path / "ok.yaml") == {"a": [1, 2]}


# --------------------------------------------------------------------------- serve entrypoints


def test_serve_with_a_missing_entrypoint_module_is_one_line(tmp_path, monkeypatch):
    entry = "- {name: gone, flow: 'flows.nosuch:flow', interval_seconds: 60}\n"
    path = _deployments(tmp_path, entry)
    # No server is needed to find out: the flow is loaded before the server is asked.
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    result = CliRunner().invoke(app, ["serve", "--config", str(path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {path}: deployment 'gone': cannot load flow 'flows.nosuch:flow': "
        "No module named 'flows.nosuch'"
    ]


def test_serve_check_imports_every_entrypoint_and_reports_every_problem(tmp_path):
    not_a_flow = tmp_path / "plain.py"
    not_a_flow.write_text("def job():\n    return 1\n")
    path = _deployments(
        tmp_path,
        f"""
        - {{name: good, flow: train_images, interval_seconds: 60}}
        - {{name: gone, flow: 'nosuchpkg.mod:flow', interval_seconds: 60}}
        - {{name: plain, flow: '{not_a_flow}:job', cron: '0 3 * * *'}}
        """,
    )
    result = CliRunner().invoke(app, ["serve", "--check", "--config", str(path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    lines = result.output.splitlines()
    # The schedules are still listed, then one line per problem.
    assert lines[:3] == [
        "good: train_images, every 60 s",
        "gone: nosuchpkg.mod:flow, every 60 s",
        f"plain: {not_a_flow}:job, cron '0 3 * * *' UTC",
    ]
    assert lines[3] == (
        f"error: {path}: deployment 'gone': cannot load flow 'nosuchpkg.mod:flow': "
        "No module named 'nosuchpkg'"
    )
    # Then Prefect's own reason, whose wording tests/test_policy.py pins.
    prefix = f"error: {path}: deployment 'plain': cannot load flow '{not_a_flow}:job': "
    assert len(lines) == 5 and lines[4].startswith(prefix) and len(lines[4]) > len(prefix)


def test_serve_check_reports_every_invalid_field(tmp_path):
    path = _deployments(
        tmp_path,
        """
        - {name: a, flow: nope, cron: '0 2 * * *'}
        - {name: b, flow: train_images, interval_seconds: 60, parameters: {epochs: -1}}
        """,
    )
    result = CliRunner().invoke(app, ["serve", "--check", "--config", str(path)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    lines = result.output.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"error: {path}: ") for line in lines)
    assert "deployment 'a': flow: unknown flow 'nope'" in lines[0]
    assert "deployment 'b': parameters: parameter 'epochs'" in lines[1]


def test_deploy_code_location_of_a_missing_package_is_a_deployment_error():
    with pytest.raises(DeploymentError, match="cannot find the module 'nosuchpkg.mod'"):
        code_location("nosuchpkg.mod:flow")


# --------------------------------------------------------------------------- pickles, checkpoints


class _GetCwd:
    def __reduce__(self):
        return (os.getcwd, ())


def test_unsafe_cifar_pickle_is_one_line_naming_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    evil = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [_GetCwd()]}
    (folder / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=4))
    command = ["train-images", "--dataset", "cifar10", "--data-dir", str(tmp_path)]
    result = CliRunner().invoke(app, [*command, "--device", "cpu"])
    line = _error_line(result)
    assert str(folder / "data_batch_1") in line and "refusing to load global" in line


class _Arbitrary:
    """A class a checkpoint of this project never holds."""


def _feature_folder(root: Path) -> Path:
    from features.mimic.extract import extract
    from features.synthetic import generate

    generate(root / "mimic", patients=80, seed=0)
    extract(root / "mimic", root / "features", seed=0, progress=False)
    return root / "features"


@pytest.mark.integration  # `rank1 train` with MLflow, end to end
def test_resume_from_a_refused_checkpoint_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    features = _feature_folder(tmp_path)
    checkpoints = tmp_path / "ck"
    checkpoints.mkdir()
    buffer = io.BytesIO()
    torch.save({"step": 1, "payload": _Arbitrary()}, buffer)
    (checkpoints / CHECKPOINT_FILE).write_bytes(buffer.getvalue())
    result = CliRunner().invoke(
        app,
        [
            "train", "--features", str(features), "--method", "deterministic", "--steps", "2",
            "--batch-size", "8", "--rnn-dim", "4", "--hidden-dim", "4", "--device", "cpu",
            "--checkpoint-dir", str(checkpoints), "--resume",
        ],
    )  # fmt: skip
    line = _error_line(result)
    assert str(checkpoints / CHECKPOINT_FILE) in line
    assert "_Arbitrary" in line


@pytest.mark.parametrize(
    "content",
    [b"not a checkpoint", b"PK\x03\x04 truncated zip"],
    ids=["garbage", "truncated"],
)
def test_unreadable_checkpoint_is_a_one_line_error(tmp_path, content):
    from pipeline.train import CheckpointError

    path = tmp_path / CHECKPOINT_FILE
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "weights_only" not in message
    assert isinstance(info.value, ValueError)  # the flows do not retry it


# --------------------------------------------------------------------------- MLflow


@pytest.mark.parametrize("command", ["report", "validate-images"])
def test_an_unknown_run_id_is_one_line(command, tmp_path, monkeypatch, tiny_ehr_features):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    unknown = "0123456789abcdef0123456789abcdef"
    arguments = {
        "report": ["--features", str(tiny_ehr_features), "--out", str(tmp_path / "r")],
        "validate-images": ["--device", "cpu"],
    }[command]
    result = CliRunner().invoke(app, [command, "--run", unknown, *arguments])
    line = _error_line(result)
    assert line == f"error: Run with id={unknown} not found (MLflow store {store})"
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------- devices


def test_check_device_refuses_missing_cuda(no_cuda):
    from pipeline.config import DeviceUnavailableError, check_device

    check_device("cpu")
    check_device("auto")
    with pytest.raises(DeviceUnavailableError, match="field 'device': 'cuda'.*not available"):
        check_device("cuda")
    with pytest.raises(DeviceUnavailableError):
        check_device("cuda:0")


def test_check_device_refuses_a_gpu_index_past_the_last(monkeypatch):
    from pipeline.config import DeviceUnavailableError, check_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_device("cuda:0")
    with pytest.raises(DeviceUnavailableError, match=r"'cuda:1'.*1 CUDA device"):
        check_device("cuda:1")


def test_resolve_device_error_is_not_transient(no_cuda):
    # flows.tasks.retry_transient retries anything that is not a ValueError.
    with pytest.raises(ValueError, match="not available"):
        resolve_device("cuda")


def test_train_with_cuda_but_none_fails_before_loading_data(tmp_path, no_cuda):
    missing = tmp_path / "no-features-here"
    result = CliRunner().invoke(app, ["train", "--features", str(missing), "--device", "cuda"])
    line = _error_line(result)
    assert "'device'" in line and "CUDA is not available" in line


def test_clinical_params_refuse_cuda_before_extraction(tmp_path, no_cuda):
    with pytest.raises(ParameterError, match="parameter 'train.device': 'cuda'"):
        validate("clinical_pipeline", params.ClinicalParams,
                 {"mimic_dir": tmp_path, "train": {"device": "cuda"}})  # fmt: skip


def test_pipeline_with_cuda_but_none_does_no_work(tmp_path, no_cuda):
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["pipeline", "--mimic-dir", str(tmp_path), "--out", str(out), "--device", "cuda"]
    )
    assert "parameter 'train.device'" in _error_line(result)
    assert not out.exists()


@pytest.mark.parametrize(
    ("model", "values"),
    [
        (ImageTrainParams, {"device": "cuda"}),
        (ImageValidateParams, {"run_id": "f" * 32, "device": "cuda:1"}),
        (params.DemoParams, {"device": "cuda"}),
    ],
)
def test_image_and_demo_params_refuse_missing_cuda(model, values, no_cuda):
    with pytest.raises(ParameterError, match="parameter 'device': 'cuda.*not available"):
        validate("flow", model, values)


def test_deployments_check_devices_only_where_they_run(tmp_path, no_cuda):
    path = _deployments(
        tmp_path,
        "- {name: gpu, flow: train_images, interval_seconds: 60, parameters: {device: cuda}}\n",
    )
    # `rank1 serve` runs the flows here: refuse at once rather than at the first run.
    with pytest.raises(DeploymentError, match="deployment 'gpu': parameters: parameter 'device'"):
        load_config(path)
    # `rank1 deploy` registers them for workers on other machines, which check for themselves.
    assert load_config(path, runs_here=False).deployments[0].parameters == {"device": "cuda"}


# --------------------------------------------------------------------------- extraction


def test_extract_without_a_validation_split_fails_before_work(tmp_path):
    out = tmp_path / "features"
    result = CliRunner().invoke(
        app,
        ["extract", "--mimic-dir", str(tmp_path), "--out", str(out),
         "--val-fraction", "0", "--test-fraction", "0"],
    )  # fmt: skip
    line = _error_line(result)
    assert "val_fraction=0.0" in line and "validation split" in line
    assert not out.exists()


def test_flow_params_use_the_extraction_split_check():
    # One rule for the CLI, the flows and the library: features.mimic.splits.
    with pytest.raises(ParameterError, match="val_fraction=0.*validation split"):
        validate("extract_mimic", params.ExtractParams,
                 {"mimic_dir": ".", "out_dir": "o", "val_fraction": 0})  # fmt: skip
    with pytest.raises(ParameterError, match="test_fraction=0.*test split"):
        validate("clinical_pipeline", params.ClinicalParams,
                 {"mimic_dir": ".", "test_fraction": 0})  # fmt: skip


# --------------------------------------------------------------------------- DataLoader workers


class _Unreadable(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise OSError(f"cannot read image /data/img{index}.JPEG: truncated")


def test_errors_from_dataloader_workers_keep_the_original_line():
    from flows.cli import error_line

    loader = torch.utils.data.DataLoader(_Unreadable(), num_workers=1)
    with pytest.raises(OSError) as info:
        next(iter(loader))
    assert str(info.value).startswith("Caught OSError in DataLoader worker process 0")
    assert error_line(info.value) == "cannot read image /data/img0.JPEG: truncated"
    assert error_line(ValueError("first\nsecond")) == "first"
