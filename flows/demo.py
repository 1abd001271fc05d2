"""The end-to-end demo behind ``rank1 demo``: synthetic cohort, clinical pipeline, images.

One parent flow run, so the Prefect UI shows the whole demo as a tree: a synthetic
MIMIC-III cohort is generated, ``clinical_pipeline`` trains the rank-1 LSTM and its
deterministic twin and writes their per-patient reports, and ``image_benchmark`` trains
the digits rank-1 CNN and its twin and validates both on corrupted digits. The sizes are
small enough for a laptop CPU (a few minutes on 2 cores); the pipeline code is the same as
for the full-size recipes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.images import image_benchmark
from flows.mimic import clinical_pipeline
from flows.params import DemoParams, defaults, validate

# The signature shows the parameter model's defaults (the Prefect UI's form shows them).
_DEMO = defaults(DemoParams)

#: The demo's LSTM: the paper's architecture (its input projection too) at a quarter of its
#: LSTM width, so that it trains in about a minute on a CPU.
DEMO_MODEL = {"rnn_dim": 64, "hidden_dim": 64}


@task(retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE)
def synthesize(out_dir: Path, patients: int, seed: int) -> dict[str, Any]:
    """Write a synthetic MIMIC-III database with ``features.synthetic.generate``."""
    from features.synthetic import generate

    summary = generate(out_dir, patients=patients, seed=seed)
    get_run_logger().info(
        "synthetic cohort: %d patients, %d ICU stays, %d in-hospital deaths",
        summary["patients"],
        summary["icustays"],
        summary["deaths"],
    )
    return {k: summary[k] for k in ("patients", "icustays", "deaths")}


@flow(name="demo", validate_parameters=False)
def demo(
    out_dir: Path = _DEMO.out_dir,
    patients: int = _DEMO.patients,
    steps: int = _DEMO.steps,
    image_epochs: float | None = None,
    severities: list[int] = _DEMO.severities,
    seed: int = _DEMO.seed,
    device: str = _DEMO.device,
    torch_threads: int = _DEMO.torch_threads,
    progress: bool = False,
) -> dict[str, Any]:
    """Synthetic cohort -> clinical pipeline, and digits -> image benchmark.

    The defaults are :class:`flows.params.DemoParams`'.

    Args:
        out_dir: Output root (made owner-only: it holds per-patient files).
        patients: Synthetic patients.
        steps: Training steps of each EHR model.
        image_epochs: Training epochs of each digits model (default: the recipe's 30).
        severities: Corruption severities of the image validation (default 1, 3, 5).
        seed: Seed of the synthetic cohort and the splits.
        device: Where to train (default ``cpu``: the demo sizes gain nothing from a GPU).
        torch_threads: CPU threads of torch (0: one per core). The demo's small models
            are dominated by per-operation overhead, where one thread is as fast as two on
            an idle machine, and it avoids OpenMP's spin-wait stalls when other processes
            share the cores (a rank-1 LSTM step measured 25x faster that way on a busy
            2-core machine).
        progress: Show training progress bars on the terminal.

    Returns:
        ``{"cohort", "clinical", "images"}``: the sub-flows' results.
    """
    params = validate("demo", DemoParams, locals())
    from features.io import make_private_dir

    make_private_dir(params.out_dir)
    if params.torch_threads:
        import torch

        torch.set_num_threads(params.torch_threads)
    raw = params.out_dir / "mimic-synthetic"
    cohort = synthesize(raw, params.patients, params.seed)
    clinical = clinical_pipeline(
        raw,
        out_dir=params.out_dir / "mimic",
        methods=["rank1", "deterministic"],
        train={
            "schedule": {"length": params.steps, "kl_anneal": params.steps // 2},
            "eval_every": max(params.steps // 5, 1),
            # A rerun of a killed demo resumes from the last one (out_dir/mimic/checkpoints).
            "checkpoint_every": max(params.steps // 5, 1),
            "device": params.device,
        },
        model=DEMO_MODEL,
        experiment="demo-mimic-ihm",
        seed=params.seed,
        progress=params.progress,
    )
    images = image_benchmark(
        "cnn-digits",
        methods=["rank1", "deterministic"],
        epochs=params.image_epochs,
        severities=list(params.severities),
        device=params.device,
        experiment="demo-images",
        progress=params.progress,
    )
    return {"cohort": cohort, "clinical": clinical, "images": images}
