"""Typed training configs whose defaults are the paper's recipes (spec sections 1.7 and 5).

A :class:`TrainConfig` holds everything the trainer needs besides the model and the data:
the method (rank-1 BNN, deterministic model or deep ensemble), the optimiser, the learning
rate and KL-annealing schedule, batch size, seed, device, precision, evaluation and
checkpointing. Its defaults are the MIMIC-III recipe; :mod:`pipeline.recipes` holds every
named recipe (EHR, CIFAR, ImageNet, digits). An :class:`ImageJobConfig` adds the data and
model of an image job to its :class:`TrainConfig`.

The configs are frozen pydantic models and the only home of each default and each check.
They convert to and from plain nested dicts (:meth:`TrainConfig.to_dict`,
:meth:`TrainConfig.from_dict`) so they can be written as YAML, logged as MLflow params and
passed to Prefect flows. Loading is strict (a YAML ``lr: 1`` is 1.0, but ``true`` is not an
integer and ``"1"`` not a number) and every failure is one :class:`ConfigError` whose
``field`` names the bad field (for example ``optim.lr``) and whose ``reason`` says why.
:func:`read_yaml` reads a YAML file into such a dict with one-line errors naming the file,
line and column; :func:`check_device` refuses a CUDA device this machine does not have,
before any work starts.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

Method = Literal["rank1", "deterministic", "ensemble"]
Posterior = Literal["normal", "cauchy"]
OptimizerName = Literal["adam", "sgd"]
Unit = Literal["steps", "epochs"]
DatasetName = Literal["digits", "cifar10", "cifar100", "imagenet"]
ModelName = Literal["wrn28-10", "resnet50", "small-cnn"]
#: MLflow experiment of the MIMIC-III recipe's runs (the flows' and commands' default).
EHR_EXPERIMENT = "mimic-ihm"
#: The registered model an EHR training registers its model as (the flows', commands' and
#: ``pipeline.ehr.train_ehr``'s default): ``{method}`` is replaced by the method, so each
#: method's versions compete only with their own kind.
REGISTER_AS = "mimic-ihm-{method}"
#: The model that scores new patients unless told otherwise: the approved rank-1 version.
SCORING_MODEL_URI = "models:/mimic-ihm-rank1@champion"
#: The MLflow experiment of scoring runs (one run per scored export).
SCORING_EXPERIMENT = "mimic-ihm-scoring"
#: The device pattern: 'auto', 'cpu', 'cuda', 'cuda:1', ...
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"


class ConfigError(ValueError):
    """A config dict or value is invalid.

    Attributes:
        field: The bad field as a dotted path (``"optim.lr"``, ``"schedule.decay_at[1]"``),
            or None when the problem is not one field's (an unreadable file, say).
        reason: What is wrong with it, e.g. ``"must be a finite number > 0, got -1.0"``.
    """

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.field = field
        self.reason = reason
        super().__init__(reason if field is None else f"config field {field!r}: {reason}")


class DeviceUnavailableError(ConfigError):
    """The configured device does not exist on this machine.

    A ``ValueError`` like every config error, so the flows do not retry it: a missing GPU
    does not appear between two tries.
    """


# --------------------------------------------------------------------------- field types


def _positive_finite(value: float) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be a finite number > 0, got {value}")
    return value


#: Strict types: a bool is not an integer, a string is not a number; an int is a float.
Int = Annotated[int, Field(strict=True)]
Float = Annotated[float, Field(strict=True)]
PositiveFloat = Annotated[float, Field(strict=True), AfterValidator(_positive_finite)]
PositiveInt = Annotated[int, Field(strict=True, ge=1)]
Count = Annotated[int, Field(strict=True, ge=0)]
NonNegative = Annotated[float, Field(strict=True, ge=0)]
Device = Annotated[str, Field(strict=True, pattern=DEVICE_PATTERN)]


class _Config(BaseModel):
    """Frozen, strict, no unknown keys.

    Build from outside data with :meth:`from_dict` (its failures are :class:`ConfigError`);
    the constructor is for code that writes its values out, like the recipes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Build a config from a (possibly partial) nested dict; missing keys keep defaults.

        Raises:
            ConfigError: Naming the field for an unknown key, a wrong type or a bad value.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"must be a mapping, got {type(data).__name__}", "<root>")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise config_error(err) from None

    def to_dict(self) -> dict[str, Any]:
        """A nested dict of plain values (YAML / JSON / MLflow friendly; lists, no tuples)."""
        return self.model_dump()

    def replace(self, **changes: Any) -> Self:
        """A copy with top-level fields changed, validated again like :meth:`from_dict`.

        Fields left at their default stay defaults, so a default that depends on another
        field (the EHR batch size on the method) follows a changed ``method``.
        """
        given = {name: getattr(self, name) for name in self.model_fields_set}
        return type(self).from_dict({**given, **changes})


