"""Training-step time of the rank-1 EHR LSTM vs the deterministic LSTM vs a deep ensemble.

One "step" is what ``pipeline.train`` does per optimiser step: forward, the paper's
objective (``pipeline.objective``), backward, global-norm clipping and an Adam update.

* rank-1: one step of the K=4 rank-1 model on B unique examples tiled to 4B rows;
* deterministic at 4B: one step of the plain LSTM on 4B rows (the same number of rows);
* deep ensemble: one step of each of 4 independent plain LSTMs on B rows, i.e. what one
  step of a 4-member ensemble costs when the members are trained as separate models.

All cases run side by side in one process, interleaved ``--repeats`` times; medians of
``torch.utils.benchmark`` measurements are reported.

    python bench/train.py                       # paper sizes (rnn 256, B = 16 unique)
    python bench/train.py --rnn-dim 64 --hidden-dim 64 --unique-batch 32 --profile
"""

from __future__ import annotations

import argparse
import os
import statistics

import torch
from machine import cpu_name, memory_gib  # noqa: E402
from torch.utils import benchmark

import rank1
from pipeline.config import TrainConfig
from pipeline.objective import objective
from pipeline.train import build_optimizer
from rank1.models import EHRConfig, EHRModel

K = 4


def make_step(model: EHRModel, x: torch.Tensor, y: torch.Tensor, tile: int):
    """A closure running one full training step of ``model`` on ``x`` (tiled ``tile`` x)."""
    config = TrainConfig(method="rank1" if tile > 1 else "deterministic", device="cpu")
    optimizer = build_optimizer(model, config)
    xt = rank1.tile(x, tile) if tile > 1 else x

    def step():
        logits = model(xt)
        terms = objective(
            logits, y, model, likelihood="bernoulli", n_train=10_000, step=0, anneal_steps=5000
        )
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip_norm)
        optimizer.step()

    return step


def profile_parts(model: EHRModel, x: torch.Tensor, y: torch.Tensor, repeats: int = 15):
    """Median ms of each part of one step: projection, LSTM, head, KL, backward."""
    import time

    def once() -> list[float]:
        t = [time.perf_counter()]
        z = model.projection(x)
        t.append(time.perf_counter())
        _, (h, _) = model.lstm(z)
        t.append(time.perf_counter())
        logits = model.output(torch.nn.functional.relu6(model.hidden(h[-1]))).squeeze(-1)
        t.append(time.perf_counter())
        kl = rank1.kl_divergence(model)
        t.append(time.perf_counter())
        target = y.repeat(logits.shape[0] // y.shape[0])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target) + kl / 1e4
        model.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        return [1e3 * (b - a) for a, b in zip(t, t[1:], strict=False)]

    for _ in range(3):
        once()
    runs = [once() for _ in range(repeats)]
    return [statistics.median(part) for part in zip(*runs, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rnn-dim", type=int, default=256)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--projection-dim", type=int, default=32)
    parser.add_argument("--unique-batch", type=int, default=16, help="B (recipe: 64/K = 16)")
    parser.add_argument("--hours", type=int, default=48)
    parser.add_argument("--features", type=int, default=76)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="Also split a step into its parts.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, nproc {os.cpu_count()}, "
        f"CPU {cpu_name()}, memory {memory_gib():.1f} GiB"
    )
    b = args.unique_batch
    print(
        f"EHR LSTM: projection {args.projection_dim}, rnn {args.rnn_dim}, hidden "
        f"{args.hidden_dim}, {args.hours} h x {args.features} channels; K={K}, B={b}"
    )

    def cfg(bayesian: bool) -> EHRConfig:
        return EHRConfig(
            input_features=args.features,
            projection_dim=args.projection_dim,
            rnn_dim=args.rnn_dim,
            hidden_dim=args.hidden_dim,
            bayesian=bayesian,
        )

    torch.manual_seed(0)
    x = torch.randn(b, args.hours, args.features)
    y = torch.randint(0, 2, (b,)).float()
    x4 = torch.randn(K * b, args.hours, args.features)
    y4 = torch.randint(0, 2, (K * b,)).float()
    rank1_model, det_model = EHRModel(cfg(True)), EHRModel(cfg(False))
    rank1_step = make_step(rank1_model, x, y, K)
    det_step = make_step(det_model, x4, y4, 1)
    member_steps = [make_step(EHRModel(cfg(False)), x, y, 1) for _ in range(K)]

    def ensemble_step():
        for step in member_steps:
            step()

    cases = {
        f"rank-1 K={K} ({K * b} rows)": rank1_step,
        f"deterministic ({K * b} rows)": det_step,
        f"deep ensemble {K} x ({b} rows)": ensemble_step,
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in cases.items():
            m = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=args.threads)
            times[name].append(m.blocked_autorange(min_run_time=args.min_time).median)
    det = statistics.median(times[f"deterministic ({K * b} rows)"])
    print(f"{'case':<34} {'median ms/step':>15} {'vs deterministic':>17}")
    for name, values in times.items():
        t = statistics.median(values)
        print(f"{name:<34} {1e3 * t:>15.2f} {t / det:>16.2f}x")
    if args.profile:
        print(f"{'parts (median ms)':<34} projection   LSTM fwd   head     KL   backward")
        for name, model, xx, yy in (
            (f"rank-1 K={K} ({K * b} rows)", rank1_model, rank1.tile(x, K), y),
            (f"deterministic ({K * b} rows)", det_model, x4, y4),
        ):
            parts = profile_parts(model, xx, yy)
            print(f"{name:<34} " + " ".join(f"{p:>9.2f}" for p in parts))


if __name__ == "__main__":
    main()
