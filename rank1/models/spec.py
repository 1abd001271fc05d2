"""Models as plain data: a kind name and a config dataclass, rebuilt from plain arguments.

A trained model is stored as its weights (a state dict) plus its :class:`ModelSpec` as
JSON, never as a pickled object. Loading rebuilds the module through :func:`build`, so
nothing but the classes named in :data:`KINDS` can come out of a stored model.

Kinds: ``"ehr"`` (:class:`EHRModel`), ``"small_cnn"`` (:class:`SmallCNN`),
``"wide_resnet"`` (:class:`WideResNet`), ``"resnet50"`` (:class:`ResNet50`) and
``"deep_ensemble"`` (:class:`DeepEnsemble` of any of them, members described one by one).

The JSON form is strict: an unknown kind, an unknown or missing key, or a value of the
wrong type is refused with one line naming where it is (e.g. ``config.rank1.prior``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from rank1.models.deep_ensemble import DeepEnsemble
from rank1.models.ehr import EHRConfig, EHRModel
from rank1.models.resnet import ResNet50, ResNet50Config
from rank1.models.small_cnn import SmallCNN, SmallCNNConfig
from rank1.models.wide_resnet import WideResNet, WideResNetConfig

#: Kind name -> (model class, config dataclass) of every single model that can be stored.
KINDS: dict[str, tuple[type[nn.Module], type]] = {
    "ehr": (EHRModel, EHRConfig),
    "small_cnn": (SmallCNN, SmallCNNConfig),
    "wide_resnet": (WideResNet, WideResNetConfig),
    "resnet50": (ResNet50, ResNet50Config),
}
DEEP_ENSEMBLE = "deep_ensemble"
#: Config fields added after models were first stored: a stored config without them
#: rebuilds with their defaults (the model it described); every other key stays required.
ADDED_FIELDS: dict[type, frozenset[str]] = {
    EHRConfig: frozenset({"output_dim", "per_step"}),
}
#: Longest value quoted in an error message.
_QUOTE_CHARS = 40


class ModelSpecError(ValueError):
    """A model description is not one this library can build (one line, names the key)."""


@dataclass(frozen=True)
class DeepEnsembleConfig:
    """Configuration of a :class:`DeepEnsemble`: one spec per member.

    Attributes:
        members: The members' specs, in member order (they may differ).
    """

    members: tuple[ModelSpec, ...]


@dataclass(frozen=True)
class ModelSpec:
    """What a model is, as plain data: enough to rebuild it (untrained) with :func:`build`.

    Attributes:
        kind: A key of :data:`KINDS` or ``"deep_ensemble"``.
        config: The kind's config dataclass (:class:`DeepEnsembleConfig` for an ensemble).
    """

    kind: str
    config: Any

    def build(self) -> nn.Module:
        """A new, freshly initialised module of this spec."""
        return build(self.kind, self.config)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form ``{"kind": ..., "config": {...}}`` (tuples become lists)."""
        if self.kind == DEEP_ENSEMBLE:
            config = {"members": [member.to_dict() for member in self.config.members]}
        else:
            config = _to_plain(self.config)
        return {"kind": self.kind, "config": config}

    @classmethod
    def from_dict(cls, data: Any, where: str = "model") -> ModelSpec:
        """Read the form written by :meth:`to_dict`, refusing anything else.

        Args:
            data: The parsed JSON object.
            where: Name of ``data`` in error messages.

        Returns:
            The spec; ``from_dict(spec.to_dict()) == spec`` for every spec.

        Raises:
            ModelSpecError: One line naming the unknown kind, the unknown or missing key,
                or the value of the wrong type.
        """
        _check_keys(data, {"kind", "config"}, where)
        kind = data["kind"]
        return cls(kind, _config_from_dict(kind, data["config"], where))


def build(kind: str, config: Any) -> nn.Module:
    """Construct a model of ``kind`` from its config (dataclass or JSON-ready mapping).

    Args:
        kind: A key of :data:`KINDS` or ``"deep_ensemble"``.
        config: The kind's config dataclass, or its :meth:`ModelSpec.to_dict` mapping form.

    Returns:
        A new module with freshly initialised weights (load a state dict into it).

    Raises:
        ModelSpecError: If the kind is unknown or the config does not fit it.
    """
    if isinstance(config, Mapping):
        config = _config_from_dict(kind, config, "config")
    if kind == DEEP_ENSEMBLE:
        if not isinstance(config, DeepEnsembleConfig):
            raise ModelSpecError(f"a deep_ensemble needs a DeepEnsembleConfig, got {config!r}")
        return DeepEnsemble([member.build() for member in config.members])
    model_class, config_class = _kind(kind, "kind")
    if type(config) is not config_class:
        raise ModelSpecError(
            f"a {kind} model needs a {config_class.__name__}, got {type(config).__name__}"
        )
    return model_class(config)


