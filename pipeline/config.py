"""Typed training configs whose defaults are the paper's recipes (spec sections 1.7 and 5).

A :class:`TrainConfig` holds everything the trainer needs besides the model and the data:
the method (rank-1 BNN, deterministic model or deep ensemble), the optimiser, the learning
rate and KL-annealing schedule, batch size, seed, device, precision, evaluation and
checkpointing. Its defaults are the MIMIC-III recipe; :mod:`pipeline.recipes` holds every
named recipe (EHR, CIFAR, ImageNet, digits). An :class:`ImageJobConfig` adds the data and
model of an image job to its :class:`TrainConfig`.

Configs convert to and from plain nested dicts (:meth:`TrainConfig.to_dict`,
:meth:`TrainConfig.from_dict`) so they can be written as YAML, logged as MLflow params and
passed to Prefect flows. Loading checks every field's type and value and names the bad field
(for example ``optim.lr``) in the error. :func:`read_yaml` reads a YAML file into such a dict
with one-line errors naming the file, line and column; :func:`check_device` refuses a CUDA
device this machine does not have, before any work starts.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Method = Literal["rank1", "deterministic", "ensemble"]
Posterior = Literal["normal", "cauchy"]
OptimizerName = Literal["adam", "sgd"]
Unit = Literal["steps", "epochs"]
Device = str  # 'auto', 'cpu', 'cuda', 'cuda:1', ...
DatasetName = Literal["digits", "cifar10", "cifar100", "imagenet"]
ModelName = Literal["wrn28-10", "resnet50", "small-cnn"]
_DEVICE = r"auto|cpu|cuda(:[0-9]+)?"


class ConfigError(ValueError):
    """A config dict or value is invalid; the message names the field."""


class DeviceUnavailableError(ConfigError):
    """The configured device does not exist on this machine.

    A ``ValueError`` like every config error, so the flows do not retry it: a missing GPU
    does not appear between two tries.
    """


@dataclass
class OptimConfig:
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
        fast_weight_lr_multiplier: LR multiplier of the rank-1 factor posteriors.
        decay_norm: Apply ``weight_decay`` to normalisation layers (BatchNorm gamma/beta).
            True for CIFAR; the ImageNet recipe sets False, reproducing the reference,
            whose name filter missed ResNet-50's ``bn*`` layers (spec 1.7).
    """

    name: OptimizerName = "adam"
    lr: float = 3.0352e-4
    momentum: float = 0.9
    nesterov: bool = True
    # The MIMIC script folds its L2 terms into the KL (divided by N_train and annealed,
    # spec 4.4 / pitfall 10), which makes them negligible; no decay reproduces that.
    weight_decay: float = 0.0
    grad_clip_norm: float | None = 7.29199
    fast_weight_lr_multiplier: float = 1.0
    decay_norm: bool = True


@dataclass
class ScheduleConfig:
    """Training length, learning-rate schedule and KL annealing.

    All lengths are counted in ``unit``: optimiser steps (MIMIC recipe) or epochs of the
    unique training set (image recipes; converted with the steps per epoch of the data).

    Attributes:
        unit: ``"steps"`` or ``"epochs"``.
        length: Training length.
        warmup: Linear LR warm-up from 0 over this long (0 = none).
        decay_at: Points where the LR is multiplied by ``decay_factor``.
        decay_factor: Step-decay factor (0.2 CIFAR, 0.1 ImageNet).
        kl_anneal: The KL weight grows linearly to 1 over this long:
            ``beta_t = min(1, (t + 1) / kl_anneal_steps)``.
    """

    unit: Unit = "steps"
    length: float = 10_000
    warmup: float = 0
    decay_at: list[float] = field(default_factory=list)
    decay_factor: float = 1.0
    kl_anneal: float = 5_000


