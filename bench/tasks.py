"""Benchmark: the three whole-stay tasks on a synthetic cohort, against the planted truth.

Generates one synthetic MIMIC-III cohort (``features.synthetic``, which plants ICU death
times with a pre-death deterioration, a severity-driven length of stay and 25 phenotype
probabilities), extracts decompensation, length of stay and phenotyping from it in one pass
(``features.mimic.extract.extract_all``), then trains the rank-1 LSTM, its deterministic
twin and a deep ensemble on each task with ``pipeline.tasks.train_task`` (into a throw-away
MLflow store), for several training seeds. Per task, method and seed it records the
benchmark's metrics on the test split (decompensation AUROC/AUPRC, length-of-stay kappa
and MAD, phenotyping macro/micro AUROC) beside the calibrated NLL and ECE, what referring
the 20% most uncertain samples gains in retained NLL over random referral
(``test_referral_gain_80``; epistemic ranking, total for the deterministic model), and the same
numbers of the *planted* reference on the same test samples:

- decompensation: the generator's hourly risk of death within 24 h (``true_decomp_risk``,
  the oracle given the planted onset); also the ECE of the calibrated model against it;
- phenotyping: the planted probability of each label (``true_pheno_k``); also the mean
  absolute gap between the calibrated model's probabilities and the planted ones;
- length of stay: on the long stays with a planted scale (remaining stay ``max(48.5 - t,
  0) + E * scale``, ``E ~ Exp(1)``; see ``features/synthetic.py``), the bucket
  distribution that follows from it, its most likely bucket (kappa) and the benchmark's
  bucket-mean estimate (MAD); the model is scored on the same subset.

CPU-sized config (as ``bench/ehr_synthetic.py``, smaller still because a batch is whole
stays): rnn 32, hidden 32, projection 16; K=4; Adam 3e-3; ``--steps`` steps of 16 stays.

    .venv/bin/python bench/tasks.py --patients 1500 --steps 300 --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from machine import describe
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from features.mimic.extract import extract_all
from features.mimic.loader import load_task_split as load_split
from features.synthetic import generate
from pipeline.config import OptimConfig, ScheduleConfig, TrainConfig
from pipeline.metrics import ece_against_truth, mixture_probs
from pipeline.tasks import (
    LOS_BUCKET_MEAN_HOURS,
    fit_scaler,
    predict_task,
    task_data,
    task_spec,
    train_task,
)
from rank1.models import EHRConfig

TASKS = ("decompensation", "length-of-stay", "phenotyping")
METHODS = ("rank1", "deterministic", "ensemble")
MODEL = EHRConfig(projection_dim=16, rnn_dim=32, hidden_dim=32)
#: Edges of the length-of-stay buckets in hours (the benchmark's days x 24).
_EDGES_H = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 14, np.inf]) * 24.0
_LONG_STAY_MIN_H = 48.5


def config(method: str, steps: int, seed: int) -> TrainConfig:
    """The CPU-sized training config of the module docstring."""
    return TrainConfig(
        method=method,
        batch_size=16,
        optim=OptimConfig(lr=3e-3),
        schedule=ScheduleConfig(length=steps, kl_anneal=steps // 2),
        seed=seed,
        device="cpu",
        eval_every=max(steps // 10, 1),
        checkpoint_every=0,
        patience=5,
        num_eval_samples=1,
    )


def _split_samples(folder: Path, split: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The split's stays and its samples in the loader's order (with the planted columns)."""
    stays = pl.read_parquet(folder / "stays.parquet").filter(pl.col("split") == split)
    samples = pl.read_parquet(folder / "samples.parquet")
    index = stays.select("icustay_id").with_row_index("stay")
    return stays, samples.join(index, on="icustay_id", how="inner", maintain_order="left")


