"""What scoring new patients needs besides the weights, logged with the EHR model itself.

:func:`pipeline.ehr.train_ehr` logs a :class:`ScoringBundle` as the document
:data:`BUNDLE_DOCUMENT` of the run's logged model (``tracking.log_model(documents=...)``),
so every registered version carries it: a scorer holding only ``models:/NAME@champion``
knows the feature layout the model reads (task, schema version, channels, hours), how to
normalise the raw grid (the training split's statistics, as ``manifest.json`` holds them),
the fingerprint to check a feature folder against, the temperature and evaluation settings,
and the validation epistemic reference of the "unlike the training population" flag.

It lives here, beside neither the features nor the job: it is the contract between
training (``pipeline.ehr``) and scoring, and imports only pydantic and the manifest's
types, so reading it needs neither torch nor the training run's feature folder.

Everything in it is cohort-level (per-channel statistics, a percentile, settings): no
field holds a patient, admission or stay identifier.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from features.mimic.manifest import SCHEMA_VERSION, TASK, Normaliser

#: The logged model's document holding the bundle (file ``scoring_bundle.json``).
BUNDLE_DOCUMENT = "scoring_bundle"
#: Marks the document, so that another JSON file is refused rather than guessed at.
BUNDLE_FORMAT = "rank1-bnn-scoring-bundle"
BUNDLE_FORMAT_VERSION = 1


def fingerprint(channels: Sequence[str], hours: int, normaliser: Normaliser) -> str:
    """A short hash of what a model reads from a feature folder: channels, hours, normaliser.

    The hash of ``pipeline.ehr.feature_fingerprint``, of those entries exactly as
    ``manifest.json`` holds them (so fingerprints recorded by earlier runs still match).

    Returns:
        16 hex digits of the SHA-256 of the three entries as canonical JSON.
    """
    entries = {
        "channels": list(channels),
        "hours": hours,
        "normaliser": normaliser.model_dump(mode="json"),
    }
    canonical = json.dumps(entries, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


class ScoringBundle(BaseModel):
    """Everything scoring needs besides the weights; frozen, unknown keys refused.

    Attributes:
        format: Always :data:`BUNDLE_FORMAT`.
        format_version: Always :data:`BUNDLE_FORMAT_VERSION`.
        task: The prediction task (``in-hospital-mortality``).
        schema_version: The feature folder layout the model was trained on
            (``features.mimic.manifest.SCHEMA_VERSION``).
        channels: The grid's column names, in the model's input order.
        hours: Hours of the grid.
        normaliser: The training split's per-channel statistics, as ``manifest.json``
            holds them (apply them to a raw grid as ``features.mimic.loader`` does).
        feature_fingerprint: Fingerprint of channels, hours and normaliser
            (:func:`fingerprint`; checked against them when the bundle is read).
        temperature: The fitted temperature, as ``TemperatureScaler.to_dict`` writes it.
        num_eval_samples: Monte Carlo samples per member at evaluation.
        ensemble_size: Members K the model predicts with (1 for a deterministic model).
        method: ``rank1``, ``deterministic`` or ``ensemble``.
        posterior: The rank-1 factors' posterior (``normal``, ``cauchy``); None for the
            other methods, which have none.
        epistemic_reference: The validation stays' epistemic percentile, as
            ``pipeline.provenance.EpistemicReference.to_dict`` writes it (its threshold is
            None for a deterministic model, which has no epistemic part).
        drift_reference: The training split's distribution (``pipeline.drift``'s
            ``DriftReference.to_dict()``: per-variable bins, shares and charting rates,
            cohort-level only), for the drift checks of scored cohorts; None for a model
            logged before it was recorded.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: Literal[BUNDLE_FORMAT] = BUNDLE_FORMAT
    format_version: Literal[BUNDLE_FORMAT_VERSION] = BUNDLE_FORMAT_VERSION
    task: Literal[TASK] = TASK
    schema_version: Literal[SCHEMA_VERSION]
    channels: tuple[str, ...]
    hours: int
    normaliser: Normaliser
    feature_fingerprint: str
    temperature: dict[str, Any]
    num_eval_samples: int
    ensemble_size: int
    method: Literal["rank1", "deterministic", "ensemble"]
    posterior: str | None
    epistemic_reference: dict[str, Any] | None
    drift_reference: dict[str, Any] | None = None

    @field_validator("temperature")
    @classmethod
    def _a_temperature(cls, record: dict[str, Any]) -> dict[str, Any]:
        # Checked here as TemperatureScaler.from_dict reads it, without importing torch.
        value = record.get("temperature")
        if record.get("method", "temperature_scaling") != "temperature_scaling":
            raise ValueError(f"not a temperature-scaling record: method={record.get('method')!r}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"temperature must be a number > 0, got {value!r}")
        return record

    @field_validator("epistemic_reference")
    @classmethod
    def _a_reference(cls, record: dict[str, Any] | None) -> dict[str, Any] | None:
        missing = sorted({"percentile", "threshold", "n_stays"} - set(record or {}))
        if record is not None and missing:
            raise ValueError(f"missing {', '.join(missing)}")
        return record

    @model_validator(mode="after")
    def _consistent(self) -> ScoringBundle:
        normaliser = self.normaliser
        lengths = {len(normaliser.means), len(normaliser.stds), len(normaliser.normalised)}
        if lengths != {len(self.channels)}:
            raise ValueError(
                f"normaliser: {len(normaliser.means)} means, {len(normaliser.stds)} stds and "
                f"{len(normaliser.normalised)} flags for {len(self.channels)} channels"
            )
        expected = fingerprint(self.channels, self.hours, normaliser)
        if self.feature_fingerprint != expected:
            raise ValueError(
                f"feature_fingerprint {self.feature_fingerprint} is not that of its channels, "
                f"hours and normaliser ({expected})"
            )
        return self

    def to_document(self) -> dict[str, Any]:
        """The bundle as plain JSON, for ``tracking.log_model(documents=...)``."""
        return self.model_dump(mode="json")

    def scaler(self) -> Any:
        """The :class:`pipeline.calibration.TemperatureScaler` of :attr:`temperature`."""
        from pipeline.calibration import TemperatureScaler

        return TemperatureScaler.from_dict(self.temperature)

    def reference(self) -> Any:
        """The :class:`pipeline.provenance.EpistemicReference`, or None if none was recorded."""
        from pipeline.provenance import EpistemicReference

        if self.epistemic_reference is None:
            return None
        return EpistemicReference.from_dict(self.epistemic_reference)


def parse_bundle(content: dict[str, Any], source: str) -> ScoringBundle:
    """Validate a bundle document read from ``source``.

    Raises:
        pipeline.tracking.ModelArtifactError: One line naming ``source`` and the first
            bad field (a document of another format, a tampered number).
    """
    from pipeline.tracking import ModelArtifactError

    if content.get("format") != BUNDLE_FORMAT:
        raise ModelArtifactError(f"{source}: not a {BUNDLE_FORMAT} document")
    try:
        return ScoringBundle.model_validate(content)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "bundle"
        message = " ".join(first["msg"].removeprefix("Value error, ").split())
        raise ModelArtifactError(
            f"{source}: not a valid scoring bundle: {field}: {message}"
        ) from None


def load_bundle(source: Any) -> ScoringBundle:
    """The scoring bundle logged with a model, read without loading or running the model.

    Args:
        source: A registered version (``tracking.resolve("models:/NAME@champion")``) or
            the id of a run written by ``pipeline.ehr.train_ehr``.

    Returns:
        The bundle.

    Raises:
        pipeline.tracking.ModelArtifactError: One line naming the file: no bundle (a
            model logged before bundles existed), not JSON, or not a valid bundle.
    """
    from pipeline import tracking

    document = tracking.load_model_document(source, BUNDLE_DOCUMENT)
    return parse_bundle(document.content, document.source)
