"""Scheduled deployments, configured in YAML and served by ``rank1 serve``.

The YAML file (example: ``flows/deployments.yaml``, shipped with the package) lists
deployments, each a flow, a cron or interval schedule and the flow's parameters.
:func:`load_config` checks the whole file, including each known flow's parameters with
its model in :mod:`flows.params`, and :func:`entrypoint_problems` loads each deployment's
flow, before anything is registered. Every problem found is reported, one line each, not
just the first. :func:`serve` registers
the deployments with the Prefect server named by ``PREFECT_API_URL`` and runs their
scheduled runs in this process until it is stopped (SIGTERM or Ctrl-C).

Schedules need a real Prefect server: Prefect's ephemeral mode (no ``PREFECT_API_URL``)
refuses to schedule, so :func:`require_server` stops early with instructions instead.
"""

from __future__ import annotations

import datetime
import os
import signal
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from flows import image_params
from flows import params as flow_params

#: Short names usable as ``flow:`` in the YAML -> (entrypoint, parameter model).
FLOWS: dict[str, tuple[str, type[BaseModel] | None]] = {
    "extract_mimic": ("flows.mimic:extract_mimic", flow_params.ExtractParams),
    "train_mimic": ("flows.mimic:train_mimic", flow_params.TrainParams),
    "report_mimic": ("flows.mimic:report_mimic", flow_params.ReportParams),
    "clinical_pipeline": ("flows.mimic:clinical_pipeline", flow_params.ClinicalParams),
    "compare_cohorts": ("flows.shift:compare_cohorts", flow_params.CompareParams),
    "score_mimic": ("flows.score:score_mimic", flow_params.ScoreParams),
    "train_images": ("flows.images:train_images", image_params.ImageTrainParams),
    "validate_images": ("flows.images:validate_images", image_params.ImageValidateParams),
    "image_benchmark": ("flows.images:image_benchmark", image_params.ImageBenchmarkParams),
}

DEFAULT_CONFIG = "deployments.yaml"
SERVER_HINT = (
    "start one with `prefect server start --host 127.0.0.1 --port 4200 --analytics-off` "
    "and `export PREFECT_API_URL=http://127.0.0.1:4200/api`"
)


