"""``rank1 compare-cohorts`` (the compare_cohorts flow) on tiny synthetic cohorts."""

from __future__ import annotations

import json
import os
import shutil
import stat

import polars as pl
import pytest
from typer.testing import CliRunner

from pipeline.config import OptimConfig, ScheduleConfig, TrainConfig
from rank1.models import EHRConfig

ID_COLUMNS = ("subject_id", "hadm_id", "icustay_id")
EXPERIMENT = "shift-test"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A working folder with its own MLflow store, used as the current directory."""
    root = tmp_path_factory.mktemp("flows_shift")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        yield root


@pytest.fixture(scope="module")
def cohorts(workdir):
    """Feature folders of a base cohort and its older-sicker shift (same seed)."""
    from features.mimic.extract import extract
    from features.synthetic import generate

    folders = {}
    for name, shift in (("base", None), ("older-sicker", "older-sicker")):
        generate(workdir / f"mimic-{name}", patients=150, seed=0, shift=shift)
        extract(workdir / f"mimic-{name}", workdir / name, seed=0, progress=False)
        folders[name] = workdir / name
    return folders


@pytest.fixture(scope="module")
def run_id(cohorts):
    """A small rank-1 run trained on the base cohort (the flow is under test, not the model)."""
    from pipeline.ehr import train_ehr

    config = TrainConfig(
        method="rank1", batch_size=32, optim=OptimConfig(lr=3e-3),
        schedule=ScheduleConfig(length=16, kl_anneal=8), eval_every=8, checkpoint_every=0,
        device="cpu",
    )  # fmt: skip
    result = train_ehr(
        cohorts["base"], config, experiment="shift-train", progress=False,
        model_config=EHRConfig(projection_dim=8, rnn_dim=16, hidden_dim=16),
    )  # fmt: skip
    return result.run_id


def _compare(*args: str):
    from flows.cli import app

    return CliRunner().invoke(app, ["compare-cohorts", *args, "--experiment", EXPERIMENT])


def _comparison_runs():
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return [] if experiment is None else client.search_runs([experiment.experiment_id])


def test_older_sicker_stays_are_detected_better_than_the_base_cohort_itself(
    prefect_harness, workdir, cohorts, run_id
):
    base, shifted = str(cohorts["base"]), str(cohorts["older-sicker"])
    out = workdir / "comparison"
    result = _compare("--run-id", run_id, "--features", base, "--shifted", shifted,
                      "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "| in-distribution |" in result.output and "| older-sicker |" in result.output

    path = out / "comparison.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    saved = json.loads(path.read_text())
    stays = pl.read_parquet(cohorts["base"] / "stays.parquet")
    assert saved["in_distribution"]["stays"] == stays.filter(pl.col("split") == "test").height
    other = pl.read_parquet(cohorts["older-sicker"] / "stays.parquet")
    assert saved["shifted"]["stays"] == other.height
    detect = {k: v for k, v in saved["shifted"].items() if k.startswith("detect_")}
    assert len(detect) == 4 and all(0.0 <= v <= 1.0 for v in detect.values())

    # The base cohort's test stays against themselves: every uncertainty ties, AUROC 0.5.
    same = _compare("--run-id", run_id, "--features", base, "--shifted", base,
                    "--shifted-split", "test", "--out", str(workdir / "same"))  # fmt: skip
    assert same.exit_code == 0, same.output
    itself = json.loads((workdir / "same" / "comparison.json").read_text())["shifted"]
    assert itself["detect_total"] == pytest.approx(0.5)
    # Older and sicker patients sit nearer a 50% risk: a higher total entropy flags them.
    assert saved["shifted"]["detect_total"] > itself["detect_total"] + 0.1

    # One MLflow run per comparison, tagged with the scored run, no identifier in it.
    (run,) = [r for r in _comparison_runs() if r.info.run_id == saved["comparison_run_id"]]
    assert run.data.tags["rank1.source_run"] == run_id
    assert run.data.params["shifted_split"] == "all"
    assert run.data.metrics["shifted/detect_total"] == pytest.approx(detect["detect_total"])
    assert "in_dist/detect_total" not in run.data.metrics
    ids = {str(v) for column in ID_COLUMNS for v in stays[column].to_list()}
    for key, value in {**run.data.params, **run.data.tags}.items():
        assert not any(c in key.lower() or c in value.lower() for c in ID_COLUMNS)
        assert value not in ids


def test_dbsource_chooses_carevue_and_metavision_stays_of_one_folder(
    prefect_harness, workdir, cohorts, run_id
):
    base = str(cohorts["base"])
    out = workdir / "dbsource"
    result = _compare("--run-id", run_id, "--features", base, "--shifted", base,
                      "--shifted-split", "test", "--in-dist-where", "dbsource=carevue",
                      "--shifted-where", "dbsource=metavision", "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "comparison.json").read_text())
    test = pl.read_parquet(cohorts["base"] / "stays.parquet").filter(pl.col("split") == "test")
    counts = dict(test.group_by("dbsource").len().iter_rows())
    assert saved["in_distribution"]["stays"] == counts["carevue"]
    assert saved["shifted"]["stays"] == counts["metavision"]
    assert saved["shifted"]["cohort"] == "dbsource=metavision"
    assert saved["settings"]["in_dist_where"] == "dbsource=carevue"


def _other_channels(workdir, cohorts):
    """A copy of the older-sicker folder whose manifest names one channel differently."""
    folder = workdir / "renamed"
    if not folder.exists():
        shutil.copytree(cohorts["older-sicker"], folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["channels"][0] = manifest["channels"][0] + " (other site)"
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unknown-run", "0123456789abcdef"),
        ("other-channels", "channels or hours differ"),
        ("empty-cohort", "no stays in its test split where dbsource=nowhere"),
        ("no-column", "no column 'unit'"),
        ("identifier", "cannot be chosen by 'subject_id'"),
        ("trained-stays", "stays the model was trained on"),
        ("bad-filter", "parameter 'in_dist_where'"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    prefect_harness, workdir, cohorts, run_id, case, expected
):
    base, shifted = str(cohorts["base"]), str(cohorts["older-sicker"])
    args = {
        "unknown-run": ["--run-id", "0123456789abcdef", "--features", base, "--shifted", shifted],
        "other-channels": ["--run-id", run_id, "--features", base,
                           "--shifted", str(_other_channels(workdir, cohorts))],
        "empty-cohort": ["--run-id", run_id, "--features", base, "--shifted", shifted,
                         "--in-dist-where", "dbsource=nowhere"],
        "no-column": ["--run-id", run_id, "--features", base, "--shifted", shifted,
                      "--shifted-where", "unit=MICU"],
        "identifier": ["--run-id", run_id, "--features", base, "--shifted", shifted,
                       "--shifted-where", "subject_id=1"],
        "trained-stays": ["--run-id", run_id, "--features", base, "--shifted", base],
        "bad-filter": ["--run-id", run_id, "--features", base, "--shifted", shifted,
                       "--in-dist-where", "dbsource"],
    }[case]  # fmt: skip
    before = len(_comparison_runs())
    out = workdir / f"bad-{case}"
    result = _compare(*args, "--out", str(out))
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    assert len(_comparison_runs()) == before
