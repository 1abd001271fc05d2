"""Training-step cost per stay-hour: decompensation on whole stays vs in-hospital mortality.

Both models are the paper-size rank-1 EHR LSTM (K=4): the IHM model reads a 48-hour grid
and predicts once per stay; the decompensation model runs one causal pass over each whole
stay and predicts at every hour from 5 h on (``pipeline.tasks.StayBatches`` batches of
length-bucketed stays, padded to the longest). One step is forward, the paper's objective
(``pipeline.objective``), backward, clipping and the optimiser update, as in
``bench/train.py``. Cost is divided by the stay-hours a step consumes (real rows, not
padding), so padding waste counts against the decompensation step. Synthetic random data:
stay lengths lognormal around ``--median-hours`` (capped at ``--max-hours``). The two cases
run interleaved ``--repeats`` times in one process; the ratio is of the medians.

    python bench/train_tasks.py              # paper sizes, 1 thread, B = 16 stays
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch
from machine import cpu_name, memory_gib  # noqa: E402

import rank1
from pipeline.config import TrainConfig
from pipeline.objective import objective
from pipeline.tasks import TASKS, StayBatches, TaskData
from pipeline.train import build_optimizer
from rank1.models import EHRConfig, EHRModel

K = 4


def synthetic_stays(n: int, median: float, sigma: float, cap: int, features: int, seed: int):
    """A decompensation split of ``n`` random stays with lognormal lengths."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(np.log(median), sigma, n)), 5, cap).astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = rng.standard_normal((int(offsets[-1]), features), dtype=np.float32)
    stay = np.repeat(np.arange(n), lengths - 4)
    hour = np.concatenate([np.arange(5, n_rows + 1) for n_rows in lengths]).astype(np.int32)
    label = (rng.random(stay.shape[0]) < 0.02).astype(np.int64)
    return TaskData(values, offsets, stay=stay, hour=hour, label=label)


def make_step(model: EHRModel, likelihood: str, n_train: int):
    """One full training step of ``model`` on a tiled input and its targets."""
    optimizer = build_optimizer(model, TrainConfig(method="rank1", device="cpu"))
    clip = TrainConfig().optim.grad_clip_norm

    def step(xt, y):
        logits = model(xt)
        terms = objective(
            logits, y, model, likelihood=likelihood, n_train=n_train, step=0, anneal_steps=5000
        )
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()

    return step


def timed(fn, inputs) -> float:
    """Seconds to run ``fn`` once on each input."""
    started = time.perf_counter()
    for args in inputs:
        fn(*args)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rnn-dim", type=int, default=256)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--projection-dim", type=int, default=32)
    parser.add_argument("--stays", type=int, default=16, help="unique stays per step (B)")
    parser.add_argument("--features", type=int, default=76)
    parser.add_argument("--median-hours", type=float, default=60.0)
    parser.add_argument("--sigma", type=float, default=0.8, help="lognormal sigma of lengths")
    parser.add_argument("--max-hours", type=int, default=500)
    parser.add_argument("--population", type=int, default=1600, help="stays to batch from")
    parser.add_argument("--batches", type=int, default=8, help="decompensation batches timed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, nproc {os.cpu_count()}, "
        f"CPU {cpu_name()}, memory {memory_gib():.1f} GiB"
    )
    b = args.stays

    def cfg(**head) -> EHRConfig:
        return EHRConfig(
            input_features=args.features,
            projection_dim=args.projection_dim,
            rnn_dim=args.rnn_dim,
            hidden_dim=args.hidden_dim,
            **head,
        )

    torch.manual_seed(0)
    data = synthetic_stays(
        args.population, args.median_hours, args.sigma, args.max_hours, args.features, seed=0
    )
    loader = StayBatches(data, TASKS["decompensation"], b, seed=0)
    batches = [loader.batch(stays) for stays in loader.batch_stays(0)[: args.batches]]
    decomp_inputs = [(rank1.tile(x, K), y) for x, y in batches]
    decomp_hours = sum(int(x.lengths.sum()) for x, _ in batches)
    padded_hours = sum(x.values.shape[0] * x.values.shape[1] for x, _ in batches)
    samples = sum(x.num_samples for x, _ in batches)
    lengths = data.lengths
    print(
        f"EHR LSTM: projection {args.projection_dim}, rnn {args.rnn_dim}, hidden "
        f"{args.hidden_dim}, {args.features} channels; rank-1 K={K}, B={b} stays"
    )
    print(
        f"decompensation stays: median {np.median(lengths):.0f} h, mean {lengths.mean():.0f} h, "
        f"max {lengths.max()} h; {args.batches} timed batches: {decomp_hours} stay-hours, "
        f"{samples} samples, padding {padded_hours / decomp_hours - 1:.1%} of the rows"
    )
    ihm_x = torch.randn(b, 48, args.features)
    ihm_y = torch.randint(0, 2, (b,)).float()
    ihm_inputs = [(rank1.tile(ihm_x, K), ihm_y)]
    ihm_hours = b * 48
    cases = {
        "ihm (48 h grid, last step)": (
            make_step(EHRModel(cfg()), "bernoulli", 20_000), ihm_inputs, ihm_hours
        ),
        "decompensation (whole stays)": (
            make_step(EHRModel(cfg(per_step=True)), "bernoulli", data.n_samples),
            decomp_inputs,
            decomp_hours,
        ),
    }  # fmt: skip
    per_hour: dict[str, list[float]] = {name: [] for name in cases}
    per_step: dict[str, list[float]] = {name: [] for name in cases}
    for fn, inputs, _ in cases.values():  # warm-up
        timed(fn, inputs[:1])
    for _ in range(args.repeats):
        for name, (fn, inputs, hours) in cases.items():
            rounds = max(1, args.batches // len(inputs))  # about as many steps per case
            seconds = sum(timed(fn, inputs) for _ in range(rounds))
            per_hour[name].append(seconds / (rounds * hours))
            per_step[name].append(seconds / (rounds * len(inputs)))
    ihm = statistics.median(per_hour["ihm (48 h grid, last step)"])
    print(f"{'case':<32} {'ms/step':>9} {'us/stay-hour':>13} {'vs ihm':>8}")
    for name in cases:
        t = statistics.median(per_hour[name])
        ms = 1e3 * statistics.median(per_step[name])
        print(f"{name:<32} {ms:>9.1f} {1e6 * t:>13.1f} {t / ihm:>7.2f}x")
    ratio = statistics.median(per_hour["decompensation (whole stays)"]) / ihm
    verdict = "meets" if ratio <= 1.5 else "misses"
    print(f"decompensation / ihm per stay-hour: {ratio:.2f}x ({verdict} the 1.5x target)")


if __name__ == "__main__":
    main()
