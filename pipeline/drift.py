"""Per-variable drift of new ICU stays against the training data: the population stability index.

A model trained on one cohort scores new stays every night; this module says, for each of the
17 clinical variables of the hourly grid, how far the new stays' charted values moved from the
training data's, and whether the variable is charted as often as it was.

Only the hours a variable was actually charted count (its ``mask->Variable`` column is 1):
the grid's other hours hold forward-filled or normal values, which would make a variable that
is charted less often look more "normal" instead of less observed. Charting itself is
compared separately, as the share of stay-hours with the mask set.

:func:`fit_drift_reference` summarises the training grid into a :class:`DriftReference`, a
frozen, JSON-serialisable record of cohort-level numbers only (quantile bin edges and shares,
category shares, charting rates; nothing per stay), so it can be stored beside a model.
:func:`compare` bins the new stays' values on the reference's bins and returns a
:class:`DriftReport` of one :class:`VariableDrift` per variable, whose :meth:`DriftReport.metrics`
are metric-safe names for MLflow (``drift/psi/heart_rate``).

The population stability index of shares ``p_ref`` (reference) and ``p_new`` (new data) over
the same bins is ``sum((p_new - p_ref) * ln(p_new / p_ref))``; by the usual convention below
0.1 is stable, 0.1 to 0.25 a moderate shift and above 0.25 a major one. It has sampling noise
of roughly ``(bins - 1) * (1 / n_ref + 1 / n_new)`` for ``n`` independent values, and hourly
values of one stay are not independent, so a variable charted a few hundred times (height,
weight: once per stay) can read 0.1-0.2 between two samples of the same population of 200
stays (measured on synthetic cohorts); the levels do not correct for that.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from features.mimic.variables import Variable, load_variables
from pipeline.config import config_error

Kind = Literal["continuous", "categorical"]
Level = Literal["stable", "moderate", "major", "not charted", "no reference"]

#: Quantile bins of a continuous variable's training values (deciles: 9 inner edges).
BINS = 10
#: Every share is floored at this before the PSI is taken, so an empty bin adds a large but
#: finite term instead of infinity (about ``p * ln(p / 1e-4)``, 0.7 for a 10% bin left
#: empty). One hour in 10,000: it changes only bins that hold almost nothing, whose terms
#: are negligible either way.
SHARE_FLOOR = 1e-4
#: PSI below this is 'stable'; above MAJOR_ABOVE 'major'; in between 'moderate'.
STABLE_BELOW = 0.1
MAJOR_ABOVE = 0.25
#: A charting rate outside [LOW, HIGH] times the reference's is flagged as changed.
CHARTING_RATIO = (0.5, 2.0)
#: Shares of a recorded reference must sum to 1 within this (JSON floats round-trip exactly,
#: so this only absorbs the rounding of the division that produced them).
_SUM_TOLERANCE = 1e-6


class DriftReferenceError(ValueError):
    """A drift reference dict is invalid.

    Attributes:
        field: The bad field as a dotted path (``"variables[3].shares"``), or ``"<root>"``.
        reason: What is wrong with it.
    """

    def __init__(self, reason: str, field: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"drift reference field {field!r}: {reason}")


# --------------------------------------------------------------------------- the reference

Share = Annotated[float, Field(strict=True, ge=0.0, le=1.0)]
Count = Annotated[int, Field(strict=True, ge=0)]
Edge = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Name = Annotated[str, Field(strict=True, min_length=1)]


class VariableReference(BaseModel):
    """One variable of the training data, cohort-level.

    Attributes:
        variable: The variable's channel name (``"Heart Rate"``).
        kind: ``"continuous"`` or ``"categorical"``.
        observed_hours: Stay-hours in which it was charted (mask 1); 0 if never.
        charted: ``observed_hours`` over all stay-hours of the reference.
        edges: Continuous only: the increasing inner edges of the quantile bins; bin ``i``
            holds values ``edges[i-1] <= v < edges[i]`` (first and last bins open-ended).
            Fewer than ``BINS - 1`` where quantiles tie; empty if never observed.
        categories: Categorical only: the category names in one-hot order.
        shares: Share of the observed hours per bin (``len(edges) + 1``) or per category;
            empty if never observed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    variable: Name
    kind: Kind
    observed_hours: Count
    charted: Share
    edges: tuple[Edge, ...] = ()
    categories: tuple[Name, ...] = ()
    shares: tuple[Share, ...] = ()

    @property
    def observed(self) -> bool:
        """Whether the variable was charted at all in the reference."""
        return self.observed_hours > 0

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.kind == "continuous" and self.categories:
            raise ValueError("categories: must be empty for a continuous variable")
        if self.kind == "categorical" and (self.edges or not self.categories):
            raise ValueError("edges/categories: a categorical variable has categories, no edges")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError(f"edges: must be strictly increasing, got {list(self.edges)}")
        if not self.observed:
            if self.shares or self.edges:
                raise ValueError("shares: a variable never observed has no shares or edges")
            return self
        bins = len(self.categories) if self.kind == "categorical" else len(self.edges) + 1
        if len(self.shares) != bins:
            raise ValueError(f"shares: must have {bins} values, got {len(self.shares)}")
        if abs(sum(self.shares) - 1.0) > _SUM_TOLERANCE:
            raise ValueError(f"shares: must sum to 1, got {sum(self.shares)!r}")
        return self


