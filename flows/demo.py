"""The end-to-end demo behind ``rank1 demo``: synthetic cohort, clinical pipeline, images.

One parent flow run, so the Prefect UI shows the whole demo as a tree: a synthetic
MIMIC-III cohort is generated, ``clinical_pipeline`` trains the rank-1 LSTM and its
deterministic twin, registers them (``demo-mimic-ihm-<method>``, champion when better) and
writes their per-patient reports; a second synthetic export (other patients, as a hospital
would export tonight) is scored by the rank-1 champion with ``score_mimic``; and
``image_benchmark`` trains the digits rank-1 CNN and its twin and validates both on
corrupted digits. The sizes are
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
from flows.params import DemoParams, validate
from flows.score import score_mimic

#: The name of the demo's export of new patients under ``icu-exports/``.
EXPORT_NAME = "tonight"

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
def demo(params: DemoParams) -> dict[str, Any]:
    """Synthetic cohort -> clinical pipeline, and digits -> image benchmark.

    ``out_dir`` is made owner-only (it holds per-patient files). The demo trains on the CPU
    by default (its sizes gain nothing from a GPU) with one torch thread: its small models
    are dominated by per-operation overhead, where one thread is as fast as two on an idle
    machine, and it avoids OpenMP's spin-wait stalls when other processes share the cores
    (a rank-1 LSTM step measured 25x faster that way on a busy 2-core machine).

    Args:
        params: :class:`flows.params.DemoParams` (or a mapping of them), checked first.

    Returns:
        ``{"cohort", "clinical", "scoring", "images"}``: the sub-flows' results.
    """
    params = validate("demo", DemoParams, params)
    from features.io import make_private_dir

    make_private_dir(params.out_dir)
    if params.torch_threads:
        import torch

        torch.set_num_threads(params.torch_threads)
    cohort = synthesize(params.out_dir / "mimic-synthetic", params.patients, params.seed)
    clinical = clinical_pipeline(params.clinical_params(DEMO_MODEL))
    # New patients: another seed, a quarter of the cohort's size.
    export = params.exports_dir / EXPORT_NAME
    synthesize(export, max(params.patients // 4, 200), params.seed + 1)
    scoring = score_mimic(params.score_params())
    images = image_benchmark(params.benchmark_params())
    return {"cohort": cohort, "clinical": clinical, "scoring": scoring, "images": images}
