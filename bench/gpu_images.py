"""Training throughput and peak memory of WRN-28-10: rank-1 (K=4) vs deterministic.

Both models take the same number of rows per step on the device (default 128): the
deterministic model 128 unique images, the rank-1 model 32 unique images tiled 4 times (the
paper's per-core layout). One step = forward under bf16 autocast (``--no-bf16`` for fp32),
the paper's objective (tiled cross-entropy + annealed KL, ``pipeline.objective``), backward
and an SGD-Nesterov update with the recipe's parameter groups. Reported: tiled rows/s,
unique images/s, median step time and ``torch.cuda.max_memory_allocated``.

    python bench/gpu_images.py                      # H100/H200: about a minute
    python bench/gpu_images.py --channels-last      # adds channels_last rows
    python bench/gpu_images.py --quick --device cpu # tiny WRN-10-1, a smoke test on CPU
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_case(args, bayesian: bool, channels_last: bool) -> dict:
    import torch

    from pipeline.config import OptimConfig, TrainConfig
    from pipeline.objective import objective
    from pipeline.train import build_optimizer
    from rank1 import Rank1Config, tile
    from rank1.models import WideResNet, WideResNetConfig

    device = torch.device(args.device)
    k = args.k if bayesian else 1
    unique = args.rows // k
    torch.manual_seed(0)
    model = WideResNet(
        WideResNetConfig(
            depth=args.depth,
            width_multiplier=args.width,
            num_classes=10,
            bayesian=bayesian,
            rank1=Rank1Config(ensemble_size=args.k),
        )
    ).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    config = TrainConfig(
        method="rank1" if bayesian else "deterministic",
        ensemble_size=args.k,
        batch_size=unique,
        optim=OptimConfig(name="sgd", lr=0.1, weight_decay=2e-4, grad_clip_norm=None),
        device=args.device,
    )
    optimizer = build_optimizer(model, config)
    x = torch.randn(unique, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (unique,), device=device)
    use_bf16 = args.bf16 and device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    def step(i: int) -> None:
        xt = tile(x, k) if k > 1 else x
        xt = xt.contiguous(memory_format=memory_format)
        with autocast:
            logits = model(xt)
        terms = objective(
            logits, y, model, likelihood="categorical", n_train=50_000, step=i, anneal_steps=1000
        )
        optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        optimizer.step()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    model.train()
    for i in range(args.warmup):
        step(i)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(args.steps):
        start = time.perf_counter()
        step(args.warmup + i)
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else float("nan")
    median = statistics.median(times)
    params = sum(p.numel() for p in model.parameters())
    return {
        "model": f"rank-1 K={k}" if bayesian else "deterministic",
        "layout": "channels_last" if channels_last else "NCHW",
        "unique": unique,
        "rows": unique * k,
        "params": params,
        "step_ms": median * 1e3,
        "rows_s": unique * k / median,
        "unique_s": unique / median,
        "peak_gib": peak / 2**30,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rows", type=int, default=128, help="tiled rows per step")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--depth", type=int, default=28)
    parser.add_argument("--width", type=int, default=10)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--no-bf16", dest="bf16", action="store_false")
    parser.add_argument("--channels-last", action="store_true", help="add channels_last rows")
    parser.add_argument("--quick", action="store_true", help="WRN-10-1, 8 rows, 2+1 steps")
    args = parser.parse_args()
    if args.quick:
        args.depth, args.width, args.rows, args.steps, args.warmup = 10, 1, 8, 2, 1
    if args.rows % args.k:
        parser.error(f"--rows {args.rows} must be a multiple of --k {args.k}")

    import torch

    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            sys.exit("error: CUDA is not available (use --device cpu for a smoke test)")
        torch.backends.cudnn.benchmark = True
        card = torch.cuda.get_device_name(torch.device(args.device))
    else:
        card = f"CPU ({torch.get_num_threads()} threads)"
    precision = "bf16 autocast" if args.bf16 and args.device.startswith("cuda") else "fp32"
    print(
        f"device: {card}; torch {torch.__version__}; WRN-{args.depth}-{args.width}, "
        f"{args.size}x{args.size}, {args.rows} rows/step, {precision}, "
        f"{args.steps} timed steps after {args.warmup} warm-up",
        flush=True,
    )
    layouts = [False, True] if args.channels_last else [False]
    rows = []
    for channels_last in layouts:
        for bayesian in (False, True):
            rows.append(run_case(args, bayesian, channels_last))
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the previous case's model is gone; free its cache
            print(f"  done: {rows[-1]['model']} {rows[-1]['layout']}", flush=True)
    print()
    print("| model | layout | unique x K | params | step ms | rows/s | unique img/s | peak GiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        k = r["rows"] // r["unique"]
        print(
            f"| {r['model']} | {r['layout']} | {r['unique']} x {k} | {r['params'] / 1e6:.1f}M "
            f"| {r['step_ms']:.1f} | {r['rows_s']:.0f} | {r['unique_s']:.0f} "
            f"| {r['peak_gib']:.2f} |"
        )


if __name__ == "__main__":
    main()
