"""Deterministic vs rank-1 (K=4) vs deep ensemble (4) on the built-in digits, end to end.

Each method is trained with ``pipeline.images.train_images`` (preset ``cnn-digits``) and
evaluated with ``validate_images`` on the clean test set and every generated corruption at
every severity, logging to an MLflow store (a temporary one unless ``--tracking-uri``).
Prints a markdown table of clean and corrupted accuracy / NLL / ECE (corrupted = spec
section 7: mean over corruptions per severity, then over severities), parameter counts and
training time, followed by the machine and the target checks.

    .venv/bin/python bench/digits.py            # about 4 minutes on 2 shared cores

torch runs on one thread by default (``--threads``): on a shared 2-core machine two
threads spin against other processes and a small CNN step gets 10-50x slower.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from machine import describe  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=None, help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-samples", type=int, default=None, help="rank-1 MC samples")
    parser.add_argument("--prior-stddev", type=float, default=None)
    parser.add_argument("--corruptions", default=None, help="comma-separated (default: all)")
    parser.add_argument("--severities", default="1,2,3,4,5")
    parser.add_argument("--tracking-uri", default=None, help="default: a temporary store")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="bench-digits-")
    os.environ["MLFLOW_TRACKING_URI"] = args.tracking_uri or f"sqlite:///{tmp.name}/mlflow.db"
    os.chdir(tmp.name)  # MLflow may write helper files into the working directory

    from features.images.corruptions import available_corruptions
    from pipeline.images import image_preset, train_images, validate_images

    corruptions = (
        list(available_corruptions()) if args.corruptions is None else args.corruptions.split(",")
    )
    severities = [int(s) for s in args.severities.split(",")]
    methods = [
        ("deterministic", dict(method="deterministic")),
        ("rank-1 (K=4)", dict(method="rank1", num_eval_samples=args.eval_samples)),
        ("deep ensemble (4)", dict(method="ensemble")),
    ]
    rows = {}
    for label, overrides in methods:
        job = image_preset(
            "cnn-digits",
            epochs=args.epochs,
            seed=args.seed,
            prior_stddev=args.prior_stddev,
            experiment="bench-digits",
            **overrides,
        )
        started = time.perf_counter()
        result = train_images(job, run_name=label.split()[0], progress=False)
        trained = time.perf_counter() - started
        metrics = validate_images(result.run_id, corruptions, severities, device="cpu")
        evaluated = time.perf_counter() - started - trained
        rows[label] = {**result.rows(), **metrics, "train_s": trained, "eval_s": evaluated}
        print(f"{label}: trained in {trained:.0f} s, evaluated in {evaluated:.0f} s", flush=True)

    print()
    print(
        f"Clean: the digits test split; corrupted: {len(corruptions)} corruptions x severities "
        f"{','.join(map(str, severities))} (mean over corruptions per severity, then over "
        "severities)."
    )
    print()
    print(
        "| method | params | clean acc | clean NLL | clean ECE | corrupt acc | corrupt NLL "
        "| corrupt ECE | train s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, r in rows.items():
        print(
            f"| {label} | {int(r['num_params']):,} | {r['clean/accuracy']:.3f} "
            f"| {r['clean/nll']:.3f} | {r['clean/ece']:.3f} | {r['corrupt/mean/accuracy']:.3f} "
            f"| {r['corrupt/mean/nll']:.3f} | {r['corrupt/mean/ece']:.3f} | {r['train_s']:.0f} |"
        )
    det, r1, ens = rows["deterministic"], rows["rank-1 (K=4)"], rows["deep ensemble (4)"]
    print()
    print(f"Machine: {describe()}; torch threads {args.threads}.")
    print()
    print("Targets:")
    checks = [
        (
            "rank-1 corrupted NLL < deterministic",
            r1["corrupt/mean/nll"] < det["corrupt/mean/nll"],
            f"{r1['corrupt/mean/nll']:.3f} vs {det['corrupt/mean/nll']:.3f}",
        ),
        (
            "rank-1 corrupted ECE < deterministic",
            r1["corrupt/mean/ece"] < det["corrupt/mean/ece"],
            f"{r1['corrupt/mean/ece']:.3f} vs {det['corrupt/mean/ece']:.3f}",
        ),
        (
            "rank-1 corrupted NLL within 10% of the deep ensemble",
            r1["corrupt/mean/nll"] <= 1.10 * ens["corrupt/mean/nll"],
            f"{r1['corrupt/mean/nll'] / ens['corrupt/mean/nll'] - 1:+.1%}",
        ),
        (
            "rank-1 parameters about a quarter of the ensemble's",
            r1["num_params"] <= 0.3 * ens["num_params"],
            f"{r1['num_params'] / ens['num_params']:.2f}x",
        ),
    ]
    for name, ok, detail in checks:
        print(f"- {'met' if ok else 'NOT met'}: {name} ({detail})")


if __name__ == "__main__":
    main()