class DriftReference(BaseModel):
    """The training data's per-variable distributions (cohort-level only, no stay's values).

    Attributes:
        channels: The grid's column names it was fitted on, in order.
        stays: Stays of the reference.
        hours: Hours of its grid.
        variables: One :class:`VariableReference` per variable, in grid order.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    channels: tuple[Name, ...]
    stays: Annotated[int, Field(strict=True, ge=1)]
    hours: Annotated[int, Field(strict=True, ge=1)]
    variables: tuple[VariableReference, ...]

    @model_validator(mode="after")
    def _variables_have_their_columns(self) -> Self:
        names = [v.variable for v in self.variables]
        if len(set(names)) != len(names):
            raise ValueError("variables: a variable is listed twice")
        present = set(self.channels)
        for variable in self.variables:
            needed = [*_columns_of(variable), f"mask->{variable.variable}"]
            missing = [c for c in needed if c not in present]
            if missing:
                raise ValueError(f"channels: no column {missing[0]!r} for {variable.variable!r}")
            # The rate is what compare sets the new rate against: it must be the count's.
            rate = variable.observed_hours / (self.stays * self.hours)
            if abs(variable.charted - rate) > _SUM_TOLERANCE:
                raise ValueError(
                    f"variables: {variable.variable!r} has charted {variable.charted!r}, but "
                    f"observed_hours / (stays * hours) is {rate!r}"
                )
        return self

    def to_dict(self) -> dict[str, Any]:
        """The reference as plain JSON values (lists, no tuples)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Read a reference written by :meth:`to_dict`.

        Raises:
            DriftReferenceError: One line naming the first bad field and why.
        """
        if not isinstance(data, dict):
            raise DriftReferenceError(f"must be a mapping, got {type(data).__name__}", "<root>")
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            # Worded as every config of the project is (pipeline.config.config_error).
            problem = config_error(err)
            raise DriftReferenceError(problem.reason, problem.field) from None


def _columns_of(variable: VariableReference | Variable) -> list[str]:
    """The grid columns a variable's values live in (one, or one per category)."""
    if isinstance(variable, Variable):
        name, categorical = variable.channel, variable.is_categorical
    else:
        name, categorical = variable.variable, variable.kind == "categorical"
    if categorical:
        return [f"{name}->{category}" for category in variable.categories]
    return [name]


# --------------------------------------------------------------------------- reading the grid


def _check_grid(grid: np.ndarray, channels: tuple[str, ...]) -> None:
    if grid.ndim != 3 or grid.shape[2] != len(channels):
        raise ValueError(
            f"grid must be (stays, hours, {len(channels)}) for {len(channels)} channels, "
            f"got shape {grid.shape}"
        )


def _observed(
    grid: np.ndarray, index: dict[str, int], name: str, value_columns: list[str]
) -> tuple[np.ndarray, int]:
    """The values of one variable in the hours it was charted.

    Args:
        grid: (stays, hours, channels) raw grid.
        index: Column position of each channel name.
        name: The variable's channel name.
        value_columns: Its value column (continuous) or one-hot columns (categorical).

    Returns:
        ``(values, observed_hours)``: (observed_hours,) float64 values for a continuous
        variable, int64 category indices for a categorical one.

    Raises:
        ValueError: If a charted continuous value is not finite: NaN would sort past every
            edge into the last bin without a word (extraction never writes one).
    """
    mask = grid[:, :, index[f"mask->{name}"]] == 1
    if len(value_columns) == 1:
        values = grid[:, :, index[value_columns[0]]][mask].astype(np.float64)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"variable {name!r} has non-finite values in charted hours")
        return values, int(mask.sum())
    # The one-hot columns at observed hours hold the charted category (the last of the hour).
    one_hot = grid[:, :, [index[c] for c in value_columns]][mask]
    return one_hot.argmax(axis=1), int(mask.sum())