def config_error(err: ValidationError) -> ConfigError:
    """The :class:`ConfigError` of the first error of a pydantic ``ValidationError``.

    The one translation from pydantic's wording to this module's: the location becomes the
    dotted ``field`` and the reason says what was expected and what was given.
    """
    first = err.errors()[0]
    field = ""
    for part in first["loc"]:
        field += f"[{part}]" if isinstance(part, int) else f"{'.' if field else ''}{part}"
    return ConfigError(_reason(first), field or "<root>")


_EXPECTED = {
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "string_pattern_mismatch": "must be 'auto', 'cpu', 'cuda' or 'cuda:N'",
}
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def _reason(error: Any) -> str:
    kind, given, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "value_error":
        return error["msg"].removeprefix("Value error, ")
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}, got {given!r}"
    bound = next((f"{_BOUNDS[k]} {ctx[k]}" for k in _BOUNDS if k in ctx), None)
    if bound is not None:
        return f"must be {bound}, got {given!r}"
    return f"{_EXPECTED.get(kind, error['msg'])}, got {given!r}"


# --------------------------------------------------------------------------- configs


class OptimConfig(_Config):
    """Optimiser settings.

    Weight decay reaches the optimiser only through ``rank1.param_groups``: shared weights,
    biases and norm layers are decayed, the rank-1 factor posteriors never are (they are
    regularised by the KL alone, spec 1.7).

    Attributes:
        name: ``"adam"`` (MIMIC recipe) or ``"sgd"`` (image recipes, always with momentum).
        lr: Base learning rate (before warm-up and decay).
        momentum: SGD momentum (ignored by Adam).
        nesterov: Nesterov momentum for SGD.
        weight_decay: Coupled L2 decay of the shared parameters. The paper's L2 term is
            ``lambda * sum(theta^2)`` (it writes ``2 * lambda * tf.nn.l2_loss``), whose
            gradient is ``2 * lambda * theta``; with lambda = 1e-4 the PyTorch equivalent
            is ``weight_decay = 2e-4``.
        grad_clip_norm: Global gradient-norm clip, or None for no clipping.
        fast_weight_lr_multiplier: Multiplies the gradients of the rank-1 factor posteriors,
            as the reference does (``rank1.scale_factor_grads_``); under SGD that equals an
            LR multiplier, under Adam it is nearly a no-op (Adam ignores gradient scale).
        decay_norm: Apply ``weight_decay`` to normalisation layers (BatchNorm gamma/beta).
            True for CIFAR; the ImageNet recipe sets False, reproducing the reference,
            whose name filter missed ResNet-50's ``bn*`` layers (spec 1.7).
    """

    name: OptimizerName = "adam"
    lr: PositiveFloat = 3.0352e-4
    momentum: Annotated[float, Field(strict=True, ge=0, lt=1)] = 0.9
    nesterov: bool = True
    # The MIMIC script folds its L2 terms into the KL (divided by N_train and annealed,
    # spec 4.4 / pitfall 10), which makes them negligible; no decay reproduces that.
    weight_decay: NonNegative = 0.0
    grad_clip_norm: Annotated[float, Field(strict=True, gt=0)] | None = 7.29199
    fast_weight_lr_multiplier: Annotated[float, Field(strict=True, gt=0)] = 1.0
    decay_norm: bool = True


