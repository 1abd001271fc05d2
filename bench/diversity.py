"""Posterior diversity: which setting of the paper's method makes rank-1 members disagree?

Issue 11, deliverable 2. On the synthetic cohort the rank-1 EHR LSTM's members agree so
closely that the epistemic part (mutual information between the prediction and the member)
is a tiny share of the total uncertainty. This script trains rank-1 variants, each changing
settings the paper's method leaves open, on one base synthetic cohort and scores each on
the in-distribution test stays and on the input shifts ``second-site`` and ``older-sicker``
(``mechanism`` changes only outcomes, so no input-based uncertainty can detect it; see
``bench/shift.py``). Per variant it prints:

* ``share``: the median, over in-distribution test stays, of epistemic / total entropy;
* ``spearman``: Spearman(epistemic, predicted risk) in distribution (issue target <= 0.8);
* ``detect <shift>``: the AUROC with which the epistemic part separates the shifted stays
  from the in-distribution ones (target >= 0.80, within 0.03 of the deep ensemble);
* ``gap``: planted-risk AUROC minus the model's AUROC in distribution (target <= 0.015
  seed-averaged) and ``ece``: calibrated ECE against the true risk (target <= 0.025);
* ``scale`` and ``spread``: the trained factors' mean posterior stddev and the mean, over
  factor entries, of the stddev of the K members' posterior means -- the two sources of
  path disagreement (within a member and between members);
* ``best step`` (validation-NLL model selection) and ``train s``.

The settings (each flag takes one or more values; the first is the baseline):

* ``--prior-stddev``: the N(1, s^2) prior of every factor (the MIMIC flag default is 1.0;
  CIFAR uses 0.1, ImageNet 0.05; spec 1.5);
* ``--random-sign-init``: factor-mean init, ``v > 0`` random +-1 signs (+1 w.p. v; MIMIC
  0.5), ``v < 0`` N(1, v^2) (``-0.5`` is the spec 1.4 alternative);
* ``--dropout-rate``: sets the initial posterior stddev sqrt(p / (1 - p)) (1e-3 -> 0.03);
* ``--num-eval-samples``: Monte Carlo passes per member at evaluation (S);
* ``--patience``: early stopping on validation NLL (evaluations without improvement;
  0 = train the full length and still keep the best-NLL checkpoint);
* ``--eval-every``: validation (model selection) every this many steps; 0 = only at the
  end, i.e. no checkpoint selection: the final weights are scored;
* ``--ensemble-size``: K;
* ``--kl-scale``: the KL weight once annealed (``ScheduleConfig.kl_scale``; 1 in the
  spec): below 1 the KL pulls the factors onto the prior less strongly.

By default the variants are the first values of every flag plus each other value of each
flag changed alone (one factor at a time); ``--grid`` trains every combination instead. A
variant is named by where it departs from the benchmark's settings (``REFERENCE``).
``--with-ensemble`` adds the deep ensemble of 4 as the reference for the "within 0.03"
target. The KL is the paper's (summed over members, divided by N_train, annealed over the
first half; ``pipeline.objective``); ``--kl-scale`` multiplies its weight.

Cohorts, training config and scoring are ``bench/shift.py``'s (``synthetic_cohorts``,
``method_config`` on ``bench/ehr_synthetic.py``'s ``cpu_config``, ``score_cohorts``); the
cohort is generated once per seed and every variant trains on it with the same seed.

    python bench/diversity.py --patients 1500 --steps 800 --seeds 0 --threads 1 \\
        --prior-stddev 1 0.3 0.1 --num-eval-samples 1 4 --random-sign-init 0.5 -0.5
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from machine import describe  # noqa: E402
from shift import (  # noqa: E402
    Cohort,
    method_config,
    synthetic_cohorts,
    train_and_score,
)

import rank1
from pipeline.shift import calibrated_logits, decomposed
from rank1.models import EHRConfig

#: The shifts that change the inputs (``mechanism`` is undetectable by construction).
INPUT_SHIFTS = ("second-site", "older-sicker")
#: Variant settings, in flag order: name -> the config that holds it (TrainConfig, its
#: ScheduleConfig, or the model's Rank1Config).
SETTINGS = {
    "prior_stddev": "rank1",
    "random_sign_init": "rank1",
    "dropout_rate": "rank1",
    "num_eval_samples": "train",
    "patience": "train",
    "eval_every": "train",
    "ensemble_size": "train",
    "kl_scale": "schedule",
}
#: The benchmark's values of :data:`SETTINGS` (``cpu_config`` and ``_mimic_rank1``): a
#: variant is named by the settings where it departs from these.
REFERENCE = {
    "prior_stddev": 1.0,
    "random_sign_init": 0.5,
    "dropout_rate": 1e-3,
    "num_eval_samples": 1,
    "patience": 5,
    "eval_every": 100,
    "ensemble_size": 4,
    "kl_scale": 1.0,
}


@dataclass(frozen=True)
class Variant:
    """One combination of the settings of :data:`SETTINGS`.

    Attributes:
        values: Setting name -> value, for every name of :data:`SETTINGS`.
        changed: The names whose value differs from :data:`REFERENCE` (empty: the
            benchmark's own settings).
    """

    values: dict[str, float]
    changed: tuple[str, ...]

    @property
    def name(self) -> str:
        """``baseline`` (the benchmark's settings) or ``name=value`` of each departure."""
        if not self.changed:
            return "baseline"
        return ", ".join(f"{n}={self.values[n]:g}" for n in self.changed)


@dataclass(frozen=True)
class DiversityRow:
    """One variant on one seed (NaN where undefined).

    Attributes:
        seed: Seed of cohort and training; -1 for a mean over seeds.
        variant: :attr:`Variant.name` (or ``deep-ensemble``).
        share: Median epistemic / total entropy over the in-distribution test stays.
        spearman: Spearman(epistemic, predicted risk) in distribution.
        detect: Shift name -> epistemic detection AUROC.
        gap: Planted AUROC minus the model's AUROC in distribution.
        ece: Calibrated ECE against the true risk in distribution.
        scale: Mean posterior stddev of the trained factors.
        spread: Mean stddev over the K members of each factor entry's posterior mean.
        best_step: Step of the best validation NLL.
        seconds: Training wall time.
    """

    seed: int
    variant: str
    share: float
    spearman: float
    detect: dict[str, float]
    gap: float
    ece: float
    scale: float
    spread: float
    best_step: float
    seconds: float


def variants(grid: dict[str, list[float]], full: bool) -> list[Variant]:
    """The baseline and the variants to train.

    Args:
        grid: Setting name -> values, the first being the baseline's.
        full: Every combination (True) or one setting changed at a time (False).

    Returns:
        The variants, baseline first, without duplicates.
    """
    base = {name: values[0] for name, values in grid.items()}
    if full:
        combos = [dict(zip(grid, c, strict=True)) for c in itertools.product(*grid.values())]
    else:
        combos = [base] + [
            {**base, name: value} for name, values in grid.items() for value in values[1:]
        ]
    out, seen = [], set()
    for values in combos:
        key = tuple(values.values())
        if key in seen:
            continue
        seen.add(key)
        changed = tuple(n for n in grid if values[n] != REFERENCE[n])
        out.append(Variant(values, changed))
    return out


def epistemic_share(logits: np.ndarray) -> float:
    """Median over stays of epistemic / total entropy (stays of zero entropy skipped)."""
    u = decomposed(logits)
    keep = u.total > 0
    return float(np.median(u.epistemic[keep] / u.total[keep])) if keep.any() else math.nan


def factor_statistics(model: torch.nn.Module) -> tuple[float, float]:
    """(mean posterior stddev, mean between-member stddev of the means) over every factor.

    Both are weighted by entries, so the LSTM's wide gate factors count for what they are.
    A deterministic model (or a deep ensemble, whose members have no factors) gives NaN.
    """
    scales, spreads = [], []
    for factor in rank1.rank1_factors(model):
        with torch.no_grad():
            scales.append(factor.scale.flatten())
            if factor.ensemble_size > 1:
                spreads.append(factor.loc.std(dim=0).flatten())
    scale = float(torch.cat(scales).mean()) if scales else math.nan
    spread = float(torch.cat(spreads).mean()) if spreads else math.nan
    return scale, spread


def train_variant(
    args: argparse.Namespace,
    base_dir: Path,
    cohorts: list[Cohort],
    seed: int,
    *,
    method: str,
    label: str,
    train_changes: dict[str, int],
    rank1_changes: dict[str, float],
    schedule_changes: dict[str, float],
) -> DiversityRow:
    """Train one model on the base folder and score it on the cohorts."""
    config = method_config(
        "ensemble" if method == "ensemble" else "rank1-gaussian", args.steps, args.lr, seed
    )
    config = config.replace(**train_changes)
    if schedule_changes:
        config = config.replace(schedule=config.schedule.replace(**schedule_changes))
    base = EHRConfig(
        projection_dim=args.projection_dim, rnn_dim=args.rnn_dim, hidden_dim=args.hidden_dim
    )
    model_config = dataclasses.replace(base, rank1=dataclasses.replace(base.rank1, **rank1_changes))
    result, scaler, rows = train_and_score(
        base_dir, config, model_config, cohorts, label=label, seed=seed,
        experiment="bench-diversity",
    )  # fmt: skip
    in_dist = rows[0]
    share = epistemic_share(calibrated_logits(result.model, scaler, config, cohorts[0].x))
    scale, spread = factor_statistics(result.model)
    return DiversityRow(
        seed=seed,
        variant=label,
        share=share,
        spearman=in_dist.spearman_epistemic_risk,
        detect={r.cohort: r.detect_epistemic for r in rows[1:]},
        gap=in_dist.planted_auroc - in_dist.auroc,
        ece=in_dist.ece_true_risk,
        scale=scale,
        spread=spread,
        best_step=result.best_step,
        seconds=result.seconds,
    )


def run_seed(
    args: argparse.Namespace, seed: int, work: Path, todo: list[Variant]
) -> list[DiversityRow]:
    """One cohort, then every variant (and the deep ensemble if asked) trained on it."""
    started = time.perf_counter()
    base_dir, cohorts = synthetic_cohorts(work / f"seed{seed}", args.patients, seed, args.shifts)
    print(
        f"seed {seed}: generate + extract {time.perf_counter() - started:.1f} s; "
        + ", ".join(f"{c.name} {c.y.numel()} stays ({int(c.y.sum())} deaths)" for c in cohorts),
        flush=True,
    )
    rows = []
    jobs = [("rank1", v.name, v) for v in todo]
    if args.with_ensemble:
        jobs.append(("ensemble", "deep-ensemble", None))
    for method, label, variant in jobs:
        values = variant.values if variant is not None else {}
        # K lives in TrainConfig (model_config_for copies it into the factors' config).
        train_changes = {n: int(v) for n, v in values.items() if SETTINGS[n] == "train"}
        rank1_changes = {n: float(v) for n, v in values.items() if SETTINGS[n] == "rank1"}
        schedule_changes = {n: float(v) for n, v in values.items() if SETTINGS[n] == "schedule"}
        row = train_variant(
            args,
            base_dir,
            cohorts,
            seed,
            method=method,
            label=label,
            train_changes=train_changes,
            rank1_changes=rank1_changes if method == "rank1" else {},
            schedule_changes=schedule_changes if method == "rank1" else {},
        )
        rows.append(row)
        print(f"  {_line(row)}", flush=True)
    return rows


def _line(row: DiversityRow) -> str:
    detect = ", ".join(f"{k} {v:.3f}" for k, v in row.detect.items())
    return (
        f"{row.variant}: share {row.share:.4f}, spearman {row.spearman:.3f}, detect {detect}, "
        f"gap {row.gap:+.4f}, ece {row.ece:.4f}, scale {row.scale:.3f}, spread "
        f"{row.spread:.3f}, best step {row.best_step:.0f}, train {row.seconds:.1f} s"
    )


def seed_means(rows: list[DiversityRow]) -> list[DiversityRow]:
    """Per variant, the mean of every number over seeds (NaNs ignored); seed -1."""
    groups: dict[str, list[DiversityRow]] = {}
    for row in rows:
        groups.setdefault(row.variant, []).append(row)

    def mean(values: list[float]) -> float:
        finite = [v for v in values if math.isfinite(v)]
        return float(np.mean(finite)) if finite else math.nan

    out = []
    for variant, group in groups.items():
        numbers = {
            f.name: mean([getattr(r, f.name) for r in group])
            for f in dataclasses.fields(DiversityRow)
            if f.name not in ("seed", "variant", "detect")
        }
        detect = {k: mean([r.detect[k] for r in group]) for k in group[0].detect}
        out.append(DiversityRow(seed=-1, variant=variant, detect=detect, **numbers))
    return out


def markdown_table(rows: list[DiversityRow]) -> str:
    """The rows as one markdown table."""
    shifts = list(rows[0].detect) if rows else []
    header = [
        "seed",
        "variant",
        "epistemic share (median)",
        "Spearman(epi, risk)",
        *[f"detect {s}" for s in shifts],
        "AUROC gap",
        "cal. ECE vs truth",
        "factor stddev",
        "member spread",
        "best step",
        "train s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        cells = [
            "mean" if r.seed < 0 else str(r.seed),
            r.variant,
            f"{r.share:.4f}",
            f"{r.spearman:.3f}",
            *[f"{r.detect[s]:.3f}" for s in shifts],
            f"{r.gap:+.4f}",
            f"{r.ece:.4f}",
            f"{r.scale:.3f}",
            f"{r.spread:.3f}",
            f"{r.best_step:.0f}",
            f"{r.seconds:.1f}",
        ]
        lines.append("| " + " | ".join(cells).replace("nan", "n/a") + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=3000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--rnn-dim", type=int, default=64)
    parser.add_argument("--hidden-dim", type=int, default=64)
    parser.add_argument("--projection-dim", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shifts", nargs="+", choices=INPUT_SHIFTS, default=list(INPUT_SHIFTS))
    parser.add_argument("--prior-stddev", type=float, nargs="+", default=[1.0])
    parser.add_argument("--random-sign-init", type=float, nargs="+", default=[0.5])
    parser.add_argument("--dropout-rate", type=float, nargs="+", default=[1e-3])
    parser.add_argument("--num-eval-samples", type=int, nargs="+", default=[1])
    parser.add_argument("--patience", type=int, nargs="+", default=[5])
    parser.add_argument("--eval-every", type=int, nargs="+", default=[100])
    parser.add_argument("--ensemble-size", type=int, nargs="+", default=[4])
    parser.add_argument("--kl-scale", type=float, nargs="+", default=[1.0])
    parser.add_argument("--grid", action="store_true", help="Every combination of the values.")
    parser.add_argument("--with-ensemble", action="store_true", help="Add the deep ensemble.")
    parser.add_argument("--work", type=Path, default=None, help="Folder for data and store.")
    args = parser.parse_args()
    grid = {name: list(getattr(args, name)) for name in SETTINGS}
    todo = variants(grid, args.grid)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {describe()}")
    print(f"{len(todo)} variants: " + "; ".join(v.name for v in todo), flush=True)

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_diversity_"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{(work / 'mlflow.db').resolve()}"
    started = time.perf_counter()
    rows = [row for seed in args.seeds for row in run_seed(args, seed, work, todo)]
    print(f"total {time.perf_counter() - started:.1f} s\n")
    shown = rows + (seed_means(rows) if len(args.seeds) > 1 else [])
    print(markdown_table(shown))


if __name__ == "__main__":
    main()
