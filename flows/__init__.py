"""Prefect flows, deployments and the ``rank1`` command line.

Importing this package sets offline-friendly defaults for Prefect before Prefect itself is
imported anywhere below it (the values measured in ``../shared/docs/stack.md``): no telemetry
(which otherwise errors on every server start without internet) and a patient start-up
timeout for the ephemeral server on slow CI machines. Values already in the environment win.

Modules:
    params: each flow's parameter model (the MIMIC and demo flows; shared field types).
    image_params: the image flows' parameter models.
    mimic: ``extract_mimic``, ``train_mimic``, ``report_mimic`` and ``clinical_pipeline``.
    shift: ``compare_cohorts``, a trained run's uncertainty on a second cohort.
    images: ``train_images``, ``validate_images`` and ``image_benchmark``.
    resume: whether a training resumes from its checkpoint folder.
    tasks: the task retry policy and the per-method training loop.
    demo: the end-to-end demo flow behind ``rank1 demo``.
    deployments: YAML-configured schedules served with ``rank1 serve``.
    runs: flow and task runs left RUNNING by a killed process, set Crashed on a rerun.
    cli: the ``rank1`` typer app, one module per area (mimic, images, serve, demo).
"""

from __future__ import annotations

import os

PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "60",
    # Flows draw plots in worker threads and on headless machines.
    "MPLBACKEND": "Agg",
}

for _name, _value in PREFECT_DEFAULTS.items():
    os.environ.setdefault(_name, _value)
