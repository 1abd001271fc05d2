"""Shared fixtures: the MIMIC-III demo path and small helpers."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Prefect reads its settings when it is first imported, so the test session's Prefect home
# (profiles, local storage, the ephemeral database) is set here, before any test module
# imports it: tests never touch ~/.prefect. Offline-friendly defaults as in the Makefile.
_PREFECT_HOME = tempfile.mkdtemp(prefix="rank1-tests-prefect-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "60")
os.environ.setdefault("MPLBACKEND", "Agg")
# One torch thread for the whole suite and every process it starts: on shared CPUs
# multi-threaded kernels spin-wait and run 10-50x slower, and the bit-identical resume tests
# need the same thread count in every process. Set before torch is imported.
os.environ["OMP_NUM_THREADS"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO_ROOT.parent / "shared" / "data" / "mimic3-demo"
RESOURCES_DIR = REPO_ROOT.parent / "shared" / "data" / "mimic3-benchmarks-resources"


#: Fixtures that start a Prefect API or server: a test using one is an integration test
#: (left out of ``make test-fast``), whichever file it is in.
_INTEGRATION_FIXTURES = frozenset({"prefect_harness", "prefect_server"})
#: Fixtures that cost seconds to build (a 3,000-patient synthetic cohort, about 15 s on 2
#: cores): their tests are ``slow``.
_SLOW_FIXTURES = frozenset({"cohort_3k"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that start Prefect ``integration`` and those on costly fixtures ``slow``."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if _INTEGRATION_FIXTURES & fixtures:
            item.add_marker(pytest.mark.integration)
        if _SLOW_FIXTURES & fixtures:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Keep torch on one thread even where a test (or the demo) changed it."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """Path to the MIMIC-III Clinical Database Demo; skips when it is not present."""
    if not (DEMO_DIR / "ICUSTAYS.csv.gz").exists():
        pytest.skip(
            f"MIMIC-III demo not found at {DEMO_DIR}; fetch it from PhysioNet "
            "(mimiciii-demo 1.4) and place the gzipped tables there to run this test"
        )
    return DEMO_DIR


@pytest.fixture(scope="session")
def tiny_ehr_features(tmp_path_factory) -> Path:
    """A feature folder extracted from a ~150-patient synthetic cohort (with true_risk)."""
    from features.mimic.extract import extract
    from features.synthetic import generate

    root = tmp_path_factory.mktemp("tiny_ehr")
    generate(root / "mimic", patients=150, seed=0)
    extract(root / "mimic", root / "features", seed=0, progress=False)
    return root / "features"


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory, request):
    """A temporary sqlite MLflow store (and working folder) shared by one test module.

    One per module, not per test: creating the store's schema costs seconds. Yields its URI.
    """
    folder = tmp_path_factory.mktemp(f"mlflow-{request.module.__name__}")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(folder)
        yield uri


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API and database for flow tests (about 12-14 s to start, once)."""
    from prefect.logging.configuration import setup_logging
    from prefect.testing.utilities import prefect_test_harness

    # (Re)configure Prefect's logging here, outside any CliRunner: its console handler keeps
    # the stream it was created with, and a CliRunner's stream is closed when the command
    # ends (prefect may have been imported first inside one).
    setup_logging(incremental=False)
    with prefect_test_harness(server_startup_timeout=60):
        yield