def _inner_edges(values: np.ndarray) -> np.ndarray:
    """Unique decile edges of (n,) values, dropping any at the minimum.

    Tied quantiles (a variable with few distinct values, or a constant one) give repeated
    edges, which would make empty bins; an edge at the minimum would leave the bin below it
    empty in the reference, so it is dropped too. A constant variable gets no edge: one bin.
    """
    edges = np.unique(np.quantile(values, np.arange(1, BINS) / BINS))
    return edges[edges > values.min()]


def _continuous_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of (n,) values per bin of the inner ``edges`` (``len(edges) + 1`` bins)."""
    bins = np.searchsorted(edges, values, side="right")
    return np.bincount(bins, minlength=len(edges) + 1) / len(values)


def _category_shares(codes: np.ndarray, categories: int) -> np.ndarray:
    """Share of (n,) category indices per category."""
    return np.bincount(codes, minlength=categories) / len(codes)


def _fit_variable(grid: np.ndarray, index: dict[str, int], variable: Variable) -> VariableReference:
    values, hours = _observed(grid, index, variable.channel, _columns_of(variable))
    stay_hours = grid.shape[0] * grid.shape[1]
    kind = "categorical" if variable.is_categorical else "continuous"
    categories = variable.categories if variable.is_categorical else ()
    if hours == 0:
        return VariableReference(
            variable=variable.channel,
            kind=kind,
            observed_hours=0,
            charted=0.0,
            categories=categories,
        )
    if variable.is_categorical:
        edges: tuple[float, ...] = ()
        shares = _category_shares(values, len(categories))
    else:
        inner = _inner_edges(values)
        edges = tuple(float(e) for e in inner)
        shares = _continuous_shares(values, inner)
    return VariableReference(
        variable=variable.channel,
        kind=kind,
        observed_hours=hours,
        charted=hours / stay_hours,
        edges=edges,
        categories=categories,
        shares=tuple(float(s) for s in shares),
    )


def fit_drift_reference(grid: np.ndarray, channels: list[str] | tuple[str, ...]) -> DriftReference:
    """Summarise the training grid's variables into a drift reference.

    Args:
        grid: (stays, hours, channels) raw (un-normalised) grid of the training stays, as
            ``features.mimic.extract`` writes it (``grid.npy``; pass the training rows).
        channels: The grid's column names (the manifest's ``channels``).

    Returns:
        The reference: per variable its deciles (continuous) or category shares
        (categorical) over the charted hours, its charting rate and observed hours.

    Raises:
        ValueError: If the grid's shape does not match the channels, a variable's column is
            missing, there are no stays, or a charted continuous value is not finite.
    """
    channels = tuple(channels)
    _check_grid(grid, channels)
    if grid.shape[0] == 0 or grid.shape[1] == 0:
        raise ValueError(f"cannot fit a drift reference on an empty grid of shape {grid.shape}")
    index = {name: position for position, name in enumerate(channels)}
    for variable in load_variables():
        for column in [*_columns_of(variable), f"mask->{variable.channel}"]:
            if column not in index:
                raise ValueError(f"channel {column!r} is missing from the channels")
    return DriftReference(
        channels=channels,
        stays=int(grid.shape[0]),
        hours=int(grid.shape[1]),
        variables=tuple(_fit_variable(grid, index, v) for v in load_variables()),
    )


# --------------------------------------------------------------------------- comparing


def metric_name(variable: str) -> str:
    """A metric-safe key for a variable: ``"Heart Rate"`` -> ``"heart_rate"``, ``"pH"`` -> ``"ph"``.

    Lower case, every run of other characters one underscore: no spaces, no ``->``.
    """
    return re.sub(r"[^a-z0-9]+", "_", variable.lower()).strip("_")


def psi(reference: np.ndarray, new: np.ndarray) -> float:
    """Population stability index of two share vectors over the same bins.

    Args:
        reference: (bins,) reference shares.
        new: (bins,) new shares.

    Returns:
        ``sum((new - reference) * ln(new / reference))``, each share floored at
        :data:`SHARE_FLOOR` first so an empty bin gives a finite value.
    """
    p_ref = np.maximum(np.asarray(reference, dtype=np.float64), SHARE_FLOOR)
    p_new = np.maximum(np.asarray(new, dtype=np.float64), SHARE_FLOOR)
    return float(np.sum((p_new - p_ref) * np.log(p_new / p_ref)))


def psi_level(value: float) -> Level:
    """'stable' below 0.1, 'moderate' from 0.1 to 0.25, 'major' above 0.25."""
    if value < STABLE_BELOW:
        return "stable"
    return "moderate" if value <= MAJOR_ABOVE else "major"


@dataclass(frozen=True)
class VariableDrift:
    """How one variable of the new stays compares with the reference.

    Attributes:
        variable: The variable's channel name (``"Mean blood pressure"``).
        kind: ``"continuous"`` or ``"categorical"``.
        psi: Population stability index of its charted values against the reference's
            bins, or None where it is not charted in the new data or was never charted
            in the reference.
        level: ``"stable"`` (psi < 0.1), ``"moderate"`` (0.1-0.25), ``"major"`` (> 0.25),
            ``"not charted"`` (no charted hour in the new data) or ``"no reference"``
            (charted now but never in the reference).
        charted_reference: Share of the reference's stay-hours in which it was charted.
        charted_now: The same share in the new data.
        observed_hours_now: Stay-hours of the new data in which it was charted.
        charting_changed: Whether ``charted_now / charted_reference`` is outside [0.5, 2]
            (a variable charted in neither is unchanged).
    """

    variable: str
    kind: Kind
    psi: float | None
    level: Level
    charted_reference: float
    charted_now: float
    observed_hours_now: int
    charting_changed: bool

    @property
    def key(self) -> str:
        """The variable's metric-safe name (``"mean_blood_pressure"``)."""
        return metric_name(self.variable)

    @property
    def flagged(self) -> bool:
        """Whether a reader must see this variable.

        True for a major shift, not charted, charted against no reference, or a charting
        rate changed by more than a factor of 2.
        """
        return self.level in ("major", "not charted", "no reference") or self.charting_changed

    def describe(self) -> str:
        """One line for a report, e.g. ``"Mean blood pressure: not charted (was 90% of hours)"``."""
        was = f"{self.charted_reference:.0%}"
        now = f"{self.charted_now:.0%}"
        if self.level == "not charted":
            return f"{self.variable}: not charted (was {was} of hours)"
        if self.level == "no reference":
            return f"{self.variable}: charted in {now} of hours, never in the reference"
        line = f"{self.variable}: psi {self.psi:.3f} ({self.level}), charted {now} (was {was})"
        return line + (", charting changed" if self.charting_changed else "")


