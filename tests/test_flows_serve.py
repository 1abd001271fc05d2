"""`rank1 serve` against a real Prefect server: a scheduled run happens and completes."""

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest

BIN = Path(sys.executable).parent
SERVER_START_S = 120  # ~5-20 s here; generous for a busy CI machine
RUN_DONE_S = 180  # first interval + the runner's poll + a subprocess that imports prefect
STOP_S = 20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> int | None:
    """SIGTERM the process group, wait, then SIGKILL it; return the exit code."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_S)
        except subprocess.TimeoutExpired:
            pass
    try:
        # Children (uvicorn, flow-run subprocesses) share the group; none may outlive it.
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(STOP_S)
    return process.returncode


def _wait(condition, timeout: float, what: str, *processes: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"{process.args[0]} exited ({process.returncode}) {what}")
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s {what}")


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _completed_runs(url: str, deployment: str) -> list[dict]:
    response = httpx.post(
        url + "/flow_runs/filter",
        json={"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}},
        timeout=10,
    )
    response.raise_for_status()
    deployments = httpx.post(url + "/deployments/filter", json={}, timeout=10).json()
    ids = {d["id"] for d in deployments if d["name"] == deployment}
    return [run for run in response.json() if run["deployment_id"] in ids]


TOUCH_FLOW = """
from pathlib import Path

from prefect import flow


@flow
def touch(path: str) -> str:
    Path(path).write_text("ran\\n")
    return path
"""


class Server:
    """A real Prefect server on a free local port and the processes started against it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.api = f"http://127.0.0.1:{_free_port()}/api"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env |= {
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_API_URL": self.api,
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # Poll for due runs every second instead of every 10-15 s: a short test.
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
        }
        self.processes: list[subprocess.Popen] = []

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            args, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()  # the child holds its own handle
        self.processes.append(process)
        return process

    def run(self, args: list[str]) -> str:
        done = subprocess.run(
            args, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def stop(self, process: subprocess.Popen) -> int | None:
        self.processes.remove(process)
        return _stop(process)

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name} ---\n{path.read_text()}" for path in sorted(self.root.glob("*.log"))
        )

    def wait_for_run(self, marker: Path, deployment: str, process: subprocess.Popen) -> None:
        """Wait until ``deployment`` has a completed run that wrote ``marker``."""
        try:
            _wait(
                lambda: marker.exists() and _completed_runs(self.api, deployment),
                RUN_DONE_S,
                f"before a scheduled run of {deployment} completed",
                process,
            )
        except BaseException:
            sys.stderr.write(self.logs())
            raise
        assert marker.read_text() == "ran\n"


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    server = Server(tmp_path_factory.mktemp("prefect_server"))
    try:
        process = server.start(
            "server",
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
             server.api.split(":")[2].split("/")[0], "--analytics-off"],
        )  # fmt: skip
        _wait(lambda: _healthy(server.api), SERVER_START_S, "before it was healthy", process)
        yield server
    except BaseException:
        sys.stderr.write(server.logs())
        raise
    finally:
        # Everything started here stops, newest first, also when a test failed.
        for process in reversed(list(server.processes)):
            server.stop(process)


def _touch_config(tmp_path: Path, name: str, marker: Path) -> Path:
    (tmp_path / "touch_flow.py").write_text(TOUCH_FLOW)
    config = tmp_path / "deployments.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            deployments:
              - name: {name}
                flow: {tmp_path / "touch_flow.py"}:touch
                interval_seconds: 2
                parameters: {{path: {marker}}}
            """
        )
    )
    return config


@pytest.mark.slow
def test_served_deployment_runs_on_its_schedule(prefect_server, tmp_path):
    marker = tmp_path / "served.txt"
    config = _touch_config(tmp_path, "touch-served", marker)
    serve = prefect_server.start("serve", [str(BIN / "rank1"), "serve", "--config", str(config)])
    prefect_server.wait_for_run(marker, "touch-served", serve)
    assert prefect_server.stop(serve) == 0  # SIGTERM is a clean stop for `rank1 serve`
    assert "stopped serving" in (prefect_server.root / "serve.log").read_text()


@pytest.mark.slow
def test_deployment_on_a_work_pool_runs_on_a_worker(prefect_server, tmp_path):
    from prefect.workers.process import ProcessWorker

    marker = tmp_path / "worker.txt"
    config = _touch_config(tmp_path, "touch-pooled", marker)
    # The pool is set-up, not under test: created through the API, as `prefect work-pool
    # create test-pool --type process` does, without a CLI process (about 3 s) for it.
    httpx.post(
        prefect_server.api + "/work_pools/",
        json={
            "name": "test-pool",
            "type": "process",
            "base_job_template": ProcessWorker.get_default_base_job_template(),
        },
        timeout=10,
    ).raise_for_status()
    # The worker starts up (seconds of imports) while `rank1 deploy` runs; it polls the
    # pool and picks up the deployment's first scheduled run once there is one. One flow
    # run at a time: by its first poll several 2-second runs are due, and unlimited it
    # started 5-7 flow-run processes at once on 2 cores, each importing Prefect.
    worker = prefect_server.start(
        "worker", [str(BIN / "prefect"), "worker", "start", "--pool", "test-pool", "--limit", "1"]
    )
    out = prefect_server.run(
        [str(BIN / "rank1"), "deploy", "--config", str(config), "--pool", "test-pool"]
    )
    assert "registered 1 deployment(s) with work pool 'test-pool'" in out
    prefect_server.wait_for_run(marker, "touch-pooled", worker)
    prefect_server.stop(worker)


def test_deploy_to_a_missing_pool_is_one_line(prefect_server, tmp_path):
    config = _touch_config(tmp_path, "touch-nowhere", tmp_path / "never.txt")
    done = subprocess.run(
        [str(BIN / "rank1"), "deploy", "--config", str(config), "--pool", "no-such-pool"],
        cwd=tmp_path, env=prefect_server.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: Could not find work pool 'no-such-pool'. Please create it before deploying "
        "this flow."
    ]
