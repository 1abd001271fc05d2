"""The sequence tasks: data checks, batches of whole stays, losses and the training job."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rank1
from pipeline.tasks import TASKS, StayBatches, TaskData, los_bucket
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


def test_los_bucket_follows_the_benchmarks_custom_bins():
    hours = np.array([0, 23.9, 24, 47, 7 * 24 + 1, 8 * 24, 13.9 * 24, 14 * 24, 1000])
    assert los_bucket(hours).tolist() == [0, 0, 1, 1, 7, 8, 8, 9, 9]


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