def _charting_changed(reference: float, now: float) -> bool:
    if reference == 0.0:
        return now > 0.0
    low, high = CHARTING_RATIO
    return not low <= now / reference <= high


def _compare_variable(
    grid: np.ndarray, index: dict[str, int], reference: VariableReference
) -> VariableDrift:
    values, hours = _observed(grid, index, reference.variable, _columns_of(reference))
    stay_hours = grid.shape[0] * grid.shape[1]
    charted_now = hours / stay_hours if stay_hours else 0.0
    value: float | None = None
    if hours == 0:
        level: Level = "not charted"
    elif not reference.observed:
        level = "no reference"
    else:
        if reference.kind == "categorical":
            shares = _category_shares(values, len(reference.categories))
        else:
            shares = _continuous_shares(values, np.asarray(reference.edges, dtype=np.float64))
        value = psi(np.asarray(reference.shares), shares)
        level = psi_level(value)
    return VariableDrift(
        variable=reference.variable,
        kind=reference.kind,
        psi=value,
        level=level,
        charted_reference=reference.charted,
        charted_now=charted_now,
        observed_hours_now=hours,
        charting_changed=_charting_changed(reference.charted, charted_now),
    )


def _check_channels(reference: tuple[str, ...], channels: tuple[str, ...]) -> None:
    """Refuse channels that are not the reference's, naming the first difference."""
    if channels == reference:
        return
    for position in range(max(len(reference), len(channels))):
        here = channels[position] if position < len(channels) else "<none>"
        there = reference[position] if position < len(reference) else "<none>"
        if here != there:
            raise ValueError(
                f"channels differ from the drift reference's at position {position}: "
                f"{here!r} here, {there!r} in the reference ({len(channels)} channels here, "
                f"{len(reference)} there)"
            )