class ScheduleConfig(_Config):
    """Training length, learning-rate schedule and KL annealing.

    All lengths are counted in ``unit``: optimiser steps (MIMIC recipe) or epochs of the
    unique training set (image recipes; converted with the steps per epoch of the data).

    Attributes:
        unit: ``"steps"`` or ``"epochs"``.
        length: Training length.
        warmup: Linear LR warm-up from 0 over this long (0 = none).
        decay_at: Points where the LR is multiplied by ``decay_factor``.
        decay_factor: Step-decay factor (0.2 CIFAR, 0.1 ImageNet).
        kl_anneal: The KL weight grows linearly to ``kl_scale`` over this long:
            ``beta_t = kl_scale * min(1, (t + 1) / kl_anneal_steps)``.
        kl_scale: The KL weight once annealed (the reference's ``kl_scale`` flag; 1 in
            every recipe of the spec). Below 1 the KL pulls the factors less strongly
            than the ELBO asks (a tempered posterior).
    """

    unit: Unit = "steps"
    length: PositiveFloat = 10_000
    warmup: NonNegative = 0
    decay_at: list[Float] = Field(default_factory=list)
    decay_factor: Annotated[float, Field(strict=True, gt=0, le=1)] = 1.0
    kl_anneal: NonNegative = 5_000
    kl_scale: PositiveFloat = 1.0

    @field_validator("decay_at")
    @classmethod
    def _increasing(cls, points: list[float]) -> list[float]:
        if any(b < a for a, b in zip(points, points[1:], strict=False)):
            raise ValueError(f"must be increasing, got {points}")
        return points


def _default_batch_size(data: dict[str, Any]) -> int:
    # The reference MIMIC script's batch_size 64 counts tiled rows: the rank-1 LSTM sees 16
    # unique stays tiled 4x; its deterministic twin and each ensemble member see 64 stays.
    return 16 if data.get("method", "rank1") == "rank1" else 64


