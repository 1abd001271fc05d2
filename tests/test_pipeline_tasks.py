"""The sequence tasks: data checks, batches of whole stays, losses and the training job."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rank1
from features.mimic.tasks import los_bucket
from pipeline.tasks import TASKS, StayBatches, TaskData
from rank1.models import EHRConfig, EHRModel

FEATURES = 6


def _stays(n: int, seed: int = 0, low: int = 5, high: int = 40):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(low, high, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    values = rng.standard_normal((int(offsets[-1]), FEATURES)).astype(np.float32)
    return rng, lengths, offsets, values


def per_hour_data(task: str, n: int = 24, seed: int = 0) -> TaskData:
    """A small random split of decompensation or length of stay (samples from hour 5)."""
    rng, lengths, offsets, values = _stays(n, seed)
    stay = np.repeat(np.arange(n), lengths - 4)
    hour = np.concatenate([np.arange(5, n_rows + 1) for n_rows in lengths]).astype(np.int32)
    # Shuffle the samples: the contract does not promise them grouped by stay.
    order = rng.permutation(stay.shape[0])
    stay, hour = stay[order], hour[order]
    if task == "decompensation":
        # Death within 24 h made visible in the rows: channel 0 of the last row read.
        signal = values[offsets[stay] + hour - 1, 0]
        label = (signal > 0.8).astype(np.int64)
        return TaskData(values, offsets, stay=stay, hour=hour, label=label)
    remaining = (lengths[stay] - hour + rng.integers(0, 400, stay.shape[0])).astype(np.float64)
    return TaskData(
        values, offsets, stay=stay, hour=hour, label=los_bucket(remaining),
        remaining_hours=remaining,
    )  # fmt: skip


def phenotype_data(n: int = 24, seed: int = 0) -> TaskData:
    """A small random phenotyping split (25 labels per stay)."""
    rng, _, offsets, values = _stays(n, seed)
    labels = (rng.random((n, 25)) < 0.3).astype(np.int64)
    labels[:, 0] = values[offsets[1:] - 1, 0] > 0  # one label the rows tell
    return TaskData(values, offsets, labels=labels)


def test_load_task_split_reads_an_extracted_folder(tmp_path):
    from features.mimic.extract import extract_all
    from features.synthetic import generate
    from pipeline.tasks import load_task_split

    generate(tmp_path / "mimic", patients=120, seed=0)
    extract_all(
        tmp_path / "mimic", tmp_path / "f", tasks=("length-of-stay", "phenotyping"), progress=False
    )
    loaded = load_task_split(tmp_path / "f" / "length-of-stay", "val")
    assert loaded.labels is None and loaded.n_samples > 0
    np.testing.assert_array_equal(loaded.label, los_bucket(loaded.remaining_hours))
    pheno = load_task_split(tmp_path / "f" / "phenotyping", "test")
    assert pheno.labels.shape == (pheno.n_stays, 25)


def test_task_data_refuses_hours_beyond_a_stay():
    data = per_hour_data("decompensation", n=3)
    hour = data.hour.copy()
    hour[np.argmax(data.stay == 0)] = data.lengths[0] + 1
    with pytest.raises(ValueError, match="hour"):
        TaskData(data.values, data.offsets, stay=data.stay, hour=hour, label=data.label)
    with pytest.raises(ValueError, match="offsets"):
        TaskData(data.values, data.offsets[:-1], labels=None, stay=data.stay, hour=hour,
                 label=data.label)  # fmt: skip


@pytest.mark.parametrize("task", ["decompensation", "length-of-stay", "phenotyping"])
def test_stay_batches_cover_every_sample_once_bucketed_and_reproducibly(task):
    data = phenotype_data() if task == "phenotyping" else per_hour_data(task)
    loader = StayBatches(data, TASKS[task], batch_size=4, seed=3, chunk_batches=3)
    assert len(loader) == 6
    stay, step, target = data.samples()
    seen = []
    for batch, y in loader:
        rows = batch.sample_row.numpy()
        steps = batch.sample_step.numpy()
        assert (steps < batch.lengths.numpy()[rows]).all()
        assert batch.values.shape[1] == int(batch.lengths.max())
        assert y.shape[0] == batch.num_samples
        # Each sample's row in the padded grid is its stay's row at that step.
        for r in range(batch.values.shape[0]):
            n = int(batch.lengths[r])
            assert (batch.values[r, n:] == 0).all()
        seen.append(y)
    assert sum(t.shape[0] for t in seen) == data.n_samples
    again = [y for _, y in loader]
    assert all(torch.equal(a, b) for a, b in zip(seen, again, strict=True))
    loader.set_epoch(1)
    assert [b.tolist() for b in loader.batch_stays()] != [b.tolist() for b in loader.batch_stays(0)]
    # Within each length-sorted chunk the stays of a batch have similar lengths.
    evaluation = StayBatches(data, TASKS[task], batch_size=4, shuffle=False)
    order = evaluation.sample_order
    assert sorted(order.tolist()) == list(range(data.n_samples))
    targets = torch.cat([y for _, y in evaluation])
    expected = target[order]
    np.testing.assert_array_equal(targets.numpy(), expected.astype(targets.numpy().dtype))
    lengths = [int(b.lengths.max()) for b, _ in evaluation]
    assert lengths == sorted(lengths)


def test_stay_batch_samples_read_exactly_the_rows_before_their_hour():
    data = per_hour_data("decompensation", n=6)
    loader = StayBatches(data, TASKS["decompensation"], batch_size=3, shuffle=False)
    model = EHRModel(EHRConfig(input_features=FEATURES, projection_dim=4, rnn_dim=8,
                               hidden_dim=4, per_step=True, bayesian=False))  # fmt: skip
    stay, step, _ = data.samples()
    outs = torch.cat([model(batch) for batch, _ in loader]).detach()
    order = loader.sample_order
    for j in range(0, len(order), 17):
        i, t = stay[order[j]], step[order[j]]
        rows = torch.from_numpy(data.values[data.offsets[i] : data.offsets[i] + t + 1])
        alone = model(rows[None])[0, -1].detach()
        torch.testing.assert_close(outs[j], alone)
    k = 2
    rank1_model = EHRModel(EHRConfig(input_features=FEATURES, projection_dim=4, rnn_dim=8,
                                     hidden_dim=4, per_step=True,
                                     rank1=rank1.Rank1Config(ensemble_size=k)))  # fmt: skip
    batch, y = next(iter(loader))
    assert rank1_model(rank1.tile(batch, k)).shape == (k * y.shape[0],)


# --------------------------------------------------------------------------- metrics


def test_length_of_stay_metrics_kappa_and_mad_use_the_bucket_means():
    from sklearn.metrics import cohen_kappa_score

    from pipeline.tasks import LOS_BUCKET_MEAN_HOURS, task_metrics

    y = np.array([0, 1, 9, 3])
    predicted = np.array([0, 2, 9, 1])
    logits = np.full((2, 4, 10), -5.0)
    logits[:, np.arange(4), predicted] = 5.0
    remaining = np.array([10.0, 30.0, 600.0, 80.0])
    out = task_metrics(TASKS["length-of-stay"], logits, y, remaining_hours=remaining)
    assert out["kappa"] == pytest.approx(cohen_kappa_score(y, predicted, weights="linear"))
    means = np.asarray(LOS_BUCKET_MEAN_HOURS)[predicted]
    assert out["mad"] == pytest.approx(np.mean(np.abs(means - remaining)))
    assert {"nll", "brier", "ece", "accuracy"} <= set(out)


def test_phenotyping_metrics_and_per_label_temperatures():
    from sklearn.metrics import roc_auc_score

    from pipeline.tasks import fit_scaler, sample_uncertainty, task_metrics

    rng = np.random.default_rng(0)
    y = (rng.random((200, 25)) < 0.3).astype(np.int64)
    signal = (2 * y - 1) * rng.uniform(0.2, 3, 25)  # label j's logits scaled by its own factor
    logits = np.stack([signal + rng.normal(0, 1, y.shape) for _ in range(3)])
    spec = TASKS["phenotyping"]
    out = task_metrics(spec, logits, y)
    p = 1 / (1 + np.exp(-logits))
    p = p.mean(0)
    assert out["micro_auroc"] == pytest.approx(roc_auc_score(y.ravel(), p.ravel()))
    macro = np.mean([roc_auc_score(y[:, j], p[:, j]) for j in range(25)])
    assert out["macro_auroc"] == pytest.approx(macro)
    scaler = fit_scaler(spec, logits * 4, y)  # over-confident by 4: T near 4 on every label
    assert len(scaler.temperatures) == 25
    assert (
        task_metrics(spec, scaler.apply(logits * 4), y)["nll"]
        < task_metrics(spec, logits * 4, y)["nll"]
    )
    parts = sample_uncertainty(spec, logits)
    assert parts.total.shape == (200, 25)
    np.testing.assert_allclose(parts.total, parts.aleatoric + parts.epistemic, atol=1e-12)


# --------------------------------------------------------------------------- the job


def _task_config(method="rank1", steps=8):
    from pipeline.config import OptimConfig, ScheduleConfig, TrainConfig

    return TrainConfig(
        method=method, ensemble_size=2, batch_size=4, optim=OptimConfig(lr=3e-3),
        schedule=ScheduleConfig(length=steps, kl_anneal=4), eval_every=4,
        checkpoint_every=0, num_eval_samples=2, device="cpu",
    )  # fmt: skip


_SMALL = EHRConfig(projection_dim=4, rnn_dim=8, hidden_dim=8)


@pytest.mark.integration  # MLflow end to end
@pytest.mark.parametrize(
    ("task", "method"),
    [
        ("decompensation", "rank1"),
        ("length-of-stay", "deterministic"),
        ("phenotyping", "rank1"),
        ("decompensation", "ensemble"),
    ],
)
def test_train_task_logs_the_benchmark_metrics(task, method, mlflow_store):
    import mlflow

    from pipeline.tasks import train_task

    def split(seed):
        if task == "phenotyping":
            return phenotype_data(n=16, seed=seed)
        return per_hour_data(task, n=12, seed=seed)

    torch.set_num_threads(1)
    result = train_task(
        task, split(0), split(1), split(2), _task_config(method), model_config=_SMALL,
        progress=False, dataset="synthetic",
    )  # fmt: skip
    run = mlflow.MlflowClient(tracking_uri=mlflow_store).get_run(result.run_id)
    experiment = mlflow.MlflowClient(tracking_uri=mlflow_store).get_experiment(
        run.info.experiment_id
    )
    assert experiment.name == f"mimic-{task}"
    metrics, params = run.data.metrics, run.data.params
    assert run.data.tags["task"] == task and run.data.tags["dataset"] == "synthetic"
    assert params["model.output_dim"] == str(TASKS[task].output_dim)
    benchmark = {
        "decompensation": ("auroc", "auprc"),
        "length-of-stay": ("kappa", "mad"),
        "phenotyping": ("macro_auroc", "micro_auroc"),
    }[task]
    for key in (*benchmark, "nll", "brier", "ece"):
        assert f"test/{key}" in metrics and f"test_calibrated/{key}" in metrics, key
    assert "test_calibrated/uncertainty/mean_epistemic" in metrics
    curve = "train/member_1/val_nll" if method == "ensemble" else "train/val_nll"
    history = mlflow.MlflowClient(tracking_uri=mlflow_store).get_metric_history(
        result.run_id, curve
    )
    assert [point.step for point in history] == [4, 8]
    m = result.metrics
    assert np.isfinite(m.test_nll) and m.temperature > 0
    for key in benchmark:
        assert getattr(m, f"test_{key}") == pytest.approx(metrics[f"test/{key}"], nan_ok=True)
    # The logged model is the task's model and predicts as the returned one does.
    from pipeline import tracking

    logged = tracking.load_model(result.run_id, map_location="cpu")
    member = logged.members[0] if method == "ensemble" else logged
    assert member.config.output_dim == TASKS[task].output_dim
    assert member.config.per_step == TASKS[task].per_step
    batch, _ = next(iter(StayBatches(split(2), TASKS[task], 3, shuffle=False)))
    k = result.model.ensemble_size
    for model in (logged, result.model):
        model.eval()
        rank1.set_sampling(model, "mean")
    with torch.no_grad():
        torch.testing.assert_close(logged(rank1.tile(batch, k)), result.model(rank1.tile(batch, k)))
    if method == "deterministic":
        assert m.test_mean_epistemic == 0.0
    else:
        assert m.test_mean_epistemic > 0.0


def test_the_trainer_resumes_stay_batches_at_any_step_with_the_runs_seed():
    from pipeline.train.batches import training_batches
    from pipeline.train.distributed import DistInfo

    data = per_hour_data("decompensation", n=20)
    loader = StayBatches(data, TASKS["decompensation"], batch_size=4, seed=0)
    info = DistInfo()
    batches = training_batches(loader, 4, seed=11, info=info)
    assert loader.seed == 11 and batches.steps_per_epoch == 5
    stream = batches.from_step(0)
    first = [next(stream)[1] for _ in range(12)]
    resumed = batches.from_step(7)
    for expected in first[7:]:
        assert torch.equal(next(resumed)[1], expected)


@pytest.fixture(scope="module")
def task_folders(tmp_path_factory):
    from features.mimic.extract import extract_all
    from features.synthetic import generate

    root = tmp_path_factory.mktemp("task-folders")
    generate(root / "mimic", patients=150, seed=0)
    extract_all(root / "mimic", root / "f", tasks=("decompensation", "phenotyping"), progress=False)
    return root / "f"


@pytest.mark.integration  # MLflow end to end, from an extracted folder to the report
@pytest.mark.parametrize("task", ["decompensation", "phenotyping"])
def test_a_task_run_reports_its_folder_per_patient(task, task_folders, mlflow_store, tmp_path):
    import stat

    import polars as pl

    from features.mimic.loader import FeatureFolderError
    from pipeline.tasks.job import report_task, train_task_folder

    torch.set_num_threads(1)
    result = train_task_folder(
        task_folders / task, _task_config("rank1", steps=6), model_config=_SMALL, progress=False
    )
    paths = report_task(result.run_id, task_folders / task, tmp_path / "report")
    rows = pl.read_csv(paths["csv"])
    test = pl.read_parquet(task_folders / task / "stays.parquet").filter(pl.col("split") == "test")
    if task == "decompensation":
        samples = pl.read_parquet(task_folders / task / "samples.parquet")
        expected = samples.join(test.select("icustay_id"), on="icustay_id").height
        assert rows.height == expected and rows["risk"].is_between(0, 1).all()
        assert "trajectories" in paths["html"].read_text().lower()
    else:
        assert rows.height == test.height * 25
    assert stat.S_IMODE(paths["html"].stat().st_mode) == 0o600
    other = "phenotyping" if task == "decompensation" else "decompensation"
    with pytest.raises(FeatureFolderError, match="not the"):
        report_task(result.run_id, task_folders / other, tmp_path / "other")


def test_referral_keeps_the_samples_the_members_agree_on():
    from pipeline.metrics import mixture_nll
    from pipeline.tasks import TASKS, task_referral
    from pipeline.tasks.evaluate import sample_nll

    rng = np.random.default_rng(0)
    n = 200
    y = rng.integers(0, 2, size=n)
    # Members agree (confident, right) on the first half; they disagree on the second,
    # where the mixture is a coin flip: referring those must lower the retained NLL.
    agree = np.where(y[: n // 2] == 1, 4.0, -4.0)
    logits = np.empty((4, n))
    logits[:, : n // 2] = agree
    logits[:, n // 2 :] = np.array([[6.0], [-6.0], [6.0], [-6.0]])
    spec = TASKS["decompensation"]
    np.testing.assert_allclose(sample_nll(spec, logits, y).mean(), mixture_nll(logits, y))
    referral = task_referral(spec, logits, y)
    assert referral.by == "epistemic"
    assert referral.retained_nll[referral.coverages.index(0.5)] < 0.05
    assert referral.gain(0.8) > 0.05
    assert referral.random_nll == pytest.approx(mixture_nll(logits, y))
    one_path = task_referral(spec, logits[:1], y)
    assert one_path.by == "total"
    pheno = task_referral(
        TASKS["phenotyping"], rng.normal(size=(2, 10, 25)), rng.integers(0, 2, (10, 25))
    )
    assert len(pheno.retained_nll) == len(pheno.coverages)
