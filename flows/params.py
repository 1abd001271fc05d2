"""Validated parameters of every flow, composed from shared parts; the home of their defaults.

Each flow validates its parameters with one of these models first, before any task runs, so
a bad value from the CLI, the Prefect UI or a deployment YAML fails at once with a
:class:`ParameterError` naming it, e.g. ``train_mimic: parameter 'train.optim.lr': must be
a finite number > 0, got -1.0``. The flows turn off Prefect's own signature validation
(``validate_parameters=False``): one place checks values, with one error format.

Composed, not copied: :class:`ClinicalParams` is :class:`SplitSettings` (as extracted),
:class:`TrainSettings` (as trained) and the report's coverage. The ``train`` overrides are
checked by :class:`pipeline.config.TrainConfig` (its errors' ``field`` and ``reason`` become
the parameter's), the LSTM sizes by :class:`rank1.models.EHRConfig`, whose defaults are not
restated. Only pydantic and the light :mod:`pipeline.config` are imported, so the CLI and
``rank1 serve`` check parameters without Prefect or torch (torch only for a CUDA device).

A CUDA device is checked against the machine that validates: pass
``context={RUNS_HERE: False}`` to ``model_validate`` where the flow will run elsewhere (a
deployment registered for a work pool's workers, which check when their run starts).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from features.mimic.task_names import Task
from pipeline.config import (
    DEVICE_PATTERN,
    EHR_EXPERIMENT,
    REGISTER_AS,
    SCORING_EXPERIMENT,
    SCORING_MODEL_URI,
    ConfigError,
    Method,
    check_device,
    registered_model_name,
)

M = TypeVar("M", bound=BaseModel)

#: Validation-context key; False skips the checks that only hold where the flow runs.
RUNS_HERE = "runs_here"


class ParameterError(ValueError):
    """A flow parameter is invalid; the message names the flow and the parameter."""


def parameter_error(name: str, err: ConfigError) -> ValueError:
    """A config error as the error of parameter ``name``: ``parameter '<name>': <reason>``."""
    return ValueError(f"parameter {name!r}: {err.reason}")


def _each_once(what: str) -> AfterValidator:
    """A check that a list names each ``what`` once."""

    def check(values: list[Any]) -> list[Any]:
        if len(set(values)) != len(values):
            raise ValueError(f"each {what} may appear once, got {values}")
        return values

    return AfterValidator(check)


def _existing_dir(path: Path) -> Path:
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder")
    return path


def _feature_folder(path: Path) -> Path:
    if not (path / "manifest.json").is_file():
        raise ValueError(f"{path} is not a feature folder (no manifest.json); run extraction")
    return path


_MODEL_URI = re.compile(r"models:/[A-Za-z0-9][A-Za-z0-9_.-]*(@[A-Za-z][A-Za-z0-9_-]*|/[1-9][0-9]*)")


def _model_uri(uri: str) -> str:
    # The form only: which models, versions and aliases exist is pipeline.tracking.resolve's
    # to say when the flow runs (the store may not be reachable where parameters are checked).
    if not _MODEL_URI.fullmatch(uri):
        raise ValueError(f"must be models:/NAME@ALIAS or models:/NAME/VERSION, got {uri!r}")
    return uri


def _naive(moment: datetime) -> datetime:
    if moment.tzinfo is not None:
        raise ValueError("must be a local time without a time zone, as MIMIC-III times are")
    return moment


# Field types shared by several models: each check is declared once.
Split = Literal["train", "val", "test"]
Seed = Annotated[int, Field(ge=0)]
Device = Annotated[str, Field(pattern=DEVICE_PATTERN)]
RunId = Annotated[str, Field(pattern=r"^[0-9a-zA-Z_-]{8,64}$")]
Name = Annotated[str, Field(min_length=1)]
Methods = Annotated[list[Method], Field(min_length=1), _each_once("method")]
Severity = Annotated[int, Field(ge=1, le=5)]
Severities = Annotated[list[Severity], Field(min_length=1), _each_once("severity")]
ExistingDir = Annotated[Path, AfterValidator(_existing_dir)]
FeatureFolder = Annotated[Path, AfterValidator(_feature_folder)]
#: ``COLUMN=VALUE`` of a stays table (``pipeline.shift.Where``, which also refuses
#: identifier and time columns; not imported here: it loads torch).
CohortFilter = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*=.+$")]
Positive = Annotated[int, Field(ge=1)]
#: A registry URI of one version: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.
ModelUri = Annotated[str, AfterValidator(_model_uri)]
NaiveTime = Annotated[datetime, AfterValidator(_naive)]


class _Params(BaseModel):
    # Unknown keys are refused so that a typo in a deployment YAML is an error, not a no-op.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _runs_here(info: ValidationInfo) -> bool:
    return not info.context or info.context.get(RUNS_HERE, True)


class DeviceChecked(_Params):
    """A ``device`` parameter that must exist where the flow runs (see :data:`RUNS_HERE`)."""

    @field_validator("device", check_fields=False)
    @classmethod
    def _device_exists(cls, device: str | None, info: ValidationInfo) -> str | None:
        if device is not None and _runs_here(info):
            try:
                check_device(device)
            except ConfigError as err:
                raise ValueError(err.reason) from None  # pydantic names the parameter
        return device


# --------------------------------------------------------------------------- MIMIC parts


class SplitSettings(_Params):
    """The subject-level split of an extraction.

    Attributes:
        seed: Seed of the subject-level split.
        val_fraction: Share of subjects in the validation split.
        test_fraction: Share of subjects in the test split.
    """

    seed: Seed = 0
    # Checked by features.mimic.splits.check_split_fractions, which says why.
    val_fraction: float = 0.15
    test_fraction: float = 0.15

    @model_validator(mode="after")
    def _check_fractions(self) -> SplitSettings:
        from features.mimic.splits import check_split_fractions

        check_split_fractions(self.val_fraction, self.test_fraction)
        return self


class ModelSizes(_Params):
    """Layer sizes of the EHR LSTM; None (the default) keeps ``rank1.models.EHRConfig``'s."""

    projection_dim: Positive | None = None
    rnn_dim: Positive | None = None
    hidden_dim: Positive | None = None

    def ehr_config(self):
        """The :class:`rank1.models.EHRConfig` with the sizes given here."""
        from rank1.models import EHRConfig

        return EHRConfig(**self.model_dump(exclude_none=True))


