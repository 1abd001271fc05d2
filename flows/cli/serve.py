"""``rank1`` commands of scheduled deployments: serve, deploy (:mod:`flows.deployments`)."""

from __future__ import annotations

from typing import Annotated

import typer

from flows.cli import fail_all, options


def serve_command(
    config_file: options.DeploymentFile = None,
    only: options.Only = None,
    check: Annotated[
        bool, typer.Option("--check", help="Check the file and list the schedules; serve nothing.")
    ] = False,
) -> None:
    """Register scheduled deployments with the Prefect server (PREFECT_API_URL) and run them."""
    from flows.deployments import DeploymentError, entrypoint_problems, load_config, serve

    try:
        config = load_config(config_file)
    except DeploymentError as err:
        fail_all(err.problems)
    for entry in config.deployments:
        when = (
            f"cron '{entry.cron}' {entry.timezone}"
            if entry.cron
            else f"every {entry.interval_seconds:g} s"
        )
        typer.echo(f"{entry.name}: {entry.flow}, {when}{' (paused)' if entry.paused else ''}")
    try:
        # Import every flow now, with or without --check, and report each that fails.
        problems = entrypoint_problems(config, only)
    except DeploymentError as err:
        fail_all(err.problems)
    if problems:
        fail_all(problems)
    if check:
        return
    try:
        serve(config, only=only)
    except DeploymentError as err:
        fail_all(err.problems)
    except KeyboardInterrupt:
        pass  # Ctrl-C or SIGTERM: a normal way to stop serving
    typer.echo("stopped serving; the schedules are paused until the next `rank1 serve`")


def deploy_command(
    pool: Annotated[str, typer.Option("--pool", help="Work pool whose workers run the flows.")],
    config_file: options.DeploymentFile = None,
    only: options.Only = None,
) -> None:
    """Register the scheduled deployments with a work pool (run by `prefect worker start`)."""
    from flows.deployments import DeploymentError, deploy_to_pool, load_config

    try:
        # The workers run the flows, perhaps on other machines: they check the devices.
        config = load_config(config_file, runs_here=False)
        ids = deploy_to_pool(config, pool, only=only)
    except DeploymentError as err:
        fail_all(err.problems)
    typer.echo(f"registered {len(ids)} deployment(s) with work pool {pool!r}")
    typer.echo(f"start a worker where the flows should run: prefect worker start --pool {pool}")