@dataclass(frozen=True)
class DriftReport:
    """Per-variable drift of a set of new stays.

    Attributes:
        variables: One :class:`VariableDrift` per variable, in the reference's order.
        stays: Stays compared.
    """

    variables: tuple[VariableDrift, ...]
    stays: int

    @property
    def major(self) -> tuple[VariableDrift, ...]:
        """The variables a reader must see (:attr:`VariableDrift.flagged`).

        Major shift, not charted, no reference, or charting rate changed by more than a
        factor of 2.
        """
        return tuple(v for v in self.variables if v.flagged)

    def variable(self, name: str) -> VariableDrift:
        """The drift of the variable with this channel name.

        Raises:
            KeyError: If there is none.
        """
        for drift in self.variables:
            if drift.variable == name:
                return drift
        raise KeyError(f"no variable {name!r} in the drift report")

    def to_dict(self) -> dict[str, Any]:
        """Cohort-level numbers as JSON values, keyed by metric-safe variable names.

        ``{"stays": n, "variables": {"heart_rate": {"variable": "Heart Rate", "kind": ...,
        "psi": ..., "level": ..., ...}, ...}}``.
        """
        return {
            "stays": self.stays,
            "variables": {
                v.key: {
                    "variable": v.variable,
                    "kind": v.kind,
                    "psi": v.psi,
                    "level": v.level,
                    "charted_reference": v.charted_reference,
                    "charted_now": v.charted_now,
                    "observed_hours_now": v.observed_hours_now,
                    "charting_changed": v.charting_changed,
                }
                for v in self.variables
            },
        }

    def metrics(self) -> dict[str, float]:
        """Flat ``{name: float}`` for ``mlflow.log_metrics``.

        ``drift/stays``, ``drift/flagged`` (how many variables :attr:`major` lists) and per
        variable ``drift/psi/<key>`` (left out where psi is None: MLflow has no missing
        value), ``drift/charted/<key>``, ``drift/charted_reference/<key>`` and
        ``drift/observed_hours/<key>``.
        """
        out = {"drift/stays": float(self.stays), "drift/flagged": float(len(self.major))}
        for v in self.variables:
            if v.psi is not None:
                out[f"drift/psi/{v.key}"] = v.psi
            out[f"drift/charted/{v.key}"] = v.charted_now
            out[f"drift/charted_reference/{v.key}"] = v.charted_reference
            out[f"drift/observed_hours/{v.key}"] = float(v.observed_hours_now)
        return out


def compare(
    reference: DriftReference, grid: np.ndarray, channels: list[str] | tuple[str, ...]
) -> DriftReport:
    """Compare new stays' variables with the training reference.

    Args:
        reference: From :func:`fit_drift_reference` on the training grid.
        grid: (stays, hours, channels) raw (un-normalised) grid of the new stays.
        channels: Its column names; must be the reference's, in the same order.

    Returns:
        The report, one :class:`VariableDrift` per variable of the reference. PSI levels
        follow the usual convention: below 0.1 stable, 0.1-0.25 moderate, above 0.25 major.

    Raises:
        ValueError: Naming the first differing channel and its position if the channels
            are not the reference's; if the grid's shape does not match the channels, its
            hours are not the reference's, or a charted continuous value is not finite.
    """
    channels = tuple(channels)
    _check_channels(reference.channels, channels)
    _check_grid(grid, channels)
    if grid.shape[1] != reference.hours:
        raise ValueError(f"grid has {grid.shape[1]} hours, the drift reference {reference.hours}")
    index = {name: position for position, name in enumerate(channels)}
    drifts = tuple(_compare_variable(grid, index, v) for v in reference.variables)
    return DriftReport(variables=drifts, stays=int(grid.shape[0]))


__all__ = [
    "BINS",
    "MAJOR_ABOVE",
    "SHARE_FLOOR",
    "STABLE_BELOW",
    "DriftReference",
    "DriftReferenceError",
    "DriftReport",
    "VariableDrift",
    "VariableReference",
    "compare",
    "fit_drift_reference",
    "metric_name",
    "psi",
    "psi_level",
]