def _no_method_in_train(train: dict[str, Any]) -> dict[str, Any]:
    if "method" in train:
        raise ValueError("set the method with 'methods', not inside 'train'")
    return train


class TrainSettings(_Params):
    """What to train and where to log it.

    Attributes:
        methods: Models to train, each into its own MLflow run: ``rank1`` (the rank-1
            LSTM), ``deterministic`` (its deterministic twin), ``ensemble`` (a deep
            ensemble of deterministic LSTMs).
        train: Overrides of ``pipeline.config.TrainConfig`` as a nested mapping, e.g.
            ``{"schedule": {"length": 2000}, "device": "cpu"}``; the method comes from
            ``methods``.
        model: Layer sizes of the LSTM.
        experiment: MLflow experiment name.
        progress: Show training progress bars (for a terminal; off in served runs).
        register_as: The registered model (MLflow Model Registry) each trained model
            becomes a new version of; ``{method}`` stands for its method. None (given to
            the model itself; a mapping's None takes the default) registers nothing.
        promote_if_better: Point the alias ``champion`` at a new version whose validation
            NLL beats the champion's (or when there is none yet).
    """

    methods: Methods = ["rank1", "deterministic"]
    train: Annotated[dict[str, Any], AfterValidator(_no_method_in_train)] = {}
    model: ModelSizes = ModelSizes()
    experiment: Name = EHR_EXPERIMENT
    progress: bool = False
    register_as: Name | None = REGISTER_AS
    promote_if_better: bool = False

    @field_validator("register_as")
    @classmethod
    def _registrable(cls, register_as: str | None) -> str | None:
        if register_as is not None:
            try:
                registered_model_name(register_as, "rank1")
            except ConfigError as err:
                raise ValueError(err.reason) from None  # pydantic names the parameter
        return register_as

    @model_validator(mode="after")
    def _check_train(self, info: ValidationInfo) -> TrainSettings:
        for method in self.methods:
            try:
                config = self.train_config(method)
                if _runs_here(info):
                    # Here, not when training starts: `--device cuda` without a GPU would
                    # otherwise fail only after the extraction.
                    check_device(config.device)
            except ConfigError as err:
                raise parameter_error(f"train.{err.field}", err) from None
        return self

    def train_config(self, method: str):
        """The full :class:`pipeline.config.TrainConfig` of one method.

        Raises:
            pipeline.config.ConfigError: Naming the bad field.
        """
        from pipeline.config import TrainConfig

        return TrainConfig.from_dict({**self.train, "method": method})


