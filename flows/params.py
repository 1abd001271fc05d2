"""Validated parameters of every flow.

Each flow validates its parameters with one of these pydantic models as its very first step,
before any task runs, so a bad value from the CLI, the Prefect UI or a deployment YAML fails
at once with a :class:`ParameterError` whose message names the parameter, for example
``train_mimic: parameter 'train.optim.lr': must be a finite number > 0, got -1.0``.

The flows themselves turn off Prefect's own signature validation (``validate_parameters=
False``) so that there is exactly one place, here, that coerces and checks values, and one
error format. The models only depend on pydantic, so the CLI and ``rank1 serve`` can check a
deployment's parameters without importing Prefect or torch (torch is imported only to check
that a requested CUDA device exists).

A CUDA device is checked against the machine that validates: pass
``context={RUNS_HERE: False}`` to ``model_validate`` where the flow will run elsewhere (a
deployment registered for a work pool's workers, which check when their run starts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

Method = Literal["rank1", "deterministic", "ensemble"]
Split = Literal["train", "val", "test"]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
Seed = Annotated[int, Field(ge=0)]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")]
RunId = Annotated[str, Field(pattern=r"^[0-9a-zA-Z_-]{8,64}$")]

M = TypeVar("M", bound=BaseModel)

#: Validation-context key; False skips the checks that only hold where the flow runs.
RUNS_HERE = "runs_here"


class ParameterError(ValueError):
    """A flow parameter is invalid; the message names the flow and the parameter."""


class _Params(BaseModel):
    # Unknown keys are refused so that a typo in a deployment YAML is an error, not a no-op.
    model_config = ConfigDict(extra="forbid", frozen=True)


def train_config(overrides: dict[str, Any], method: str):
    """A :class:`pipeline.config.TrainConfig` from nested overrides and a method.

    Raises:
        pipeline.config.ConfigError: Naming the bad field.
    """
    from pipeline.config import TrainConfig

    return TrainConfig.from_dict({**overrides, "method": method})


def _runs_here(info: ValidationInfo) -> bool:
    return not info.context or info.context.get(RUNS_HERE, True)


def _device_here(device: str | None, info: ValidationInfo) -> str | None:
    """``device``, refused when it is a CUDA device this machine does not have."""
    from pipeline.config import ConfigError, check_device

    if device is not None and _runs_here(info):
        try:
            check_device(device)
        except ConfigError as err:
            # "config field 'device': <reason>": pydantic names the parameter itself.
            raise ValueError(str(err).partition("': ")[2]) from None
    return device


def _check_train_configs(
    methods: list[str], overrides: dict[str, Any], info: ValidationInfo
) -> None:
    from pipeline.config import ConfigError, check_device

    for method in methods:
        try:
            config = train_config(overrides, method)
            if _runs_here(info):
                # Here, not when training starts: `--device cuda` without a GPU would
                # otherwise fail only after the extraction.
                check_device(config.device)
        except ConfigError as err:
            # ConfigError reads "config field 'optim.lr': ..."; report it as a parameter.
            field, _, reason = str(err).removeprefix("config field '").partition("': ")
            raise ValueError(f"parameter 'train.{field}': {reason}") from None


def _existing_dir(path: Path) -> Path:
    if not path.is_dir():
        raise ValueError(f"{path} is not a folder")
    return path


def _unique_methods(methods: list[str]) -> list[str]:
    if len(set(methods)) != len(methods):
        raise ValueError(f"each method may appear once, got {methods}")
    return methods


def _no_method_in_train(train: dict[str, Any]) -> dict[str, Any]:
    if "method" in train:
        raise ValueError("set the method with 'methods', not inside 'train'")
    return train


def _feature_folder(path: Path) -> Path:
    if not (path / "manifest.json").is_file():
        raise ValueError(f"{path} is not a feature folder (no manifest.json); run extraction")
    return path


class ExtractParams(_Params):
    """Parameters of ``extract_mimic``.

    Attributes:
        mimic_dir: Folder with the raw MIMIC-III tables (CSV or CSV.gz).
        out_dir: Feature folder to write.
        seed: Seed of the subject-level split.
        val_fraction: Share of subjects in the validation split.
        test_fraction: Share of subjects in the test split.
        force: Extract even when the inputs are unchanged since the last extraction.
    """

    mimic_dir: Path
    out_dir: Path
    seed: Seed = 0
    # Checked by features.mimic.splits.check_split_fractions, which says why.
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    force: bool = False

    @field_validator("mimic_dir")
    @classmethod
    def _mimic_dir_exists(cls, path: Path) -> Path:
        return _existing_dir(path)

    @model_validator(mode="after")
    def _check_fractions(self) -> ExtractParams:
        from features.mimic.splits import check_split_fractions

        check_split_fractions(self.val_fraction, self.test_fraction)
        return self


class ModelSizes(_Params):
    """Layer sizes of the EHR LSTM (defaults: the paper's)."""

    projection_dim: Annotated[int, Field(ge=1)] = 32
    rnn_dim: Annotated[int, Field(ge=1)] = 256
    hidden_dim: Annotated[int, Field(ge=1)] = 128


class TrainParams(_Params):
    """Parameters of ``train_mimic``.

    Attributes:
        features_dir: Feature folder written by extraction.
        methods: Models to train, each into its own MLflow run: ``rank1`` (the rank-1
            LSTM), ``deterministic`` (its deterministic twin), ``ensemble`` (a deep
            ensemble of deterministic LSTMs).
        train: Overrides of ``pipeline.config.TrainConfig`` as a nested mapping, e.g.
            ``{"schedule": {"length": 2000}, "device": "cpu"}``; the method comes from
            ``methods``.
        model: Layer sizes of the LSTM.
        experiment: MLflow experiment name.
        checkpoint_dir: Folder for training checkpoints (one sub-folder per method), or
            None for none.
        progress: Show training progress bars (for a terminal; off in served runs).
    """

    features_dir: Path
    methods: Annotated[list[Method], Field(min_length=1)] = ["rank1", "deterministic"]
    train: dict[str, Any] = Field(default_factory=dict)
    model: ModelSizes = Field(default_factory=ModelSizes)
    experiment: Annotated[str, Field(min_length=1)] = "mimic-ihm"
    checkpoint_dir: Path | None = None
    progress: bool = False

    @field_validator("features_dir")
    @classmethod
    def _is_feature_folder(cls, path: Path) -> Path:
        return _feature_folder(path)

    @field_validator("methods")
    @classmethod
    def _unique(cls, methods: list[str]) -> list[str]:
        return _unique_methods(methods)

    @field_validator("train")
    @classmethod
    def _method_not_in_train(cls, train: dict[str, Any]) -> dict[str, Any]:
        return _no_method_in_train(train)

    @model_validator(mode="after")
    def _check_train(self, info: ValidationInfo) -> TrainParams:
        _check_train_configs(self.methods, self.train, info)
        return self

    def train_config(self, method: str):
        """The full :class:`pipeline.config.TrainConfig` of one method."""
        return train_config(self.train, method)

    def ehr_config(self):
        """The :class:`rank1.models.EHRConfig` with these layer sizes."""
        from rank1.models import EHRConfig

        return EHRConfig(**self.model.model_dump())


class ReportParams(_Params):
    """Parameters of ``report_mimic``.

    Attributes:
        run_id: MLflow run written by ``train_mimic``.
        features_dir: Feature folder (the same one the run was trained on).
        out_dir: Report folder (owner-only).
        split: Split to report on.
        coverage: Share of stays the model keeps; the most uncertain rest are referred.
    """

    run_id: RunId
    features_dir: Path
    out_dir: Path
    split: Split = "test"
    coverage: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8

    @field_validator("features_dir")
    @classmethod
    def _is_feature_folder(cls, path: Path) -> Path:
        return _feature_folder(path)


class ClinicalParams(_Params):
    """Parameters of ``clinical_pipeline`` (extraction, training, reports).

    Attributes:
        mimic_dir: Folder with the raw MIMIC-III tables.
        out_dir: Output root: ``features/`` and ``reports/<method>/`` are written in it.
        methods: Models to train (see :class:`TrainParams`).
        train: ``TrainConfig`` overrides (see :class:`TrainParams`).
        model: Layer sizes of the LSTM.
        experiment: MLflow experiment name.
        seed: Seed of the subject-level split.
        val_fraction: Share of subjects in the validation split.
        test_fraction: Share of subjects in the test split.
        coverage: Report coverage (see :class:`ReportParams`).
        force_extract: Extract even when the inputs are unchanged.
        progress: Show training progress bars.
    """

    mimic_dir: Path
    out_dir: Path = Path("outputs/mimic")
    methods: Annotated[list[Method], Field(min_length=1)] = ["rank1", "deterministic"]
    train: dict[str, Any] = Field(default_factory=dict)
    model: ModelSizes = Field(default_factory=ModelSizes)
    experiment: Annotated[str, Field(min_length=1)] = "mimic-ihm"
    seed: Seed = 0
    # Checked by features.mimic.splits.check_split_fractions, which says why.
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    coverage: Annotated[float, Field(gt=0.0, le=1.0)] = 0.8
    force_extract: bool = False
    progress: bool = False

    @field_validator("mimic_dir")
    @classmethod
    def _mimic_dir_exists(cls, path: Path) -> Path:
        return _existing_dir(path)

    @field_validator("methods")
    @classmethod
    def _unique(cls, methods: list[str]) -> list[str]:
        return _unique_methods(methods)

    @field_validator("train")
    @classmethod
    def _method_not_in_train(cls, train: dict[str, Any]) -> dict[str, Any]:
        return _no_method_in_train(train)

    @model_validator(mode="after")
    def _check_together(self, info: ValidationInfo) -> ClinicalParams:
        # The same checks as the sub-flows, so a bad value fails before extraction starts.
        from features.mimic.splits import check_split_fractions

        check_split_fractions(self.val_fraction, self.test_fraction)
        _check_train_configs(self.methods, self.train, info)
        return self

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


ImageMethod = Literal["rank1", "deterministic", "ensemble"]
Severity = Annotated[int, Field(ge=1, le=5)]


class ImageTrainParams(_Params):
    """Parameters of ``train_images``.

    Attributes:
        preset: A recipe of ``pipeline.images.PRESETS`` (``cnn-digits``,
            ``wrn28-10-cifar10``, ``wrn28-10-cifar100``, ``resnet50-imagenet``).
        methods: Models to train, each into its own MLflow run.
        dataset: Train the preset's model on another dataset (None: the preset's).
        data_dir: Folder of the clean data (not needed for digits).
        epochs: Training length (the recipe's schedule scales with it).
        batch_size: Unique images per step (the learning rate scales linearly).
        ensemble_size: K.
        posterior: ``normal`` or ``cauchy`` rank-1 factors.
        seed: Training seed.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        num_workers: DataLoader workers.
        experiment: MLflow experiment name (None: the preset's).
        checkpoint_dir: Checkpoint folder (one sub-folder per method), or None.
        progress: Show training progress bars.
    """

    preset: str = "cnn-digits"
    methods: Annotated[list[ImageMethod], Field(min_length=1)] = ["rank1"]
    dataset: Literal["digits", "cifar10", "cifar100", "imagenet"] | None = None
    data_dir: Path | None = None
    epochs: Annotated[float, Field(gt=0)] | None = None
    batch_size: Annotated[int, Field(ge=1)] | None = None
    ensemble_size: Annotated[int, Field(ge=1)] | None = None
    posterior: Literal["normal", "cauchy"] | None = None
    seed: Seed | None = None
    device: Device | None = None
    num_workers: Annotated[int, Field(ge=0)] | None = None
    experiment: Annotated[str, Field(min_length=1)] | None = None
    checkpoint_dir: Path | None = None
    progress: bool = False

    @field_validator("methods")
    @classmethod
    def _unique(cls, methods: list[str]) -> list[str]:
        return _unique_methods(methods)

    @field_validator("data_dir")
    @classmethod
    def _data_dir_exists(cls, path: Path | None) -> Path | None:
        return None if path is None else _existing_dir(path)

    @field_validator("device")
    @classmethod
    def _device_exists(cls, device: str | None, info: ValidationInfo) -> str | None:
        return _device_here(device, info)

    @model_validator(mode="after")
    def _check_jobs(self) -> ImageTrainParams:
        from pipeline.config import ConfigError

        for method in self.methods:
            try:
                self.job(method)
            except ConfigError as err:
                field, _, reason = str(err).removeprefix("config field '").partition("': ")
                if not reason:  # e.g. "unknown image preset ..."
                    raise ValueError(f"parameter 'preset': {err}") from None
                raise ValueError(f"parameter {field!r}: {reason}") from None
        return self

    def job(self, method: str):
        """The ``pipeline.images.ImageJobConfig`` of one method."""
        from pipeline.images import image_preset

        return image_preset(
            self.preset,
            method=method,
            dataset=self.dataset,
            data_dir=self.data_dir,
            epochs=self.epochs,
            batch_size=self.batch_size,
            ensemble_size=self.ensemble_size,
            posterior=self.posterior,
            seed=self.seed,
            device=self.device,
            num_workers=self.num_workers,
            experiment=self.experiment,
        )


class ImageValidateParams(_Params):
    """Parameters of ``validate_images``.

    Attributes:
        run_id: MLflow run written by ``train_images``.
        corruptions: Corruption names (None: every corruption generated on the fly).
        severities: Severities, 1 to 5.
        data_dir: Clean data folder (None: the one the run was trained with).
        corrupted_dir: Official CIFAR-10-C / CIFAR-100-C / ImageNet-C release (None:
            corruptions are generated on the fly).
        compare_run_id: Another run (e.g. the deterministic twin) drawn in the plot.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """

    run_id: RunId
    corruptions: Annotated[list[str], Field(min_length=1)] | None = None
    severities: Annotated[list[Severity], Field(min_length=1)] = [1, 2, 3, 4, 5]
    data_dir: Path | None = None
    corrupted_dir: Path | None = None
    compare_run_id: RunId | None = None
    device: Device = "auto"

    @field_validator("data_dir", "corrupted_dir")
    @classmethod
    def _dir_exists(cls, path: Path | None) -> Path | None:
        return None if path is None else _existing_dir(path)

    @field_validator("device")
    @classmethod
    def _device_exists(cls, device: str, info: ValidationInfo) -> str:
        return _device_here(device, info)

    @field_validator("severities")
    @classmethod
    def _unique_severities(cls, severities: list[int]) -> list[int]:
        if len(set(severities)) != len(severities):
            raise ValueError(f"each severity may appear once, got {severities}")
        return severities

    @model_validator(mode="after")
    def _known_corruptions(self) -> ImageValidateParams:
        # With an official release the names are its file names; only generated
        # corruptions can be checked up front.
        if self.corruptions is not None and self.corrupted_dir is None:
            from features.images.corruptions import available_corruptions

            known = available_corruptions()
            unknown = [name for name in self.corruptions if name not in known]
            if unknown:
                raise ValueError(
                    f"parameter 'corruptions': unknown corruption {unknown[0]!r} "
                    f"(known: {', '.join(known)})"
                )
        return self

    def names(self) -> list[str]:
        """The corruptions to evaluate."""
        from features.images.corruptions import available_corruptions

        return list(self.corruptions or available_corruptions())


class DemoParams(_Params):
    """Parameters of the ``demo`` flow.

    Attributes:
        out_dir: Output root: ``mimic-synthetic/`` (raw tables), ``mimic/`` (features and
            reports).
        patients: Synthetic patients (about 1.2 ICU stays each).
        steps: Training steps of each EHR model.
        image_epochs: Training epochs of each digits model (None: the recipe's 30).
        severities: Corruption severities of the image validation.
        seed: Seed of the synthetic cohort and the splits.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        torch_threads: CPU threads of torch (None: torch's default, one per core).
        progress: Show training progress bars on the terminal.
    """

    out_dir: Path = Path("outputs")
    # Fewer leave the training split smaller than one batch of the deterministic model.
    patients: Annotated[int, Field(ge=200)] = 1000
    steps: Annotated[int, Field(ge=10)] = 300
    image_epochs: Annotated[float, Field(gt=0)] | None = None
    severities: Annotated[list[Severity], Field(min_length=1)] = [1, 3, 5]
    seed: Seed = 0
    device: Device = "cpu"
    torch_threads: Annotated[int, Field(ge=1)] | None = 1
    progress: bool = False

    @field_validator("device")
    @classmethod
    def _device_exists(cls, device: str, info: ValidationInfo) -> str:
        return _device_here(device, info)


def validate(flow_name: str, model: type[M], values: dict[str, Any]) -> M:
    """Validate a flow's parameters; raise :class:`ParameterError` naming the first bad one.

    Args:
        flow_name: Name of the flow, for the message.
        model: The parameter model.
        values: The flow's arguments.

    Returns:
        The validated (and coerced) parameters.

    Raises:
        ParameterError: ``"<flow>: parameter '<name>': <reason>"``.
    """
    try:
        return model.model_validate(values)
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
