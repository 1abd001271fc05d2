"""Benchmark: scoring 10,000 new ICU stays from raw tables with a registered model.

Issue 12's target: ``pipeline.scoring.score_mimic`` on an export of at least 10,000 stays
takes under a minute on 2 cores, from raw tables to the written report and the logged
MLflow run. The script

1. generates a synthetic training cohort, extracts it and trains the rank-1 LSTM at the
   paper's EHR sizes (``rank1.models.EHRConfig`` defaults: projection 32, LSTM 256, hidden
   128, K = 4) for a few steps (scoring time does not depend on how well it trained), and
   registers it as ``bench-score-rank1`` with the champion alias, in a throw-away store;
2. generates a second synthetic export of new patients, large enough for the number of
   stays asked (about 0.7 scored stays per patient), with the death columns dropped as a
   live export would have them;
3. times, each in a fresh subprocess (its own wall time and peak resident memory,
   ``VmHWM``): the scoring-mode extraction alone, then the whole ``score_mimic``.

    .venv/bin/python bench/score.py                    # 10,000+ stays, 2 torch threads
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import describe

MODEL = "bench-score-rank1"
#: Scored stays per generated patient (the generator's cohort after the 48-hour rule).
STAYS_PER_PATIENT = 0.70

CHILD = """
import json, sys, time
started = time.perf_counter()
mode, export, out, threads, uri = sys.argv[1:6]
import torch
torch.set_num_threads(int(threads))
if mode == "extract":
    from features.mimic.extract import extract_for_scoring
    manifest = extract_for_scoring(export, out, progress=False)
    stays = manifest.stays
else:
    from pipeline.scoring import score_mimic
    result = score_mimic(uri, out, mimic_dir=export, progress=False)
    stays = result.cohort.stays
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"stays": stays, "seconds": time.perf_counter() - started,
                  "peak_mib": peak / 1024}))
"""


def prepare(work: Path, train_patients: int, patients: int, seed: int) -> Path:
    """Train and register the model; write the export to score. Returns the export."""
    import polars as pl

    from features.mimic.extract import extract
    from features.synthetic import generate
    from pipeline import tracking
    from pipeline.config import ScheduleConfig, TrainConfig
    from pipeline.ehr import train_ehr

    generate(work / "train-tables", patients=train_patients, seed=seed)
    extract(work / "train-tables", work / "features", seed=seed, progress=False)
    config = TrainConfig(schedule=ScheduleConfig(length=20, kl_anneal=10), eval_every=10,
                         checkpoint_every=0, device="cpu")  # fmt: skip
    result = train_ehr(
        work / "features", config, experiment="bench-score", register_as=MODEL, progress=False
    )
    tracking.promote(MODEL, result.registered.version)
    export = work / "export"
    started = time.perf_counter()
    generate(export, patients=patients, seed=seed + 1)
    for table, column in (("ADMISSIONS", "DEATHTIME"), ("PATIENTS", "DOD")):
        path = export / f"{table}.csv"
        pl.read_csv(path, infer_schema=False).drop(column).write_csv(path)
    (export / "synthetic_truth.csv").unlink()
    print(f"export of {patients} patients written in {time.perf_counter() - started:.1f} s")
    return export


def run_child(mode: str, export: Path, out: Path, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(export), str(out), str(threads),
         f"models:/{MODEL}@champion"],
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stays", type=int, default=10_000, help="Stays to score (at least).")
    parser.add_argument("--train-patients", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    print(describe())
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_score_"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    patients = int(args.stays / STAYS_PER_PATIENT) + 1
    export = prepare(work, args.train_patients, patients, args.seed)
    extraction = run_child("extract", export, work / "scoring-features", args.threads)
    scoring = run_child("score", export, work / "report", args.threads)
    print("| step | stays | seconds | peak MiB |\n|---|---|---|---|")
    for name, row in (("extraction alone", extraction), ("score_mimic, end to end", scoring)):
        print(f"| {name} | {row['stays']} | {row['seconds']:.1f} | {row['peak_mib']:.0f} |")
    verdict = "met" if scoring["stays"] >= args.stays and scoring["seconds"] < 60 else "missed"
    print(f"target (>= {args.stays} stays in under 60 s): {verdict}")


if __name__ == "__main__":
    main()
