"""Referral on a synthetic cohort: does the default ranking beat random referral?

Generates a synthetic MIMIC-III cohort (``features.synthetic``), extracts it
(``features.mimic``), trains the rank-1 LSTM with ``pipeline.ehr.train_ehr`` and the CPU
config of ``bench/ehr_synthetic.py`` (into a throw-away MLflow store), and on the test stays
(calibrated logits, S samples per member) prints, per seed:

* Spearman(epistemic, risk) and Spearman(total, risk): how much the ranking says beyond
  the risk (total entropy is a monotone function of |risk - 0.5|, so below 0.5 it is 1.0);
* the retained stays' NLL at each coverage for the default ranking (epistemic), total
  entropy, random referral (mean of 100 seeded orders) and the oracle (largest per-stay NLL
  first; uses the labels), and whether each ranking beats random at every coverage 50-95%.

    python bench/referral.py                           # 1,500 patients, 600 steps, seed 0
    python bench/referral.py --seeds 0 1 2 --samples 1 4

Retained NLL rewards referring high-risk stays whatever the ranking (their expected loss is
their entropy), so compare the epistemic row with the total-entropy row, not only with
random: a ranking that carried nothing beyond the risk would match the total-entropy row.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ehr_synthetic import cpu_config  # noqa: E402
from scipy.stats import spearmanr

from features.mimic.extract import extract
from features.mimic.loader import load_split
from features.synthetic import generate
from pipeline import tracking
from pipeline.calibration import TemperatureScaler
from pipeline.config import TrainConfig
from pipeline.ehr import CALIBRATION_FILE, train_ehr
from pipeline.predict import predict_logits
from pipeline.uncertainty import ReferralCurve, decompose, referral_curve
from rank1.models import EHRConfig

PAID_BAND = (0.5, 0.95)  # coverages at which the default ranking must beat random


def beats_random(curve: ReferralCurve) -> bool:
    """Whether the ranking's retained NLL is below random's at every coverage in the band."""
    band = (curve.coverages >= PAID_BAND[0]) & (curve.coverages <= PAID_BAND[1] + 1e-9)
    return bool(np.all(curve.ranked.nll[band] < curve.random.nll[band]))


def train(work: Path, seed: int, patients: int, steps: int) -> tuple[str, torch.nn.Module]:
    """Generate, extract and train rank-1 on one seed; the run id and the model."""
    generate(work / "mimic", patients=patients, seed=seed)
    manifest = extract(work / "mimic", work / "features", seed=seed, progress=False)
    print(
        f"seed {seed}: "
        + ", ".join(f"{k} {v.stays} ({v.positives} deaths)" for k, v in manifest.split.counts)
    )
    result = train_ehr(
        work / "features",
        cpu_config("rank1", steps, 3e-3, seed),
        experiment="bench-referral",
        model_config=EHRConfig(projection_dim=16, rnn_dim=64, hidden_dim=64),
        run_name=f"bench-referral-{seed}",
        progress=False,
        # A benchmark measures; its models are no candidates for the registry's champion.
        register_as=None,
    )
    return result.run_id, result.model


def report(logits: torch.Tensor, labels: torch.Tensor, samples: int) -> None:
    """Print the Spearman correlations and the retained-NLL table of one set of logits."""
    unc = decompose(logits)
    by_default = referral_curve(logits, labels, report_coverage=0.8)
    by_total = referral_curve(logits, labels, by="total", report_coverage=0.8)
    print(
        f"  S={samples} ({unc.n_paths} paths, default ranking {unc.ranking}): "
        f"Spearman(epistemic, risk) {spearmanr(unc.epistemic, unc.probs).statistic:.3f}, "
        f"Spearman(total, risk) {spearmanr(unc.total, unc.probs).statistic:.3f}; "
        f"median epistemic share of total {np.median(unc.epistemic / unc.total):.4f}"
    )
    print("  | coverage | " + " | ".join(f"{c:.2f}" for c in by_default.coverages) + " |")
    print("  |" + "---|" * (1 + by_default.coverages.size))
    rows = (
        (f"{by_default.by} NLL", by_default.ranked.nll),
        ("total NLL", by_total.ranked.nll),
        ("random NLL", by_default.random.nll),
        ("oracle NLL", by_default.oracle.nll),
    )
    for name, values in rows:
        print(f"  | {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    print(
        f"  beats random at every coverage 50-95%: {by_default.by} {beats_random(by_default)}, "
        f"total {beats_random(by_total)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[1], help="S per member.")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None, help="Folder for data and store.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work_root = args.work or Path(tempfile.mkdtemp(prefix="bench_referral_"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(work_root / 'mlflow.db').resolve()}"
    started = time.perf_counter()
    for seed in args.seeds:
        work = work_root / f"seed{seed}"
        run_id, model = train(work, seed, args.patients, args.steps)
        scaler = TemperatureScaler.from_dict(tracking.load_dict(run_id, CALIBRATION_FILE))
        x, y, _ = load_split(work / "features", "test")
        for samples in args.samples:
            config = TrainConfig(num_eval_samples=samples, device="cpu", bf16=False)
            logits = scaler.apply(predict_logits(model, x, config, torch.device("cpu")))
            report(logits, y, samples)
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
