"""A tiny training run in its own process, for the resume-after-kill and DDP tests.

    python tests/train_script.py --ckpt DIR --out FILE [--steps N] [--sleep S] [--resume]
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/train_script.py ...

Trains a small rank-1 EHR LSTM on a learnable random task and saves, to ``--out`` (with
``.rank<r>`` appended under torchrun), the final (last-step) weights, the returned best
weights and the training history. Prints ``step <n>`` after every optimiser step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import OptimConfig, ScheduleConfig, TrainConfig  # noqa: E402
from pipeline.train import fit, load_checkpoint, seed_everything  # noqa: E402
from rank1.models import EHRConfig, EHRModel  # noqa: E402


def data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, 5, generator=g)
    y = (x[:, :, 0].mean(1) + 0.3 * torch.randn(n, generator=g) > 0).float()
    return x, y


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--method", default="rank1")
    args = parser.parse_args()
    torch.set_num_threads(1)  # bit-identical CPU results need the same thread count

    config = TrainConfig(
        method=args.method,
        batch_size=32,
        schedule=ScheduleConfig(length=args.steps, kl_anneal=args.steps // 2),
        optim=OptimConfig(lr=1e-2),
        eval_every=10,
        checkpoint_every=5,
        device="cpu",
    )
    seed_everything(config.seed)
    model = EHRModel(
        EHRConfig(
            input_features=5,
            projection_dim=4,
            rnn_dim=8,
            hidden_dim=8,
            bayesian=args.method == "rank1",
        )
    )
    x, y = data(256, 1)
    xv, yv = data(64, 2)

    def on_step(step: int) -> None:
        print(f"step {step}", flush=True)
        if args.sleep:
            time.sleep(args.sleep)

    result = fit(
        model,
        (x, y),
        (xv, yv),
        likelihood="bernoulli",
        n_train=x.shape[0],
        config=config,
        checkpoint_dir=args.ckpt,
        resume=args.resume,
        progress=False,
        on_step=on_step,
    )
    rank = int(os.environ.get("RANK", 0))
    out = args.out + (f".rank{rank}" if "RANK" in os.environ else "")
    last = load_checkpoint(Path(args.ckpt) / "checkpoint.pt")["model"] if rank == 0 else {}
    torch.save(
        {
            "best": result.model.state_dict(),
            "last": last,
            "history": result.history,
            "steps": result.steps,
        },
        out,
    )


if __name__ == "__main__":
    main()