class TrainConfig(_Config):
    """Everything the trainer needs besides model and data; defaults: the MIMIC recipe.

    Attributes:
        method: ``"rank1"`` (rank-1 BNN), ``"deterministic"`` (the model with
            ``bayesian=False``) or ``"ensemble"`` (K independently trained deterministic
            models, seeds ``seed, seed + 1, ...``).
        posterior: Factor posterior (and prior) family of the rank-1 model.
        ensemble_size: K, members of the rank-1 mixture or of the deep ensemble.
        batch_size: Unique training examples per optimiser step (all DDP processes
            together), for every method: the rank-1 model's forward pass sees them tiled K
            times (``K * batch_size`` rows); a deterministic model or each ensemble member
            sees them once. Default: the MIMIC recipe's 16 stays for rank-1, 64 otherwise.
        optim: Optimiser settings.
        schedule: Length, LR schedule and KL annealing.
        seed: Seed of initialisation, data order and sampling.
        device: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ...
        bf16: bfloat16 autocast of the forward pass on CUDA (never on CPU).
        num_eval_samples: S, Monte Carlo passes per member at evaluation.
        eval_every: Evaluate on validation every this many steps (0 = only at the end).
        checkpoint_every: Write a checkpoint every this many steps (0 = only at the end).
        patience: Stop after this many evaluations without a better validation NLL
            (0 = never stop early; the best checkpoint is still selected).
        eval_batch_size: Unique examples per evaluation forward pass.
    """

    method: Method = "rank1"
    posterior: Posterior = "normal"
    ensemble_size: PositiveInt = 4
    batch_size: PositiveInt = Field(default_factory=_default_batch_size)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    seed: Int = 0
    device: Device = "auto"
    # The reference MIMIC recipe trains in fp32 (the image recipes choose their own).
    bf16: bool = False
    num_eval_samples: PositiveInt = 1
    # The reference MIMIC script validates every 100 steps for model selection.
    eval_every: Count = 100
    checkpoint_every: Count = 1_000
    patience: Count = 0
    eval_batch_size: PositiveInt = 256

    @property
    def members(self) -> int:
        """Independently trained models: K for a deep ensemble, else 1."""
        return self.ensemble_size if self.method == "ensemble" else 1

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps of the whole run."""
        return to_steps(self.schedule.length, self.schedule.unit, steps_per_epoch)


def to_steps(value: float, unit: Unit, steps_per_epoch: int) -> int:
    """Convert a length in ``unit`` to optimiser steps (rounded to the nearest step)."""
    return int(round(value * steps_per_epoch)) if unit == "epochs" else int(round(value))


class ImageJobConfig(_Config):
    """Everything an image job needs: data, model and training recipe.

    Attributes:
        preset: Name of the recipe this config came from.
        dataset: ``"digits"``, ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        model: ``"wrn28-10"``, ``"resnet50"`` or ``"small-cnn"``.
        train: The trainer config (method, K, posterior, optimiser, schedule, seed, ...).
            ``train.batch_size`` counts unique images per step (tiled K times for rank-1).
        base_lr: Learning rate for ``lr_reference_batch`` unique images per step.
        lr_reference_batch: Unique batch the base LR is quoted for.
        prior_stddev: Prior N(1, s^2) (or Cauchy(1, s)) scale of the rank-1 factors.
        random_sign_init: Factor-mean init (``v > 0``: +-1 signs, +1 w.p. v).
        data_dir: Folder of the clean data (None for digits).
        val_fraction: Share of the training images held out for model selection (None:
            the dataset default, 0.1 for digits and 0 for CIFAR / ImageNet as in the paper).
        image_size: Digits side length or ImageNet crop (None: the dataset default).
        train_augment: The recipe's training augmentation (crop and flip).
        split_seed: Seed of the train / val (/ digits test) split; fixed so that every
            method is trained and tested on the same images.
        corruption_seed: Seed of the on-the-fly corruptions.
        num_workers: DataLoader worker processes.
        experiment: MLflow experiment name.
    """

    preset: str
    dataset: DatasetName
    model: ModelName
    train: TrainConfig
    base_lr: PositiveFloat
    lr_reference_batch: PositiveInt
    prior_stddev: Annotated[float, Field(strict=True, gt=0)] = 0.1
    random_sign_init: Float = 0.5
    data_dir: str | None = None
    val_fraction: Annotated[float, Field(strict=True, ge=0, lt=1)] | None = None
    image_size: PositiveInt | None = None
    train_augment: bool = True
    split_seed: Int = 0
    corruption_seed: Int = 0
    num_workers: Count = 0
    experiment: Annotated[str, Field(min_length=1)] = "image-benchmarks"


# --------------------------------------------------------------------------- devices, YAML


def check_device(device: str, name: str = "device") -> None:
    """Refuse a CUDA device this machine does not have (``auto`` and ``cpu`` always pass).

    Called where parameters are validated, so ``--device cuda`` on a machine without a GPU
    fails before any data is read, not when training starts.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        name: The field named in the error.

    Raises:
        DeviceUnavailableError: When CUDA is not available or ``N`` is not a device here.
    """
    if not device.startswith("cuda"):
        return
    import torch  # only for CUDA devices: checking "cpu" must not cost the torch import

    if not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"{device!r} requested but CUDA is not available on this machine; use 'cpu' or 'auto'",
            name,
        )
    index = device.partition(":")[2]
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise DeviceUnavailableError(
            f"{device!r} requested but this machine has {count} CUDA device(s), numbered from 0",
            name,
        )


def read_yaml(path: str | os.PathLike) -> Any:
    """Parse a UTF-8 YAML file (``yaml.safe_load``: plain data only, never objects).

    Args:
        path: The file.

    Returns:
        The parsed document (None for an empty file).

    Raises:
        ConfigError: One line naming the file and, for a syntax error, the line and column.
    """
    import yaml

    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start})"
        ) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML{_yaml_position(err)}") from None


def _yaml_position(err: Exception) -> str:
    """`` at line L, column C: problem`` of a YAML error (1-based), without its snippet."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is None or problem is None:
        # e.g. a ReaderError (a control character): its first line says what and where.
        return f": {str(err).splitlines()[0]}"
    return f" at line {mark.line + 1}, column {mark.column + 1}: {problem}"


def registered_model_name(register_as: str, method: str) -> str:
    """The registered model name of a ``register_as`` value: its ``{method}`` filled in.

    Args:
        register_as: A name such as ``mimic-ihm-{method}`` (:data:`REGISTER_AS`) or a
            plain one (every method's versions then share one registered model).
        method: The training method.

    Returns:
        The name, e.g. ``mimic-ihm-rank1``.

    Raises:
        ConfigError: A name that is not letters, digits, '_', '.' or '-' (with
            ``{method}`` as the only placeholder).
    """
    name = register_as.replace("{method}", method)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(
            "a registered model name must be letters, digits, '_', '.' or '-' (starting "
            f"with a letter or digit; '{{method}}' stands for the method), got {register_as!r}"
        )
    return name
