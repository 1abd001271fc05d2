"""Shift benchmark: does each model's per-patient uncertainty flag stays unlike its training ones?

Generates the base synthetic MIMIC-III cohort and each named shift of it
(``features.shifts``: ``second-site``, ``older-sicker``, ``mechanism``) with the same seed,
so a shifted cohort holds the base cohort's patients where the shift does not reach, and
extracts each. Trains rank-1 Gaussian, rank-1 Cauchy, the deterministic twin and a deep
ensemble of 4 on the base cohort with ``pipeline.ehr.train_ehr`` (into a throw-away MLflow
store), and scores, with each model's temperature-scaled member logits (temperature fitted
on the base validation split by ``train_ehr``), by ``pipeline.shift.score_cohorts``:

* the base test split (in distribution) and each shifted cohort: AUROC, mixture NLL, ECE
  against the cohort's own true risk (``pipeline.metrics.ece_against_truth``) and against
  the base formula's risk on the same stays (what a perfect model of the training cohort
  predicts; only ``mechanism`` makes the two differ), the planted risk's own AUROC on the
  same stays for reference, and each model's parameter count;
* for each uncertainty of ``pipeline.uncertainty.decompose`` (total entropy, aleatoric
  entropy, epistemic mutual information, width of the 5-95% member interval) the AUROC with
  which it separates the shifted stays (label 1) from the in-distribution test stays
  (label 0); 0.5 is chance;
* in distribution, Spearman(epistemic, predicted risk): how much the epistemic part says
  that the risk does not (issue 11's target is <= 0.8).

    python bench/shift.py                                  # 3,000 patients, seeds 0 1 2
    python bench/shift.py --patients 400 --steps 100 --seeds 0 --threads 1   # smoke run
    python bench/shift.py --in-dist FEATURES --shifted OTHER --run-id RUN    # own cohorts

Which stays are scored, and why:

* A shifted cohort is scored with the *base* feature folder's normaliser
  (``pipeline.cohorts.load_normalised_as``), never its own: refitting the z-scores on the
  shifted cohort would re-centre a site whose pH reads lower, or a sicker population, onto
  the training cohort and hide the very shift being measured. The grids are stored raw, so
  no normalisation has to be undone.
* Of each shifted cohort only the stays of the base test split's subjects are scored. The
  same seed gives the same subject ids, so these are the in-distribution test patients
  seen through the shift (paired), and none of them was trained on: the shifted versions of
  the training patients would carry their memorised noise (identical inputs for
  ``mechanism``) and make them look *less* unusual than the test stays. The shifted
  cohort's own split cannot be used: ``older-sicker`` has no minors, so its subject set,
  and hence its shuffled split, differs from the base one.
* ``mechanism`` changes only the outcomes: its inputs are the base test stays' exactly, so
  every uncertainty computed from the inputs gives the same value on both sides and a
  detection AUROC of 0.5 by construction. That row is reported as it is, not left out: the
  shift shows only in the AUROC, NLL and ECE against the new true risk.
* The deterministic twin has one forward path: its epistemic part and interval width are 0
  for every stay, so their detection AUROC is 0.5 and Spearman is undefined (NaN).

Training config: ``bench/ehr_synthetic.py``'s ``cpu_config`` (its docstring lists the
departures from the paper's MIMIC recipe: a smaller LSTM, 1,500 steps of 128 rows with Adam
at 3e-3, validation every 100 steps with patience 5). Here, in addition, the Cauchy rank-1
model is evaluated with ``pipeline.recipes.CAUCHY_EVAL_SAMPLES`` (4) Monte Carlo samples per
member, as in the paper's Cauchy rows; the others with 1. Each seed regenerates every
cohort and retrains every model with that seed.

With ``--in-dist FEATURES --shifted FEATURES --run-id RUN`` the benchmark skips generation
and training: it loads the run's model and temperature from the MLflow store named by
``MLFLOW_TRACKING_URI``, checks that ``--in-dist`` is the folder the run trained on, and
scores its test split against *every* stay of ``--shifted`` (a user's cohorts are not
paired), with ``pipeline.shift.compare_cohorts``, the function behind ``rank1
compare-cohorts`` (which also chooses stays by a stays column, e.g. ``dbsource``, and logs
the comparison to MLflow). Without a ``true_risk`` column the ECE against the true risk is
NaN.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from ehr_synthetic import cpu_config  # noqa: E402
from machine import describe  # noqa: E402

from features.mimic.extract import extract
from features.mimic.loader import load_split
from features.synthetic import SHIFT_NAMES, TRUTH_FILE, generate
from pipeline.calibration import TemperatureScaler
from pipeline.cohorts import load_normalised_as
from pipeline.config import TrainConfig
from pipeline.ehr import train_ehr
from pipeline.recipes import CAUCHY_EVAL_SAMPLES
from pipeline.shift import IN_DISTRIBUTION, Cohort, CohortScore, compare_cohorts, true_risk
from pipeline.shift import score_cohorts as score_each
from rank1.models import EHRConfig

#: Benchmark name -> (TrainConfig.method, posterior, Monte Carlo samples per member).
METHODS: dict[str, tuple[str, str, int]] = {
    "rank1-gaussian": ("rank1", "normal", 1),
    "rank1-cauchy": ("rank1", "cauchy", CAUCHY_EVAL_SAMPLES),
    "deterministic": ("deterministic", "normal", 1),
    "ensemble": ("ensemble", "normal", 1),
}


@dataclass(frozen=True)
class ShiftRow(CohortScore):
    """One model on one cohort: a :class:`pipeline.shift.CohortScore` with its run's labels.

    Attributes:
        seed: Seed of cohorts and training; -1 for a mean over seeds.
        method: Key of :data:`METHODS` (or the run id of a user's model).
        parameters: The model's parameter count (all members).
    """

    seed: int
    method: str
    parameters: int


def method_config(name: str, steps: int, lr: float, seed: int) -> TrainConfig:
    """``cpu_config`` with the method, posterior and eval samples of ``METHODS[name]``."""
    method, posterior, samples = METHODS[name]
    base = cpu_config(method, steps, lr, seed).to_dict()
    return TrainConfig.from_dict({**base, "posterior": posterior, "num_eval_samples": samples})


def score_cohorts(
    model: torch.nn.Module,
    scaler: TemperatureScaler,
    config: TrainConfig,
    cohorts: list[Cohort],
    *,
    method: str,
    seed: int,
) -> list[ShiftRow]:
    """One row per cohort (``pipeline.shift.score_cohorts``); ``cohorts[0]`` is in distribution."""
    parameters = sum(p.numel() for p in model.parameters())
    return [
        ShiftRow(seed=seed, method=method, parameters=parameters, **dataclasses.asdict(score))
        for score in score_each(model, scaler, config, cohorts)
    ]


def _base_risk(mimic_dir: Path, stays: pl.DataFrame) -> np.ndarray:
    """The truth file's ``base_risk`` of each stay (only shifted cohorts record it)."""
    truth = pl.read_csv(mimic_dir / TRUTH_FILE).select("icustay_id", "base_risk")
    joined = stays.select("icustay_id").join(
        truth, on="icustay_id", how="left", maintain_order="left"
    )
    return joined["base_risk"].to_numpy()


def synthetic_cohorts(
    work: Path, patients: int, seed: int, shifts: list[str]
) -> tuple[Path, list[Cohort]]:
    """Generate and extract the base cohort and each shift; the cohorts every model scores.

    Returns:
        The base feature folder (to train on) and the cohorts: the base test split first,
        then, per shift, its stays of the base test split's subjects (module docstring).
    """
    base_dir = work / "features-base"
    generate(work / "mimic-base", patients=patients, seed=seed)
    extract(work / "mimic-base", base_dir, seed=seed, progress=False)
    x, y, stays = load_split(base_dir, "test")
    # In the base cohort the true risk is the base formula's.
    cohorts = [Cohort(IN_DISTRIBUTION, x, y, true_risk(stays), true_risk(stays))]
    test_subjects = stays["subject_id"]
    for shift in shifts:
        mimic_dir = work / f"mimic-{shift}"
        generate(mimic_dir, patients=patients, seed=seed, shift=shift)
        extract(mimic_dir, work / f"features-{shift}", seed=seed, progress=False)
        x, y, stays = load_normalised_as(work / f"features-{shift}", base_dir)
        keep = stays["subject_id"].is_in(test_subjects.to_list()).to_numpy()
        rows = torch.from_numpy(np.flatnonzero(keep))
        kept = stays.filter(keep)
        cohorts.append(
            Cohort(shift, x[rows], y[rows], true_risk(kept), _base_risk(mimic_dir, kept))
        )
    return base_dir, cohorts


def train_and_score(
    base_dir: Path,
    config: TrainConfig,
    model_config: EHRConfig,
    cohorts: list[Cohort],
    *,
    label: str,
    seed: int,
    experiment: str,
) -> tuple[Any, TemperatureScaler, list[ShiftRow]]:
    """Train one model on the base feature folder (``train_ehr``) and score every cohort.

    Returns:
        The ``TrainingResult``, its fitted temperature and one row per cohort (``cohorts[0]``
        in distribution), labelled ``label``.
    """
    result = train_ehr(
        base_dir,
        config,
        experiment=experiment,
        model_config=model_config,
        run_name=f"{experiment}-{label}-seed{seed}",
        progress=False,
        # A benchmark measures; its models are no candidates for the registry's champion.
        register_as=None,
    )
    scaler = TemperatureScaler(result.metrics.temperature)
    rows = score_cohorts(result.model, scaler, config, cohorts, method=label, seed=seed)
    return result, scaler, rows


def run_seed(args: argparse.Namespace, seed: int, work: Path) -> list[ShiftRow]:
    """Cohorts, training and scoring of every method for one seed."""
    started = time.perf_counter()
    base_dir, cohorts = synthetic_cohorts(work / f"seed{seed}", args.patients, seed, args.shifts)
    print(
        f"seed {seed}: generate + extract {time.perf_counter() - started:.1f} s; "
        + ", ".join(f"{c.name} {c.y.numel()} stays ({int(c.y.sum())} deaths)" for c in cohorts),
        flush=True,
    )
    model_config = EHRConfig(
        projection_dim=args.projection_dim, rnn_dim=args.rnn_dim, hidden_dim=args.hidden_dim
    )
    rows = []
    for name in args.methods:
        config = method_config(name, args.steps, args.lr, seed)
        t0 = time.perf_counter()
        result, scaler, scored = train_and_score(
            base_dir, config, model_config, cohorts, label=name, seed=seed,
            experiment="bench-shift",
        )  # fmt: skip
        rows += scored
        print(
            f"  {name}: train {result.seconds:.1f} s, best step {result.best_step:.0f}, "
            f"T {scaler.temperature:.3f}, job {time.perf_counter() - t0:.1f} s",
            flush=True,
        )
    return rows


def run_own_cohorts(args: argparse.Namespace) -> list[ShiftRow]:
    """Score a logged run's model on its own test split and on every stay of another folder."""
    comparison = compare_cohorts(args.run_id, args.in_dist, args.shifted)
    return [
        ShiftRow(
            seed=0,
            method=args.run_id,
            parameters=comparison.parameters,
            **dataclasses.asdict(score),
        )
        for score in (comparison.in_distribution, comparison.shifted)
    ]


_TEXT_FIELDS = ("method", "cohort")


def seed_means(rows: list[ShiftRow]) -> list[ShiftRow]:
    """Per (method, cohort), the mean of every number over seeds (NaNs ignored); seed -1."""
    groups: dict[tuple[str, str], list[ShiftRow]] = {}
    for row in rows:
        groups.setdefault((row.method, row.cohort), []).append(row)
    numeric = [f.name for f in dataclasses.fields(ShiftRow) if f.name not in _TEXT_FIELDS]
    means = []
    for (method, cohort), group in groups.items():
        values = {}
        for name in numeric:
            column = np.array([getattr(r, name) for r in group], dtype=np.float64)
            finite = column[np.isfinite(column)]
            values[name] = float(finite.mean()) if finite.size else math.nan
        for name in ("parameters", "stays", "deaths"):
            values[name] = round(values[name])
        means.append(ShiftRow(**{**values, "seed": -1, "method": method, "cohort": cohort}))
    return means


#: The two printed tables: (title, ShiftRow fields).
TABLES = (
    (
        "Predictions (calibrated; ECE against the cohort's true risk and against the base "
        "formula's risk)",
        (
            "parameters",
            "stays",
            "deaths",
            "auroc",
            "planted_auroc",
            "nll",
            "ece_true_risk",
            "ece_base_risk",
        ),
    ),
    (
        "Shift detection: AUROC of each uncertainty, shifted vs in-distribution test stays; "
        "Spearman(epistemic, risk) in the last column",
        (
            "detect_total",
            "detect_aleatoric",
            "detect_epistemic",
            "detect_interval",
            "spearman_epistemic_risk",
        ),
    ),
)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def markdown_table(rows: list[ShiftRow], columns: tuple[str, ...]) -> str:
    """Rows as a markdown table: seed, method, cohort, then ``columns``."""
    header = ("seed", "method", "cohort", *columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = ["mean" if row.seed < 0 else str(row.seed), row.method, row.cohort]
        cells += [_cell(getattr(row, name)) for name in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=3000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--shifts", nargs="+", choices=SHIFT_NAMES, default=list(SHIFT_NAMES))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--rnn-dim", type=int, default=64)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--projection-dim", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="Folder for data and store.")
    own = parser.add_argument_group("own cohorts (instead of synthetic ones)")
    own.add_argument("--in-dist", type=Path, help="Feature folder the run trained on.")
    own.add_argument("--shifted", type=Path, help="Feature folder to compare with.")
    own.add_argument("--run-id", help="A run of pipeline.ehr.train_ehr in MLFLOW_TRACKING_URI.")
    args = parser.parse_args()
    own_cohorts = (args.in_dist, args.shifted, args.run_id)
    if any(v is not None for v in own_cohorts) and None in own_cohorts:
        parser.error("--in-dist, --shifted and --run-id go together")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {describe()}")

    started = time.perf_counter()
    if args.run_id is not None:
        try:
            rows = run_own_cohorts(args)
        except (ValueError, RuntimeError) as err:  # a bad folder or run: one line
            parser.exit(2, f"{parser.prog}: error: {err}\n")
    else:
        work = args.work or Path(tempfile.mkdtemp(prefix="bench_shift_"))
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(work / 'mlflow.db').resolve()}"
        rows = [row for seed in args.seeds for row in run_seed(args, seed, work)]
    print(f"total {time.perf_counter() - started:.1f} s")
    shown = rows + (seed_means(rows) if len(args.seeds) > 1 and args.run_id is None else [])
    for title, columns in TABLES:
        print(f"\n{title}\n\n{markdown_table(shown, columns)}")


if __name__ == "__main__":
    main()
