"""Corruption cells evaluated in parallel threads give the numbers of a sequential run."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from pipeline.images import build_model, evaluate_corruption, image_preset

CELLS = [(c, s) for c in ("gaussian_noise", "contrast") for s in (1, 5)]


@pytest.fixture(scope="module")
def digits_model():
    """An untrained rank-1 digits CNN: its rank-1 layers draw noise at every prediction."""
    job = image_preset("cnn-digits", method="rank1", experiment="t")
    # Small evaluation batches: 23 forward passes per cell, so threads that share torch's
    # global generator interleave their draws every time (with the default batch a cell is
    # one pass, and a race would show only now and then). One sample per pass is enough.
    job = job.replace(train=job.train.replace(eval_batch_size=16, num_eval_samples=1))
    torch.manual_seed(0)
    model = build_model(job, num_classes=10, in_channels=1, bayesian=True).eval()
    return model, job


def _cells(model, job, threads: int) -> dict:
    def one(cell):
        return evaluate_corruption(model, job, *cell, device="cpu", num_workers=0)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return dict(zip(CELLS, pool.map(one, CELLS), strict=True))


def test_parallel_cells_are_deterministic_and_match_a_sequential_run(digits_model):
    model, job = digits_model
    sequential = _cells(model, job, threads=1)
    # Twice with as many threads as cells (the flow runs up to 4 at once): every cell's
    # metrics must equal the sequential ones exactly, whatever the interleaving.
    for _ in range(2):
        assert _cells(model, job, threads=len(CELLS)) == sequential
    # The cells differ from each other: the check above compares real measurements.
    assert len({cell["nll"] for cell in sequential.values()}) == len(CELLS)
