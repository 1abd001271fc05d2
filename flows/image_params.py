"""Validated parameters of the image flows (see :mod:`flows.params` for the conventions)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, ValidationError, ValidationInfo, model_validator

from flows.params import (
    ConfigError,
    Device,
    DeviceChecked,
    ExistingDir,
    Methods,
    Name,
    Positive,
    RunId,
    Seed,
    Severities,
    describe,
    parameter_error,
)
from pipeline.config import DatasetName, Posterior


class ImageTrainParams(DeviceChecked):
    """Parameters of ``train_images``; None keeps the preset's value.

    Attributes:
        preset: A recipe of ``pipeline.images.PRESETS`` (``cnn-digits``,
            ``wrn28-10-cifar10``, ``wrn28-10-cifar100``, ``resnet50-imagenet``).
        methods: Models to train, each into its own MLflow run.
        dataset: Train the preset's model on another dataset.
        data_dir: Folder of the clean data (not needed for digits).
        epochs: Training length (the recipe's schedule scales with it).
        batch_size: Unique images per step (the rank-1 model tiles them K times; the
            learning rate scales linearly).
        ensemble_size: K.
        posterior: ``normal`` or ``cauchy`` rank-1 factors.
        seed: Training seed.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        num_workers: DataLoader workers.
        experiment: MLflow experiment name.
        checkpoint_dir: Checkpoint folder (one sub-folder per method), or None.
        progress: Show training progress bars.
    """

    preset: str = "cnn-digits"
    methods: Methods = ["rank1"]
    dataset: DatasetName | None = None
    data_dir: ExistingDir | None = None
    epochs: Annotated[float, Field(gt=0)] | None = None
    batch_size: Positive | None = None
    ensemble_size: Positive | None = None
    posterior: Posterior | None = None
    seed: Seed | None = None
    device: Device | None = None
    num_workers: Annotated[int, Field(ge=0)] | None = None
    experiment: Name | None = None
    checkpoint_dir: Path | None = None
    progress: bool = False

    @model_validator(mode="after")
    def _check_jobs(self) -> ImageTrainParams:
        for method in self.methods:
            try:
                self.job(method)
            except ConfigError as err:
                # Without a field (an unknown preset) the preset is what is wrong.
                raise parameter_error(err.field or "preset", err) from None
        return self

    def job(self, method: str):
        """The ``pipeline.images.ImageJobConfig`` of one method."""
        from pipeline.recipes import image_preset

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


class ImageValidateParams(DeviceChecked):
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
    severities: Severities = [1, 2, 3, 4, 5]
    data_dir: ExistingDir | None = None
    corrupted_dir: ExistingDir | None = None
    compare_run_id: RunId | None = None
    device: Device = "auto"

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


class ImageBenchmarkParams(DeviceChecked):
    """Parameters of ``image_benchmark``: :class:`ImageTrainParams`, then validation.

    Attributes:
        preset: See :class:`ImageTrainParams`.
        methods: See :class:`ImageTrainParams`.
        epochs: See :class:`ImageTrainParams`.
        data_dir: Clean data folder (not needed for digits).
        corruptions: See :class:`ImageValidateParams`.
        severities: See :class:`ImageValidateParams`.
        corrupted_dir: See :class:`ImageValidateParams`.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (None: each part's default).
        experiment: MLflow experiment name (None: the preset's).
        progress: Show training progress bars on the terminal.
    """

    preset: str = "cnn-digits"
    methods: Methods = ["rank1", "deterministic"]
    epochs: Annotated[float, Field(gt=0)] | None = None
    data_dir: ExistingDir | None = None
    corruptions: Annotated[list[str], Field(min_length=1)] | None = None
    severities: Severities | None = None
    corrupted_dir: ExistingDir | None = None
    device: Device | None = None
    experiment: Name | None = None
    progress: bool = False

    @model_validator(mode="after")
    def _check_parts(self, info: ValidationInfo) -> ImageBenchmarkParams:
        # Both parts before training starts; the run id is not known yet, so a
        # well-formed placeholder stands in for it.
        try:
            self.train_params(info.context)
            self.validate_params("0" * 32, None, info.context)
        except ValidationError as err:
            raise ValueError(describe(err)) from None
        return self

    def train_params(self, context: dict[str, Any] | None = None) -> ImageTrainParams:
        """The parameters of its ``train_images`` sub-flow (``context``: see ``RUNS_HERE``)."""
        return ImageTrainParams.model_validate(
            {
                "preset": self.preset,
                "methods": self.methods,
                "epochs": self.epochs,
                "data_dir": self.data_dir,
                "device": self.device,
                "experiment": self.experiment,
                "progress": self.progress,
            },
            context=context,
        )

    def validate_params(
        self, run_id: str, compare_run_id: str | None, context: dict[str, Any] | None = None
    ) -> ImageValidateParams:
        """The parameters of the ``validate_images`` sub-flow of one trained run."""
        given = {
            "corruptions": self.corruptions,
            "severities": self.severities,
            "data_dir": self.data_dir,
            "corrupted_dir": self.corrupted_dir,
            "compare_run_id": compare_run_id,
            "device": self.device,
        }
        return ImageValidateParams.model_validate(
            {"run_id": run_id} | {k: v for k, v in given.items() if v is not None},
            context=context,
        )