class DeploymentError(ValueError):
    """The deployment file or the server is not usable; the message says why.

    Args:
        message: The first (or only) problem, one line.
        problems: Every problem found, one line each (default: just ``message``).
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class DeploymentEntry(BaseModel):
    """One deployment of the YAML file.

    Attributes:
        name: Deployment name (shown in the Prefect UI as ``<flow>/<name>``).
        flow: A key of :data:`FLOWS` or an entrypoint ``module:function`` /
            ``path/to/file.py:function``.
        cron: Cron schedule (five fields), or None.
        interval_seconds: Interval schedule in seconds, or None.
        timezone: IANA time zone of the cron schedule.
        parameters: The flow's parameters.
        tags: Prefect tags.
        description: Shown in the Prefect UI.
        paused: Register the deployment with its schedule paused.
    """

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
    flow: Annotated[str, Field(min_length=1)]
    cron: str | None = None
    interval_seconds: Annotated[float, Field(gt=0)] | None = None
    timezone: str = "UTC"
    parameters: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
    description: str | None = None
    paused: bool = False

    @field_validator("flow")
    @classmethod
    def _known_flow(cls, flow: str) -> str:
        if flow not in FLOWS and ":" not in flow:
            raise ValueError(
                f"unknown flow {flow!r}: use one of {', '.join(FLOWS)} or an entrypoint "
                "'module:function' / 'path/to/file.py:function'"
            )
        return flow

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str | None) -> str | None:
        from prefect.schedules import validate_cron_string

        return None if cron is None else validate_cron_string(cron)

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, timezone: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {timezone!r}") from None
        return timezone

    @model_validator(mode="after")
    def _one_schedule_and_valid_parameters(self, info: ValidationInfo) -> DeploymentEntry:
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("give exactly one of 'cron' and 'interval_seconds'")
        model = FLOWS.get(self.flow, (None, None))[1]
        if model is not None:
            try:
                # The context says whether the flows run here (serve) or elsewhere (deploy).
                model.model_validate(self.parameters, context=info.context)
            except ValidationError as err:
                raise ValueError(f"parameters: {flow_params.describe(err)}") from None
        return self

    @property
    def flow_parameters(self) -> dict[str, Any]:
        """The flow run's parameters: a known flow takes its model as one ``params``.

        The YAML lists that model's fields flat; a flow of the user's own takes them as
        they are.
        """
        known = self.entrypoint in {entrypoint for entrypoint, _ in FLOWS.values()}
        return {"params": self.parameters} if known else self.parameters

    @property
    def entrypoint(self) -> str:
        """Where Prefect finds the flow function."""
        return FLOWS[self.flow][0] if self.flow in FLOWS else self.flow


class DeploymentsConfig(BaseModel):
    """The whole YAML file."""

    model_config = ConfigDict(extra="forbid")

    limit: Annotated[int, Field(ge=1)] | None = 1
    deployments: Annotated[list[DeploymentEntry], Field(min_length=1)]
    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        """The file this configuration was read from (None when built in code)."""
        return self._source

    @field_validator("deployments")
    @classmethod
    def _unique_names(cls, entries: list[DeploymentEntry]) -> list[DeploymentEntry]:
        names = [entry.name for entry in entries]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"deployment name {duplicates[0]!r} appears more than once")
        return entries


def default_config_path() -> Path:
    """The example deployment file shipped with the package."""
    return Path(str(resources.files("flows") / DEFAULT_CONFIG))


def load_config(
    path: str | os.PathLike | None = None, *, runs_here: bool = True
) -> DeploymentsConfig:
    """Read and check a deployment file.

    Args:
        path: The YAML file (None: the packaged example).
        runs_here: Whether the flows will run on this machine (``rank1 serve``), so that a
            CUDA device in their parameters must exist here; False for ``rank1 deploy``,
            whose workers may run elsewhere and check when each run starts.

    Returns:
        The checked configuration.

    Raises:
        DeploymentError: Naming the file, the deployment and the bad field; its
            ``problems`` hold every bad field found.
    """
    from pipeline.config import ConfigError, read_yaml

    path = Path(path) if path is not None else default_config_path()
    try:
        data = read_yaml(path)
    except ConfigError as err:
        raise DeploymentError(str(err)) from None
    try:
        config = DeploymentsConfig.model_validate(
            data if data is not None else {}, context={flow_params.RUNS_HERE: runs_here}
        )
    except ValidationError as err:
        problems = [_problem(path, data, error) for error in err.errors()]
        raise DeploymentError(problems[0], problems) from None
    config._source = path
    return config


def _problem(path: Path, data: Any, error: Any) -> str:
    """One line for one pydantic error of the file: file, deployment, field, reason."""
    where = list(error["loc"])
    if len(where) >= 2 and where[0] == "deployments" and isinstance(where[1], int):
        entries = data.get("deployments") if isinstance(data, dict) else None
        entry = entries[where[1]] if isinstance(entries, list) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        where = [f"deployment {name or where[1]!r}", *where[2:]]
    location = ": ".join(str(part) for part in where)
    message = error["msg"].removeprefix("Value error, ")
    return f"{path}: {location}: {message}" if location else f"{path}: {message}"


def entrypoint_problems(config: DeploymentsConfig, only: list[str] | None = None) -> list[str]:
    """Load the flow of each deployment from its entrypoint; one line per one that fails.

    Importing the entrypoints here, before the server is asked, makes a typo in a module
    or function name fail at ``rank1 serve`` / ``--check`` rather than at the first run.

    Args:
        config: A checked deployment file.
        only: Names of the deployments to check (None: all).

    Returns:
        ``"<file>: deployment '<name>': cannot load flow '<entrypoint>': <reason>"`` for
        each deployment whose flow cannot be loaded; empty when all load.

    Raises:
        DeploymentError: When ``only`` names an unknown deployment.
    """
    from prefect.flows import load_flow_from_entrypoint

    prefix = f"{config.source}: " if config.source is not None else ""
    problems = []
    for entry in select(config, only):
        try:
            load_flow_from_entrypoint(entry.entrypoint, use_placeholder_flow=False)
        except Exception as err:  # importing a user's module can raise anything at all
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            problems.append(
                f"{prefix}deployment {entry.name!r}: cannot load flow {entry.entrypoint!r}: "
                f"{reason}"
            )
    return problems


def _require_entrypoints(config: DeploymentsConfig, only: list[str] | None) -> None:
    problems = entrypoint_problems(config, only)
    if problems:
        raise DeploymentError(problems[0], problems)


def require_server() -> str:
    """The configured Prefect API URL, checked to answer; else a :class:`DeploymentError`.

    Returns:
        The API URL.
    """
    import httpx
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise DeploymentError(
            "PREFECT_API_URL is not set: schedules need a running Prefect server "
            f"(the ephemeral mode cannot schedule); {SERVER_HINT}"
        )
    try:
        response = httpx.get(url.rstrip("/") + "/health", timeout=10)
        response.raise_for_status()
    except httpx.HTTPError as err:
        raise DeploymentError(
            f"the Prefect server at {url} does not answer ({err}); {SERVER_HINT}"
        ) from None
    return url


def _schedule(entry: DeploymentEntry):
    from prefect.schedules import Cron, Interval

    if entry.cron is not None:
        return Cron(entry.cron, timezone=entry.timezone)
    return Interval(datetime.timedelta(seconds=entry.interval_seconds))


def build(entry: DeploymentEntry):
    """The Prefect ``RunnerDeployment`` of one entry (flow loaded from its entrypoint)."""
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(entry.entrypoint, use_placeholder_flow=False)
    return flow.to_deployment(
        name=entry.name,
        schedules=[_schedule(entry)],
        parameters=entry.flow_parameters,
        tags=entry.tags,
        description=entry.description,
        paused=entry.paused,
    )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def serve(config: DeploymentsConfig, only: list[str] | None = None) -> None:
    """Register the deployments with the Prefect server and run their scheduled runs.

    Blocks until the process is stopped; on shutdown Prefect pauses the schedules, so no
    runs pile up while nothing serves them.

    Args:
        config: A checked deployment file.
        only: Names of the deployments to serve (None: all).

    Raises:
        DeploymentError: When a flow cannot be loaded, no server answers or ``only`` names
            an unknown deployment.
    """
    from prefect import serve as prefect_serve

    entries = select(config, only)
    _require_entrypoints(config, only)
    require_server()
    # Prefect's serve loop stops cleanly (pausing the schedules) on KeyboardInterrupt but
    # not on SIGTERM, which is what service managers and `kill` send: translate it.
    signal.signal(signal.SIGTERM, _interrupt)
    prefect_serve(*(build(entry) for entry in entries), limit=config.limit)


def select(config: DeploymentsConfig, only: list[str] | None) -> list[DeploymentEntry]:
    """The entries named in ``only`` (all when None or empty).

    Raises:
        DeploymentError: For a name that is not in the file.
    """
    if not only:
        return list(config.deployments)
    known = {entry.name for entry in config.deployments}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise DeploymentError(
            f"no deployment named {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )
    return [entry for entry in config.deployments if entry.name in only]


def code_location(entrypoint: str) -> tuple[Path, str]:
    """Split an entrypoint into a source folder and a file entrypoint relative to it.

    ``flows.mimic:clinical_pipeline`` becomes (the folder holding the ``flows`` package,
    ``flows/mimic.py:clinical_pipeline``); ``path/to/file.py:touch`` becomes
    (``path/to``, ``file.py:touch``). A worker runs the flow from that folder, so it must
    hold the same code on the worker's machine (a shared file system or the same checkout
    at the same path).
    """
    import importlib.util

    target, function = entrypoint.rsplit(":", 1)
    if target.endswith(".py"):
        path = Path(target).resolve()
        return path.parent, f"{path.name}:{function}"
    try:
        spec = importlib.util.find_spec(target)
    except ImportError:  # a missing parent package: find_spec imports it first
        spec = None
    if spec is None or spec.origin is None:
        raise DeploymentError(f"cannot find the module {target!r} of {entrypoint!r}")
    origin = Path(spec.origin).resolve()
    root = origin.parents[len(target.split(".")) - 1]
    return root, f"{origin.relative_to(root)}:{function}"


def deploy_to_pool(
    config: DeploymentsConfig, pool: str, only: list[str] | None = None
) -> list[str]:
    """Register the deployments with a Prefect work pool; the pool's workers run them.

    Unlike :func:`serve`, this returns at once: runs are executed by ``prefect worker start
    --pool <pool>`` processes, on any machine that reaches the Prefect server and holds the
    code at the same path (see :func:`code_location`).

    Args:
        config: A checked deployment file.
        pool: Name of an existing work pool (``prefect work-pool create <pool> --type
            process``).
        only: Names of the deployments to register (None: all).

    Returns:
        The registered deployment ids.

    Raises:
        DeploymentError: When a flow cannot be loaded, no server answers, the pool does not
            exist or ``only`` names an unknown deployment.
    """
    from prefect import deploy as prefect_deploy
    from prefect.flows import Flow

    entries = select(config, only)
    _require_entrypoints(config, only)
    require_server()
    deployments = []
    for entry in entries:
        source, entrypoint = code_location(entry.entrypoint)
        flow = Flow.from_source(source=str(source), entrypoint=entrypoint)
        deployments.append(
            flow.to_deployment(
                name=entry.name,
                schedules=[_schedule(entry)],
                parameters=entry.flow_parameters,
                tags=entry.tags,
                description=entry.description,
                paused=entry.paused,
                work_pool_name=pool,
            )
        )
    try:
        ids = prefect_deploy(
            *deployments,
            work_pool_name=pool,
            build=False,
            push=False,
            print_next_steps_message=False,
            ignore_warnings=True,
        )
    except ValueError as err:  # e.g. "Could not find work pool ..."
        raise DeploymentError(str(err).splitlines()[0]) from None
    return [str(deployment_id) for deployment_id in ids]
