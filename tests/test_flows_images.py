"""The image flows on the built-in digits, with a temporary Prefect API and MLflow store."""

import os

import pytest

from flows.params import ParameterError

CORRUPTIONS = ["gaussian_noise", "contrast"]
SEVERITIES = [1, 5]


@pytest.fixture(scope="module")
def mlflow_dir(tmp_path_factory):

    root = tmp_path_factory.mktemp("flows_images")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        mp.chdir(root)
        yield root


def test_image_benchmark_trains_and_validates_in_parallel_cells(prefect_harness, mlflow_dir):
    import mlflow

    from flows.images import image_benchmark

    result = image_benchmark({
        "preset": "cnn-digits", "methods": ["rank1", "deterministic"], "epochs": 0.5,
        "corruptions": CORRUPTIONS, "severities": SEVERITIES, "device": "cpu",
        "experiment": "flows-images",
    })  # fmt: skip
    assert set(result["runs"]) == {"rank1", "deterministic"}
    client = mlflow.MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])
    for method, run_id in result["runs"].items():
        metrics = client.get_run(run_id).data.metrics
        for c in CORRUPTIONS:
            for s in SEVERITIES:
                assert f"corrupt/{c}/{s}/accuracy" in metrics
        # The summary is the mean over severities of the mean over corruptions.
        per_severity = [
            sum(metrics[f"corrupt/{c}/{s}/nll"] for c in CORRUPTIONS) / len(CORRUPTIONS)
            for s in SEVERITIES
        ]
        expected = sum(per_severity) / len(per_severity)
        assert metrics["corrupt/mean/nll"] == pytest.approx(expected)
        assert result["validation"][method]["corrupt/mean/nll"] == pytest.approx(expected)
        assert result["validation"][method]["clean/accuracy"] == metrics["clean/accuracy"]
        # One clean evaluation, logged at training: clean/* is test/*, not a second one
        # (which, beside cells in parallel threads sharing torch's generator, drifted).
        for name in ("accuracy", "nll", "ece"):
            assert metrics[f"clean/{name}"] == metrics[f"test/{name}"]
        plots = {a.path for a in client.list_artifacts(run_id, "plots")}
        assert "plots/corruption_severity.png" in plots


def test_validate_images_runs_one_task_per_cell(prefect_harness, mlflow_dir, monkeypatch):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.images import train_images, validate_images
    from pipeline import tracking

    runs = train_images({"methods": ["deterministic"], "epochs": 0.25, "device": "cpu"})
    loads = []
    load_model = tracking.load_model

    def counting_load_model(*args, **kwargs):
        loads.append(args)
        return load_model(*args, **kwargs)

    monkeypatch.setattr(tracking, "load_model", counting_load_model)
    cells = {"run_id": runs["deterministic"], "corruptions": ["fog"], "severities": [2, 4]}
    state = validate_images(cells, return_state=True)
    assert state.is_completed()
    # One load for the flow, shared by both cells (not one per task).
    assert len(loads) == 1

    async def task_names():
        async with get_client() as client:
            flow_run_filter = FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])
            )
            task_runs = await client.read_task_runs(flow_run_filter=flow_run_filter)
            return sorted(t.name for t in task_runs)

    names = asyncio.run(task_names())
    assert [n for n in names if n.startswith("evaluate-")] == ["evaluate-fog-2", "evaluate-fog-4"]
    # The clean test set is not evaluated again: its metrics come from the training run.
    assert not any(n.startswith("evaluate_clean") for n in names)
    assert sum(n.startswith("log_summary") for n in names) == 1


def test_image_flows_refuse_bad_parameters(prefect_harness, mlflow_dir):
    from flows.images import image_benchmark, train_images, validate_images

    with pytest.raises(ParameterError, match="train_images: parameter 'preset'"):
        train_images({"preset": "vgg16"})
    with pytest.raises(ParameterError, match="validate_images: parameter 'severities.0'"):
        validate_images({"run_id": "f" * 32, "severities": [6]})
    # image_benchmark checks its validation parameters before training anything.
    with pytest.raises(ParameterError, match="image_benchmark: .*unknown corruption 'rain'"):
        image_benchmark({"corruptions": ["rain"]})