class _Coverage(_Params):
    #: Share of stays the model keeps; the most uncertain rest are referred. The same
    #: default as pipeline.report.DEFAULT_COVERAGE (not imported: it would load polars).
    coverage: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8


# --------------------------------------------------------------------------- MIMIC flows


class ExtractParams(SplitSettings):
    """Parameters of ``extract_mimic`` (and :class:`SplitSettings`).

    Attributes:
        mimic_dir: Folder with the raw MIMIC-III tables (CSV or CSV.gz).
        out_dir: Feature folder to write.
        task: The benchmark task: ``ihm`` (in-hospital mortality, the 48-hour grid),
            ``decompensation``, ``length-of-stay`` or ``phenotyping`` (whole stays).
        force: Extract even when the inputs are unchanged since the last extraction.
    """

    mimic_dir: ExistingDir
    out_dir: Path
    task: Task = "ihm"
    force: bool = False


class TrainParams(TrainSettings):
    """Parameters of ``train_mimic`` (and :class:`TrainSettings`).

    Attributes:
        features_dir: Feature folder written by extraction.
        checkpoint_dir: Folder for training checkpoints (one sub-folder per method), or
            None for none.
    """

    features_dir: FeatureFolder
    checkpoint_dir: Path | None = None


class ReportParams(_Coverage):
    """Parameters of ``report_mimic``.

    Attributes:
        run_id: MLflow run written by ``train_mimic``.
        features_dir: Feature folder (the same one the run was trained on).
        out_dir: Report folder (owner-only).
        split: Split to report on.
        coverage: Share of stays the model keeps; the most uncertain rest are referred.
    """

    run_id: RunId
    features_dir: FeatureFolder
    out_dir: Path
    split: Split = "test"


class CompareParams(_Params):
    """Parameters of ``compare_cohorts`` (``flows.shift``): a run scored on two cohorts.

    Attributes:
        run_id: MLflow run written by ``train_mimic`` (or ``rank1 train``).
        features_dir: The feature folder the run trained on (in distribution).
        shifted_dir: The feature folder to compare with (same channels; scored with the
            run's normaliser). May be ``features_dir`` itself with ``shifted_split`` val
            or test and filters (e.g. CareVue vs MetaVision test stays).
        split: The in-distribution split of ``features_dir``.
        shifted_split: The split of ``shifted_dir`` to score; None for every stay.
        in_dist_where: Keep only the in-distribution stays with ``COLUMN=VALUE``, e.g.
            ``dbsource=carevue``; None for all.
        shifted_where: The same for the shifted stays, e.g. ``dbsource=metavision``.
        experiment: MLflow experiment of the comparison run (tagged with ``run_id``):
            apart from the training runs, so their runs table stays one of trainings.
        out_dir: Folder for ``comparison.json`` (cohort-level numbers, owner-only); None
            for none.
    """

    run_id: RunId
    features_dir: FeatureFolder
    shifted_dir: FeatureFolder
    split: Split = "test"
    shifted_split: Split | None = None
    in_dist_where: CohortFilter | None = None
    shifted_where: CohortFilter | None = None
    experiment: Name = "mimic-ihm-shift"
    out_dir: Path | None = None


