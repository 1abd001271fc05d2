"""Profile a few rank-1 WRN-28-10 training steps on a GPU (where does the time go?).

python bench/gpu_profile.py [--deterministic]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import rank1  # noqa: E402
from rank1.models import WideResNet, WideResNetConfig  # noqa: E402


def main() -> None:
    """Run warm-up steps, profile three, print the top ops by CUDA and by CPU time."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--deterministic", action="store_true")
    ap.add_argument("--rows", type=int, default=128)
    args = ap.parse_args()
    bayes = not args.deterministic
    k = 4 if bayes else 1
    model = WideResNet(WideResNetConfig(bayesian=bayes)).cuda()
    opt = torch.optim.SGD(rank1.param_groups(model, 2e-4), lr=0.1, momentum=0.9, nesterov=True)
    x = torch.randn(args.rows // k, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (args.rows // k,), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(rank1.tile(x, k) if bayes else x)
            loss = torch.nn.functional.cross_entropy(logits.float(), rank1.tile(y, k))
            if bayes:
                loss = loss + rank1.kl_divergence(model) / 50000
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            step()
        torch.cuda.synchronize()
    for key in ("cuda_time_total", "cpu_time_total"):
        print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=40))


if __name__ == "__main__":
    main()