@dataclass
class TrainConfig:
    """Everything the trainer needs besides model and data; defaults: the MIMIC recipe.

    Attributes:
        method: ``"rank1"`` (rank-1 BNN), ``"deterministic"`` (the model with
            ``bayesian=False``) or ``"ensemble"`` (K independently trained deterministic
            models, seeds ``seed, seed + 1, ...``).
        posterior: Factor posterior (and prior) family of the rank-1 model.
        ensemble_size: K, members of the rank-1 mixture or of the deep ensemble.
        batch_size: Rows per forward pass and step (global, over all DDP processes). The
            rank-1 model sees ``batch_size // K`` unique examples tiled K times (the
            recipe's "batch 64 => 16 unique"); a deterministic model or ensemble member
            sees ``batch_size`` unique examples.
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
    ensemble_size: int = 4
    batch_size: int = 64
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    seed: int = 0
    device: Device = "auto"
    bf16: bool = True
    num_eval_samples: int = 1
    eval_every: int = 500
    checkpoint_every: int = 1_000
    patience: int = 0
    eval_batch_size: int = 256

    def __post_init__(self) -> None:
        validate(self)

    @property
    def unique_batch_size(self) -> int:
        """Unique training examples per step (all processes together)."""
        return self.batch_size // self.ensemble_size if self.method == "rank1" else self.batch_size

    @property
    def members(self) -> int:
        """Independently trained models: K for a deep ensemble, else 1."""
        return self.ensemble_size if self.method == "ensemble" else 1

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimiser steps of the whole run."""
        return to_steps(self.schedule.length, self.schedule.unit, steps_per_epoch)

    def to_dict(self) -> dict[str, Any]:
        """A nested dict of plain values (YAML / JSON / MLflow friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build a config from a (possibly partial) nested dict; missing keys keep defaults.

        Raises:
            ConfigError: Naming the field for an unknown key, a wrong type or a bad value.
        """
        return _from_dict(cls, data, "")

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with top-level fields changed (validated)."""
        return dataclasses.replace(self, **changes)


def to_steps(value: float, unit: Unit, steps_per_epoch: int) -> int:
    """Convert a length in ``unit`` to optimiser steps (rounded to the nearest step)."""
    return int(round(value * steps_per_epoch)) if unit == "epochs" else int(round(value))


@dataclass
class ImageJobConfig:
    """Everything an image job needs: data, model and training recipe.

    Attributes:
        preset: Name of the recipe this config came from.
        dataset: ``"digits"``, ``"cifar10"``, ``"cifar100"`` or ``"imagenet"``.
        model: ``"wrn28-10"``, ``"resnet50"`` or ``"small-cnn"``.
        train: The trainer config (method, K, posterior, optimiser, schedule, seed, ...).
            ``train.batch_size`` counts tiled rows (unique images x K for rank-1).
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
    base_lr: float
    lr_reference_batch: int
    prior_stddev: float = 0.1
    random_sign_init: float = 0.5
    data_dir: str | None = None
    val_fraction: float | None = None
    image_size: int | None = None
    train_augment: bool = True
    split_seed: int = 0
    corruption_seed: int = 0
    num_workers: int = 0
    experiment: str = "image-benchmarks"

    @property
    def unique_batch_size(self) -> int:
        """Unique training images per optimiser step."""
        return self.train.unique_batch_size

    def to_dict(self) -> dict[str, Any]:
        """A nested dict of plain values (JSON / MLflow friendly)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ImageJobConfig:
        """Rebuild a config from :meth:`to_dict` output (the train part is validated)."""
        values = dict(data)
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"config field {unknown[0]!r}: unknown field")
        values["train"] = TrainConfig.from_dict(values["train"])
        return cls(**values)


# --------------------------------------------------------------------------- validation


def _fail(name: str, message: str) -> None:
    raise ConfigError(f"config field {name!r}: {message}")


def validate(config: TrainConfig) -> None:
    """Check value ranges; raise :class:`ConfigError` naming the first bad field."""
    o, s = config.optim, config.schedule
    if config.method not in typing.get_args(Method):
        _fail("method", f"must be one of {typing.get_args(Method)}, got {config.method!r}")
    if config.posterior not in typing.get_args(Posterior):
        _fail("posterior", f"must be 'normal' or 'cauchy', got {config.posterior!r}")
    if config.ensemble_size < 1:
        _fail("ensemble_size", f"must be >= 1, got {config.ensemble_size}")
    if config.batch_size < 1:
        _fail("batch_size", f"must be >= 1, got {config.batch_size}")
    if config.method == "rank1" and config.batch_size % config.ensemble_size:
        _fail(
            "batch_size",
            f"{config.batch_size} rows cannot be tiled over ensemble_size="
            f"{config.ensemble_size} members (must be a multiple of K)",
        )
    if o.name not in typing.get_args(OptimizerName):
        _fail("optim.name", f"must be 'adam' or 'sgd', got {o.name!r}")
    for name, value in (("optim.lr", o.lr), ("schedule.length", s.length)):
        if not (math.isfinite(value) and value > 0):
            _fail(name, f"must be a finite number > 0, got {value}")
    if not 0 <= o.momentum < 1:
        _fail("optim.momentum", f"must be in [0, 1), got {o.momentum}")
    if o.weight_decay < 0:
        _fail("optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    if o.grad_clip_norm is not None and not o.grad_clip_norm > 0:
        _fail("optim.grad_clip_norm", f"must be > 0 or null, got {o.grad_clip_norm}")
    if o.fast_weight_lr_multiplier <= 0:
        _fail("optim.fast_weight_lr_multiplier", f"must be > 0, got {o.fast_weight_lr_multiplier}")
    if s.unit not in typing.get_args(Unit):
        _fail("schedule.unit", f"must be 'steps' or 'epochs', got {s.unit!r}")
    for name, value in (("schedule.warmup", s.warmup), ("schedule.kl_anneal", s.kl_anneal)):
        if value < 0:
            _fail(name, f"must be >= 0, got {value}")
    if any(b < a for a, b in zip(s.decay_at, s.decay_at[1:], strict=False)):
        _fail("schedule.decay_at", f"must be increasing, got {s.decay_at}")
    if not 0 < s.decay_factor <= 1:
        _fail("schedule.decay_factor", f"must be in (0, 1], got {s.decay_factor}")
    for name in ("num_eval_samples", "eval_batch_size"):
        if getattr(config, name) < 1:
            _fail(name, f"must be >= 1, got {getattr(config, name)}")
    for name in ("eval_every", "checkpoint_every", "patience"):
        if getattr(config, name) < 0:
            _fail(name, f"must be >= 0, got {getattr(config, name)}")
    if not isinstance(config.device, str) or not re.fullmatch(_DEVICE, config.device):
        _fail("device", f"must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {config.device!r}")


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
            f"config field {name!r}: {device!r} requested but CUDA is not available on this "
            "machine; use 'cpu' or 'auto'"
        )
    index = device.partition(":")[2]
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise DeviceUnavailableError(
            f"config field {name!r}: {device!r} requested but this machine has {count} CUDA "
            f"device(s), numbered from 0"
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


def _check_type(value: Any, hint: Any, name: str) -> Any:
    """Return ``value`` converted to ``hint`` where lossless (int -> float), else raise."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value not in typing.get_args(hint):
            _fail(name, f"must be one of {list(typing.get_args(hint))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        return _check_type(value, inner[0], name)
    if origin is list:
        if not isinstance(value, list | tuple):
            _fail(name, f"must be a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)
        return [_check_type(v, item, f"{name}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            _fail(name, f"must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(name, f"must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            _fail(name, f"must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            _fail(name, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {name}")


def _from_dict(cls: type, data: Any, prefix: str):
    if not isinstance(data, dict):
        _fail(prefix or "<root>", f"must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - fields)
    if unknown:
        _fail(f"{prefix}{unknown[0]}", f"unknown field (known: {', '.join(sorted(fields))})")
    kwargs = {}
    for key, value in data.items():
        hint = hints[key]
        name = f"{prefix}{key}"
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _from_dict(hint, value, f"{name}.")
        else:
            kwargs[key] = _check_type(value, hint, name)
    return cls(**kwargs)
