"""Forward+backward cost of each rank-1 layer relative to the plain torch layer.

Both layers run on the same tiled batch (K*B rows), in training mode, side by side in one
run; each case is measured ``--repeats`` times, interleaved, and the median is reported.

    python bench/layers.py                # one thread, the issue's cases
    python bench/layers.py --threads 2 --min-time 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils import benchmark

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import cpu_name  # noqa: E402

import rank1  # noqa: E402

K = 4


def _step(layer: nn.Module, x: torch.Tensor, lstm: bool = False):
    def run():
        layer.zero_grad(set_to_none=True)
        out = layer(x)
        if lstm:
            out = out[0]
        out.sum().backward()

    return run


def cases(device: str):
    """Yield (name, plain_layer, rank1_layer, input, is_lstm)."""
    torch.manual_seed(0)
    b = 128
    x = torch.randn(K * b, 512, device=device, requires_grad=True)
    plain = nn.Linear(512, 512, device=device)
    yield (
        "Linear 512->512, B=128 (per-example noise)",
        plain,
        rank1.Rank1Linear(512, 512, device=device, rank1=rank1.Rank1Config(ensemble_size=K)),
        x,
        False,
    )
    yield (
        "Linear 512->512, B=128 (one sample per member)",
        plain,
        rank1.Rank1Linear(
            512, 512, device=device, rank1=rank1.Rank1Config(ensemble_size=K, sampling="member")
        ),
        x,
        False,
    )
    b = 32
    x = torch.randn(K * b, 64, 32, 32, device=device, requires_grad=True)
    plain = nn.Conv2d(64, 64, 3, padding=1, device=device)
    yield (
        "Conv2d 64->64 3x3, 32x32, B=32 (per-example noise)",
        plain,
        rank1.Rank1Conv2d(
            64, 64, 3, padding=1, device=device, rank1=rank1.Rank1Config(ensemble_size=K)
        ),
        x,
        False,
    )
    b = 64
    x = torch.randn(K * b, 48, 76, device=device, requires_grad=True)
    plain = nn.LSTM(76, 128, batch_first=True, device=device)
    yield (
        "LSTM 76->128, 48 steps, B=64 (per-example noise)",
        plain,
        rank1.Rank1LSTM(
            76, 128, batch_first=True, device=device, rank1=rank1.Rank1Config(ensemble_size=K)
        ),
        x,
        True,
    )


def main() -> None:
    """Measure and print the ratio table."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", default="", help="substring filter on case names")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    print(f"torch {torch.__version__}, device {dev}, threads {torch.get_num_threads()}")
    if dev == "cpu":
        print(f"CPU: {cpu_name()} ({os.cpu_count()} logical cores)")
    else:
        print(f"GPU: {torch.cuda.get_device_name()}")
    print(f"K={K}; times are medians of {args.repeats} interleaved blocked_autorange runs\n")
    rows = []
    for name, plain, r1, x, lstm in cases(dev):
        if args.only and args.only not in name:
            continue
        t_plain, t_r1 = [], []
        for _ in range(args.repeats):
            for fn, acc in ((_step(plain, x, lstm), t_plain), (_step(r1, x, lstm), t_r1)):
                timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=args.threads)
                acc.append(timer.blocked_autorange(min_run_time=args.min_time).median)
        p, q = statistics.median(t_plain), statistics.median(t_r1)
        rows.append((name, p * 1e3, q * 1e3, q / p))
        print(f"{name:55s} plain {p * 1e3:8.2f} ms  rank-1 {q * 1e3:8.2f} ms  ratio {q / p:5.2f}")
    print("\n| case | plain (ms) | rank-1 (ms) | ratio |\n|---|---:|---:|---:|")
    for name, p, q, ratio in rows:
        print(f"| {name} | {p:.2f} | {q:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