class ScoreParams(_Coverage):
    """Parameters of ``score_mimic`` (``flows.score``): new patients, a registered model.

    Exactly one of ``mimic_dir``, ``exports_dir`` and ``features_dir`` says what to score.

    Attributes:
        model_uri: The registered version: ``models:/NAME@ALIAS`` (default: the rank-1
            champion) or ``models:/NAME/VERSION``.
        mimic_dir: Folder of raw MIMIC-III tables to score (outcome columns may be absent).
        exports_dir: A folder of dated exports (one sub-folder of tables each): its newest
            sub-folder holding an ICUSTAYS table is scored, and the report goes to
            ``out_dir/<that sub-folder's name>``. For a nightly schedule.
        features_dir: An existing feature folder (scoring or training) instead.
        out_dir: Report folder (owner-only).
        split: With a training feature folder, score only this split (None: every stay).
        as_of: The export's time, to which stays still in the ICU are measured (None: the
            newest event time of the export).
        coverage: Share of stays the model keeps; the most uncertain rest are referred.
        experiment: MLflow experiment of the scoring runs.
    """

    model_uri: ModelUri = SCORING_MODEL_URI
    mimic_dir: ExistingDir | None = None
    exports_dir: ExistingDir | None = None
    features_dir: FeatureFolder | None = None
    out_dir: Path
    split: Split | None = None
    as_of: NaiveTime | None = None
    experiment: Name = SCORING_EXPERIMENT

    @model_validator(mode="after")
    def _one_source(self) -> ScoreParams:
        given = [n for n in ("mimic_dir", "exports_dir", "features_dir") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of mimic_dir, exports_dir and features_dir, got "
                + (", ".join(given) or "none")
            )
        if self.split is not None and self.features_dir is None:
            raise ValueError("split applies to features_dir only")
        return self


class ClinicalParams(TrainSettings, SplitSettings, _Coverage):
    """Parameters of ``clinical_pipeline``: extraction, training and report settings together.

    The split settings are :class:`SplitSettings`', the training ones
    :class:`TrainSettings`' and ``coverage`` :class:`ReportParams`'; checked here as there,
    so a bad value fails before extraction starts.

    Attributes:
        mimic_dir: Folder with the raw MIMIC-III tables.
        out_dir: Output root: ``features/`` and ``reports/<method>/`` are written in it.
        task: The benchmark task (``ihm``, ``decompensation``, ``length-of-stay``,
            ``phenotyping``); a whole-stay task logs to ``mimic-<task>`` when
            ``experiment`` is the default one, and is not registered.
        force_extract: Extract even when the inputs are unchanged.
    """

    mimic_dir: ExistingDir
    out_dir: Path = Path("outputs/mimic")
    task: Task = "ihm"
    force_extract: bool = False

    @property
    def features_dir(self) -> Path:
        """Where the feature folder goes."""
        return self.out_dir / "features"

    @property
    def reports_dir(self) -> Path:
        """Where the per-method report folders go."""
        return self.out_dir / "reports"

    @property
    def checkpoints_dir(self) -> Path:
        """Where the per-method training checkpoints go."""
        return self.out_dir / "checkpoints"

    def extract_params(self) -> ExtractParams:
        """The parameters of its ``extract_mimic`` sub-flow."""
        split = self.model_dump(include=set(SplitSettings.model_fields))
        return ExtractParams(
            mimic_dir=self.mimic_dir,
            out_dir=self.features_dir,
            task=self.task,
            force=self.force_extract,
            **split,
        )

    def train_params(self) -> TrainParams:
        """The parameters of its ``train_mimic`` sub-flow (once the features exist)."""
        settings = self.model_dump(include=set(TrainSettings.model_fields))
        return TrainParams(
            features_dir=self.features_dir, checkpoint_dir=self.checkpoints_dir, **settings
        )

    def report_params(self, method: str, run_id: str) -> ReportParams:
        """The parameters of the ``report_mimic`` sub-flow of one trained run."""
        return ReportParams(
            run_id=run_id,
            features_dir=self.features_dir,
            out_dir=self.reports_dir / method,
            coverage=self.coverage,
        )


#: The demo's MLflow experiment and registered models, apart from the real ones.
DEMO_EXPERIMENT = "demo-mimic-ihm"
DEMO_REGISTER_AS = "demo-mimic-ihm-{method}"