def model_spec(model: nn.Module) -> ModelSpec:
    """The :class:`ModelSpec` that rebuilds ``model``'s architecture.

    Args:
        model: One of the :data:`KINDS` models or a :class:`DeepEnsemble` of them.

    Returns:
        The spec (a copy of the model's config: later edits to either do not leak).

    Raises:
        TypeError: If the model is not one of the library's models.
    """
    if type(model) is DeepEnsemble:
        members = tuple(model_spec(member) for member in model.members)
        return ModelSpec(DEEP_ENSEMBLE, DeepEnsembleConfig(members))
    for kind, (model_class, _) in KINDS.items():
        if type(model) is model_class:
            return ModelSpec(kind, _copy(model.config))
    known = ", ".join(cls.__name__ for cls, _ in KINDS.values())
    raise TypeError(
        f"cannot describe a {type(model).__name__} as a model spec; storable models are "
        f"{known} and DeepEnsemble of them"
    )


# --------------------------------------------------------------------------- plain form


def _copy(config: Any) -> Any:
    # A JSON round trip is an exact deep copy of a config and checks it is storable.
    return _from_plain(type(config), _to_plain(config), "config")


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_to_plain(item) for item in value]
    return value


def _quote(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _QUOTE_CHARS else text[: _QUOTE_CHARS - 3] + "..."


def _kind(kind: Any, where: str) -> tuple[type[nn.Module], type]:
    if not isinstance(kind, str) or kind not in KINDS:
        known = ", ".join([*KINDS, DEEP_ENSEMBLE])
        raise ModelSpecError(f"{where}: unknown model kind {_quote(kind)}; expected one of {known}")
    return KINDS[kind]


def _check_keys(data: Any, expected: set[str], where: str) -> None:
    if not isinstance(data, Mapping):
        raise ModelSpecError(f"{where}: expected an object, got {_quote(data)}")
    unknown = sorted(str(key) for key in data.keys() - expected)
    if unknown:
        raise ModelSpecError(f"{where}: unknown key {unknown[0]!r}; expected {sorted(expected)}")
    missing = sorted(expected - data.keys())
    if missing:
        raise ModelSpecError(f"{where}: missing key {missing[0]!r}")


def _config_from_dict(kind: Any, data: Any, where: str) -> Any:
    if kind == DEEP_ENSEMBLE:
        _check_keys(data, {"members"}, f"{where}.config")
        members = data["members"]
        if not isinstance(members, list) or not members:
            raise ModelSpecError(f"{where}.config.members: expected a non-empty list")
        specs = tuple(
            ModelSpec.from_dict(member, f"{where}.config.members[{i}]")
            for i, member in enumerate(members)
        )
        return DeepEnsembleConfig(specs)
    _, config_class = _kind(kind, f"{where}.kind")
    return _from_plain(config_class, data, f"{where}.config")


def _from_plain(hint: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) as type ``hint``, checked; only what model configs use."""
    if dataclasses.is_dataclass(hint):
        names = [f.name for f in dataclasses.fields(hint)]
        if isinstance(value, Mapping):
            names = [n for n in names if n in value or n not in ADDED_FIELDS.get(hint, ())]
        _check_keys(value, set(names), where)
        hints = typing.get_type_hints(hint)
        fields = {name: _from_plain(hints[name], value[name], f"{where}.{name}") for name in names}
        try:
            return hint(**fields)
        except ValueError as err:  # a config's own check, e.g. Rank1Config's prior_stddev > 0
            raise ModelSpecError(f"{where}: {err}") from None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if value not in args or not isinstance(value, str):
            raise ModelSpecError(f"{where}: expected one of {list(args)}, got {_quote(value)}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [arg for arg in args if arg is not type(None)]
        if len(options) != 1:
            raise ModelSpecError(f"{where}: unsupported config type {hint}")
        return _from_plain(options[0], value, where)
    if origin is tuple:
        if not isinstance(value, list) or len(value) != len(args):
            raise ModelSpecError(f"{where}: expected a list of {len(args)}, got {_quote(value)}")
        items = enumerate(zip(args, value, strict=True))
        return tuple(_from_plain(arg, item, f"{where}[{i}]") for i, (arg, item) in items)
    # bool is an int in Python: check it first and refuse it where a number is expected.
    if hint is bool and isinstance(value, bool):
        return value
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ModelSpecError(f"{where}: expected {name}, got {_quote(value)}")
