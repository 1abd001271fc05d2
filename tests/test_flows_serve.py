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


@pytest.mark.slow
def test_served_deployment_runs_on_its_schedule(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    marker = tmp_path / "ran.txt"
    (tmp_path / "touch_flow.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path

            from prefect import flow


            @flow
            def touch(path: str) -> str:
                Path(path).write_text("ran\\n")
                return path
            """
        )
    )
    config = tmp_path / "deployments.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            deployments:
              - name: touch-often
                flow: {tmp_path / "touch_flow.py"}:touch
                interval_seconds: 2
                parameters: {{path: {marker}}}
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # Look for due runs every second instead of every 10 s, to keep the test short.
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in ("server", "serve")}  # noqa: SIM115
    started: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        process = subprocess.Popen(
            args, cwd=tmp_path, env=env, stdout=logs[name], stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        started.append(process)
        return process

    try:
        server = start(
            "server",
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
             str(port), "--analytics-off"],
        )  # fmt: skip
        _wait(lambda: _healthy(api), SERVER_START_S, "before the server was healthy", server)
        serve = start("serve", [str(BIN / "rank1"), "serve", "--config", str(config)])
        _wait(
            lambda: marker.exists() and _completed_runs(api, "touch-often"),
            RUN_DONE_S,
            "before a scheduled run completed",
            server,
            serve,
        )
        assert marker.read_text() == "ran\n"
        assert _stop(serve) == 0  # SIGTERM is a clean stop for `rank1 serve`
        started.remove(serve)
    except BaseException:
        for name, handle in logs.items():
            handle.flush()
            sys.stderr.write(f"--- {name} log ---\n{(tmp_path / f'{name}.log').read_text()}\n")
        raise
    finally:
        for process in reversed(started):
            _stop(process)
        for handle in logs.values():
            handle.close()
    assert "stopped serving" in (tmp_path / "serve.log").read_text()