class DemoParams(DeviceChecked):
    """Parameters of the ``demo`` flow.

    Attributes:
        out_dir: Output root: ``mimic-synthetic/`` (raw tables), ``mimic/`` (features and
            reports), ``icu-exports/`` (a second synthetic export: new patients) and
            ``scoring/`` (their report).
        patients: Synthetic patients (about 1.2 ICU stays each).
        steps: Training steps of each EHR model.
        image_epochs: Training epochs of each digits model (None: the recipe's 30).
        severities: Corruption severities of the image validation.
        seed: Seed of the synthetic cohort and the splits.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        torch_threads: CPU threads of torch (0: torch's default, one per core).
        progress: Show training progress bars on the terminal.
    """

    out_dir: Path = Path("outputs")
    # Fewer leave the training split smaller than one batch of the deterministic model.
    patients: Annotated[int, Field(ge=200)] = 1000
    steps: Annotated[int, Field(ge=10)] = 300
    image_epochs: Annotated[float, Field(gt=0)] | None = None
    severities: Severities = [1, 3, 5]
    seed: Seed = 0
    device: Device = "cpu"
    torch_threads: Annotated[int, Field(ge=0)] = 1
    progress: bool = False

    def clinical_params(self, model: dict[str, int]) -> ClinicalParams:
        """The demo's ``clinical_pipeline``: a short run of both LSTMs of size ``model``."""
        every = max(self.steps // 5, 1)
        return ClinicalParams(
            mimic_dir=self.out_dir / "mimic-synthetic",
            out_dir=self.out_dir / "mimic",
            train={
                "schedule": {"length": self.steps, "kl_anneal": self.steps // 2},
                "eval_every": every,
                # A rerun of a killed demo resumes from the last one (mimic/checkpoints).
                "checkpoint_every": every,
                "device": self.device,
            },
            model=model,
            experiment=DEMO_EXPERIMENT,
            # Its own registered models: a demo never moves the champion of a real one.
            register_as=DEMO_REGISTER_AS,
            promote_if_better=True,
            seed=self.seed,
            progress=self.progress,
        )

    @property
    def exports_dir(self) -> Path:
        """Where the demo writes tonight's synthetic export (new patients) to score."""
        return self.out_dir / "icu-exports"

    def score_params(self) -> ScoreParams:
        """The demo's ``score_mimic``: its rank-1 champion scores the newest export."""
        return ScoreParams(
            model_uri=f"models:/{registered_model_name(DEMO_REGISTER_AS, 'rank1')}@champion",
            exports_dir=self.exports_dir,
            out_dir=self.out_dir / "scoring",
            experiment=f"{DEMO_EXPERIMENT}-scoring",
        )

    def benchmark_params(self):
        """The demo's ``image_benchmark``: the digits CNN and its twin, then validation."""
        from flows.image_params import ImageBenchmarkParams

        return ImageBenchmarkParams(
            epochs=self.image_epochs,
            severities=self.severities,
            device=self.device,
            experiment="demo-images",
            progress=self.progress,
        )


def defaults(model: type[M]) -> M:
    """The model's defaults as attributes, for the CLI's options (declared once, here).

    Not validated: required parameters are missing from it, and reading one fails.
    """
    return model.model_construct()


def validate(flow_name: str, model: type[M], values: M | dict[str, Any]) -> M:
    """Validate a flow's parameters; raise :class:`ParameterError` naming the first bad one.

    Args:
        flow_name: Name of the flow, for the message.
        model: The parameter model.
        values: The parameters: already a ``model`` (returned as it is), or a mapping
            (from a deployment, the Prefect UI or the CLI) where None stands for the
            model's default.

    Returns:
        The validated (and coerced) parameters.

    Raises:
        ParameterError: ``"<flow>: parameter '<name>': <reason>"``.
    """
    if isinstance(values, model):
        return values
    given = {name: value for name, value in dict(values).items() if value is not None}
    try:
        return model.model_validate(given)
    except ValidationError as err:
        raise ParameterError(f"{flow_name}: {describe(err)}") from None


def describe(err: ValidationError) -> str:
    """One line for the first error of a pydantic ``ValidationError``."""
    first = err.errors()[0]
    location = ".".join(str(part) for part in first["loc"])
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown parameter"
    if not location:
        return message
    given = first.get("input")
    # Our own checks (value_error) already say what they got; pydantic's built-in ones don't.
    own = first["type"] in ("value_error", "missing") or isinstance(given, dict)
    shown = "" if own else f" (got {given!r})"
    return f"parameter {location!r}: {message}{shown}"
