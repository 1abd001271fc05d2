"""CUDA smoke check of the rank-1 library: CPU/GPU agreement and a bf16 training step.

python bench/gpu_smoke.py      # needs a CUDA device; prints one line per check
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import rank1  # noqa: E402
from rank1.models import EHRConfig, EHRModel, WideResNet, WideResNetConfig  # noqa: E402


def main() -> None:
    """Run the checks and exit non-zero on the first disagreement."""
    assert torch.cuda.is_available(), "no CUDA device"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    torch.manual_seed(0)
    cases = [
        (
            EHRModel(EHRConfig(rnn_dim=64)),
            torch.randn(8, 48, 76),
            {"lengths": torch.tensor([48, 7])},
        ),
        (WideResNet(WideResNetConfig(depth=10, width_multiplier=2)), torch.randn(8, 3, 32, 32), {}),
    ]
    ok = True
    for model, x, kw in cases:
        model.eval()
        rank1.set_sampling(model, "mean")
        ref = model(x, **kw)
        gpu = model.cuda()(x.cuda(), **{k: v.cuda() for k, v in kw.items()}).cpu()
        err = (ref - gpu).abs().max().item()
        good = err < 1e-3 * max(1.0, ref.abs().max().item())
        ok &= good
        print(
            f"{type(model).__name__}: posterior-mean outputs CPU vs CUDA max |diff| {err:.2e}"
            f" {'ok' if good else 'MISMATCH'}"
        )
        model.train()
        rank1.set_sampling(model, "example")
        opt = torch.optim.SGD(rank1.param_groups(model, 2e-4), lr=0.01)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x.cuda(), **{k: v.cuda() for k, v in kw.items()})
            loss = out.float().square().mean() + rank1.kl_divergence(model) / 1000
        loss.backward()
        finite = all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        ok &= finite
        print(f"{type(model).__name__}: bf16 autocast train step, finite grads: {finite}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