def _los_oracle(folder: Path, samples: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Planted bucket distributions of the samples of long stays with a known scale."""
    # The scale is not a true_* column of the folder: read it from the generator's file.
    truth = pl.read_csv(folder.parents[1] / "mimic" / "synthetic_truth.csv")
    scale = samples.join(
        truth.select("icustay_id", pl.col("los_scale_hours").cast(pl.Float64)),
        on="icustay_id",
        how="left",
        maintain_order="left",
    )["los_scale_hours"].to_numpy()
    known = np.isfinite(scale) & (scale > 0)
    hours = samples["hour"].to_numpy()[known].astype(np.float64)
    shift = np.maximum(_LONG_STAY_MIN_H - hours, 0.0)[:, None]
    # P(a <= shift + E * scale < b) for E ~ Exp(1), per bucket [a, b).
    low = np.clip((_EDGES_H[None, :-1] - shift) / scale[known][:, None], 0.0, None)
    high = np.clip((_EDGES_H[None, 1:] - shift) / scale[known][:, None], 0.0, None)
    return np.exp(-low) - np.exp(-high), known


def planted(task: str, folder: Path, probs: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """The planted reference's metrics on the test split, and the model's against it."""
    stays, samples = _split_samples(folder, "test")
    if task == "decompensation":
        truth = samples["true_decomp_risk"].to_numpy()
        return {
            "planted_auroc": float(roc_auc_score(target, truth)),
            "ece_vs_planted": float(ece_against_truth(probs, truth)),
        }
    if task == "phenotyping":
        truth = stays.select([f"true_pheno_{k}" for k in range(25)]).to_numpy()
        usable = [k for k in range(25) if 0 < target[:, k].sum() < len(target)]
        return {
            "planted_macro_auroc": float(
                np.mean([roc_auc_score(target[:, k], truth[:, k]) for k in usable])
            ),
            "mean_abs_gap_vs_planted": float(np.abs(probs - truth).mean()),
        }
    oracle, known = _los_oracle(folder, samples)
    remaining = samples["remaining_hours"].to_numpy()[known]
    true_bucket = target[known]
    means = np.asarray(LOS_BUCKET_MEAN_HOURS)

    def scores(dist: np.ndarray) -> tuple[float, float]:
        bucket = dist.argmax(axis=1)
        kappa = cohen_kappa_score(true_bucket, bucket, weights="linear", labels=list(range(10)))
        return float(kappa), float(np.abs(means[bucket] - remaining).mean())

    oracle_kappa, oracle_mad = scores(oracle)
    model_kappa, model_mad = scores(probs[known])
    return {
        "long_stay_samples": int(known.sum()),
        "planted_kappa": oracle_kappa,
        "planted_mad": oracle_mad,
        "model_kappa_on_long": model_kappa,
        "model_mad_on_long": model_mad,
    }


def run_one(task: str, method: str, seed: int, folder: Path, steps: int) -> dict[str, float]:
    """Train one model, evaluate it and compare it with the planted truth."""
    spec = task_spec(task)
    splits = {name: task_data(load_split(folder, name)) for name in ("train", "val", "test")}
    cfg = config(method, steps, seed)
    start = time.perf_counter()
    result = train_task(
        task,
        splits["train"],
        splits["val"],
        splits["test"],
        cfg,
        experiment=f"bench-{task}",
        model_config=MODEL,
        progress=False,
    )
    seconds = time.perf_counter() - start
    device = torch.device("cpu")
    val_logits, val_y = predict_task(result.model, spec, splits["val"], cfg, device)
    test_logits, test_y = predict_task(result.model, spec, splits["test"], cfg, device)
    calibrated = fit_scaler(spec, val_logits, val_y).apply(test_logits)
    logits = np.asarray(calibrated, dtype=np.float64)
    # The mixture over paths: of the 10 buckets' softmax, or of each Bernoulli's sigmoid.
    if task == "length-of-stay":
        probs = mixture_probs(logits)
    else:
        probs = (1.0 / (1.0 + np.exp(-logits))).mean(axis=0)
    metrics = {k: v for k, v in vars(result.metrics).items() if v is not None}
    return {"seconds": seconds, **metrics, **planted(task, folder, probs, np.asarray(test_y))}


#: The columns of each task's table (everything else is in the JSON lines and --out).
COLUMNS = {
    "decompensation": ("test_auroc", "test_auprc", "planted_auroc", "test_calibrated_nll",
                       "test_calibrated_ece", "ece_vs_planted", "test_mean_epistemic",
                       "test_referral_gain_80", "seconds"),
    "length-of-stay": ("test_kappa", "test_mad", "model_kappa_on_long", "planted_kappa",
                       "model_mad_on_long", "planted_mad", "test_calibrated_nll",
                       "test_calibrated_ece", "test_mean_epistemic", "test_referral_gain_80",
                       "seconds"),
    "phenotyping": ("test_macro_auroc", "test_micro_auroc", "planted_macro_auroc",
                    "mean_abs_gap_vs_planted", "test_calibrated_nll", "test_calibrated_ece",
                    "test_mean_epistemic", "test_referral_gain_80", "seconds"),
}  # fmt: skip


def _table(results: list[dict]) -> str:
    lines = []
    for task in TASKS:
        rows = [r for r in results if r["task"] == task]
        if not rows:
            continue
        shown = COLUMNS[task]
        lines.append(f"\n{task} (mean ± sd over seeds)\n")
        lines.append("| method | " + " | ".join(shown) + " |")
        lines.append("|---|" + "---:|" * len(shown))
        for method in METHODS:
            mine = [r for r in rows if r["method"] == method]
            if not mine:
                continue
            cells = []
            for key in shown:
                values = np.array([r[key] for r in mine if key in r], dtype=float)
                cells.append(
                    f"{values.mean():.3f} ± {values.std(ddof=0):.3f}" if len(values) else ""
                )
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="rank1-bench-tasks-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    print(describe(), f"torch threads {args.threads}")
    tasks = tuple(args.tasks.split(","))
    if not (work / "features").exists():
        generate(work / "mimic", patients=args.patients, seed=0)
        manifests = extract_all(work / "mimic", work / "features", tasks=tasks, progress=False)
        for task, manifest in manifests.items():
            print(f"{task}: {manifest.stays} stays, {manifest.samples} samples")
    results = []
    for task in tasks:
        for seed in (int(s) for s in args.seeds.split(",")):
            for method in args.methods.split(","):
                row = run_one(task, method, seed, work / "features" / task, args.steps)
                results.append({"task": task, "method": method, "seed": seed, **row})
                print(json.dumps(results[-1]), flush=True)
    print(_table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
