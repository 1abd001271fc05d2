"""Crash safety of training runs: resume after kill -9, run status after kill and signals."""

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline import tracking

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A private MLflow store for this test (and the subprocesses it starts)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def _client():
    import mlflow

    return mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def _env(tmp_path):
    """Environment of a CLI subprocess: this tree, one thread, its own Prefect home."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        OMP_NUM_THREADS="1",
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="60",
    )
    return env


def _wait_for(path, proc, seconds=180):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, f"the command ended ({proc.returncode}) before {path}"
        assert time.monotonic() < deadline, f"no {path} after {seconds} s"
        time.sleep(0.05)


def _dead_pid():
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    return int(child.stdout)


# --------------------------------------------------------------------------- resume plan


def test_plan_resume_continues_only_an_unfinished_checkpoint_of_the_same_training(tmp_path):
    from flows.resume import RESUME_FILE, mark_complete, plan_resume

    folder = tmp_path / "ckpt"
    folder.mkdir()
    assert plan_resume(folder, "aa").resume is False  # nothing there yet
    (folder / "checkpoint.pt").write_bytes(b"step 20 of aa")
    assert plan_resume(folder, "aa").resume is True

    # Another config or feature folder: afresh, and the old weights cannot be resumed later.
    plan = plan_resume(folder, "bb")
    assert not plan.resume and "another config" in plan.reason
    assert not (folder / "checkpoint.pt").exists()
    assert json.loads((folder / RESUME_FILE).read_text()) == {"key": "bb", "complete": False}
    assert stat.S_IMODE((folder / RESUME_FILE).stat().st_mode) == 0o600

    # A finished training is not resumed (that would log a run that trained nothing).
    (folder / "m0").mkdir()
    (folder / "m0" / "checkpoint.pt").write_bytes(b"final of bb")
    mark_complete(folder, "bb", "0123abcd")
    plan = plan_resume(folder, "bb")
    assert not plan.resume and "finished (MLflow run 0123abcd)" in plan.reason
    assert not (folder / "m0" / "checkpoint.pt").exists()


def test_training_key_follows_config_sizes_experiment_and_features(tmp_path):
    from flows.resume import training_key
    from pipeline.config import TrainConfig
    from rank1.models import EHRConfig

    (tmp_path / "manifest.json").write_text('{"created": 1}')
    config, sizes = TrainConfig(device="cpu"), EHRConfig(rnn_dim=8)
    key = training_key(config, sizes, tmp_path, "x")
    assert key == training_key(TrainConfig(device="cpu"), EHRConfig(rnn_dim=8), tmp_path, "x")
    assert key != training_key(config.replace(seed=1), sizes, tmp_path, "x")
    assert key != training_key(config, EHRConfig(rnn_dim=9), tmp_path, "x")
    assert key != training_key(config, sizes, tmp_path, "y")
    (tmp_path / "manifest.json").write_text('{"created": 2}')  # re-extracted features
    assert key != training_key(config, sizes, tmp_path, "x")


def test_pipeline_steps_option_keeps_checkpoints():
    from flows.cli.mimic import train_overrides

    overrides = train_overrides(None, 200, None, None)
    assert overrides["checkpoint_every"] == 20
    assert train_overrides(None, 3, None, None)["checkpoint_every"] == 1


# --------------------------------------------------------------------------- run status


def test_fail_stale_runs_fails_only_runs_of_dead_processes_on_this_host(store):
    me = tracking.this_process()
    dead = {**tracking.process_tags("ab12"), tracking.PID_TAG: str(_dead_pid())}
    elsewhere = {**dead, tracking.HOST_TAG: me.host + "-other"}
    other_key = {**dead, tracking.RESUME_KEY_TAG: "cd34"}
    ids = {}
    for name, tags in {"dead": dead, "elsewhere": elsewhere, "other_key": other_key,
                       "alive": tracking.process_tags("ab12")}.items():  # fmt: skip
        with tracking.start_run("stale-test", tags=tags) as run:
            ids[name] = run.info.run_id
        _client().update_run(ids[name], status="RUNNING")  # as a killed process leaves it
    assert tracking.fail_stale_runs("stale-test", "ab12") == [ids["dead"]]
    status = {name: _client().get_run(i).info.status for name, i in ids.items()}
    assert status == {"dead": "FAILED", "elsewhere": "RUNNING", "other_key": "RUNNING",
                      "alive": "RUNNING"}  # fmt: skip
    assert tracking.fail_stale_runs("no-such-experiment", "ab12") == []
    with pytest.raises(ValueError, match="resume key must be lowercase hex"):
        tracking.fail_stale_runs("stale-test", "x' or '1'='1")


def test_a_reused_pid_counts_as_dead():
    me = tracking.this_process()
    assert tracking.process_alive(me) is True
    if me.start:
        assert tracking.process_alive(tracking.ProcessId(me.host, me.pid, "1")) is False
    assert tracking.process_alive(tracking.ProcessId(me.host + "-other", me.pid, "")) is None


def test_interrupt_ends_the_run_killed_and_an_error_failed(store):
    ids = {}
    for name, error in (("interrupt", KeyboardInterrupt), ("error", ValueError)):
        with pytest.raises(error):
            with tracking.start_run("kill-test") as run, tracking.killed_on_interrupt():
                ids[name] = run.info.run_id
                raise error("stop")
    assert _client().get_run(ids["interrupt"]).info.status == "KILLED"
    assert _client().get_run(ids["error"]).info.status == "FAILED"


@pytest.mark.integration  # a `rank1 train` subprocess
def test_sigterm_to_rank1_train_ends_its_mlflow_run_killed(tiny_ehr_features, store, tmp_path):
    # SIGINT is Python's KeyboardInterrupt already (see the test above); SIGTERM is turned
    # into one by the CLI. Without that, the run would stay RUNNING.
    config = tmp_path / "train.yaml"
    config.write_text("checkpoint_every: 2\neval_every: 0\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "train", "--features", str(tiny_ehr_features),
         "--method", "deterministic", "--steps", "100000", "--batch-size", "16",
         "--rnn-dim", "8", "--hidden-dim", "8", "--device", "cpu", "--config", str(config),
         "--experiment", "signal-test", "--checkpoint-dir", str(tmp_path / "ckpt")],
        env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _wait_for(tmp_path / "ckpt" / "checkpoint.pt", proc)  # the run is training
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode != 0
    assert "Traceback" not in stderr
    client = _client()
    [run] = client.search_runs([client.get_experiment_by_name("signal-test").experiment_id])
    assert run.info.status == "KILLED"


# --------------------------------------------------------------------------- end to end


def _prefect_runs(prefect_home, pid):
    """``(kind, state)`` of the flow and task runs a process tagged (read from the DB)."""
    db = sqlite3.connect(prefect_home / "prefect.db")
    try:
        return [
            (table, state)
            for table in ("flow_run", "task_run")
            for state, tags in db.execute(f"SELECT state_type, tags FROM {table}")  # noqa: S608
            if any(
                t.startswith("rank1-process:") and t.split(":")[2] == str(pid)
                for t in json.loads(tags)
            )  # fmt: skip
        ]
    finally:
        db.close()


@pytest.mark.slow
@pytest.mark.integration  # `rank1 pipeline` subprocesses
def test_pipeline_rerun_after_sigkill_resumes_to_the_same_weights(store, tmp_path):
    """kill -9 mid-training, rerun the same command: same weights as without the kill."""
    from features.synthetic import generate
    from flows.cli.mimic import train_overrides
    from pipeline.config import TrainConfig
    from pipeline.ehr import train_ehr
    from pipeline.train import CHECKPOINT_FILE, load_checkpoint
    from rank1.models import EHRConfig

    generate(tmp_path / "mimic", patients=150, seed=0)
    out = tmp_path / "out"
    steps = 150
    cmd = [sys.executable, "-m", "flows.cli", "pipeline", "--mimic-dir", tmp_path / "mimic",
           "--out", out, "--methods", "rank1", "--steps", str(steps), "--batch-size", "16",
           "--rnn-dim", "8", "--hidden-dim", "8", "--device", "cpu",
           "--experiment", "resume"]  # fmt: skip
    ckpt = out / "checkpoints" / "rank1" / CHECKPOINT_FILE
    # A session of its own: the ephemeral Prefect server it starts is cleaned up with it.
    proc = subprocess.Popen(cmd, env=_env(tmp_path), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_for(ckpt, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        os.killpg(proc.pid, signal.SIGKILL)  # the orphaned server (see README)
    cut = load_checkpoint(ckpt)
    assert 0 < cut["step"] < steps and not cut["final"]
    [dead_run] = _client().search_runs([_client().get_experiment_by_name("resume").experiment_id])
    assert dead_run.info.status == "RUNNING"  # what kill -9 leaves behind

    rerun = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    assert "resuming an interrupted training of the same config" in rerun.stderr + rerun.stdout

    # MLflow: the dead process's run is FAILED; the resumed one finished.
    assert _client().get_run(dead_run.info.run_id).info.status == "FAILED"
    runs = _client().search_runs([dead_run.info.experiment_id])
    [resumed] = [r for r in runs if r.info.run_id != dead_run.info.run_id]
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags[tracking.RESUME_KEY_TAG] == dead_run.data.tags[tracking.RESUME_KEY_TAG]
    # Prefect: the dead process's flow and task runs are Crashed, none left RUNNING.
    dead_prefect = _prefect_runs(tmp_path / "prefect", proc.pid)
    assert dead_prefect and {state for _, state in dead_prefect} <= {"CRASHED", "COMPLETED"}
    assert ("flow_run", "CRASHED") in dead_prefect and ("task_run", "CRASHED") in dead_prefect
    # Owner-only checkpoints and the resume record.
    assert stat.S_IMODE(ckpt.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(ckpt.stat().st_mode) == 0o600
    resume_state = json.loads((ckpt.parent / "resume.json").read_text())
    assert resume_state["complete"] and resume_state["run_id"] == resumed.info.run_id

    # The same training uninterrupted, in this process (one thread, like the CLI's).
    config = TrainConfig.from_dict({**train_overrides(None, steps, 16, "cpu"), "method": "rank1"})
    reference = train_ehr(
        out / "features", config, experiment="reference", progress=False,
        model_config=EHRConfig(rnn_dim=8, hidden_dim=8), checkpoint_dir=tmp_path / "ref",
    )  # fmt: skip
    a, b = load_checkpoint(tmp_path / "ref" / CHECKPOINT_FILE), load_checkpoint(ckpt)
    assert a["final"] and b["final"] and a["step"] == b["step"] == steps
    for which in ("model", "best_model"):
        assert a[which].keys() == b[which].keys()
        for name in a[which]:
            assert torch.equal(a[which][name], b[which][name]), (which, name)
    assert a["history"] == b["history"]
    logged = tracking.load_model(resumed.info.run_id, map_location="cpu").state_dict()
    expected = tracking.load_model(reference.run_id, map_location="cpu").state_dict()
    assert all(torch.equal(logged[name], expected[name]) for name in expected)
