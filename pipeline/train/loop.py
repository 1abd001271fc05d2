""":func:`fit`: build a :class:`~pipeline.train.trainer.Trainer`, run its steps, report."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from pipeline.config import TrainConfig, to_steps
from pipeline.objective import Likelihood, ObjectiveTerms
from pipeline.predict import model_ensemble_size
from pipeline.train.batches import Data, training_batches, val_arrays
from pipeline.train.checkpoint import CHECKPOINT_FILE
from pipeline.train.distributed import DistInfo, dist_info, init_distributed, resolve_device
from pipeline.train.optim import build_optimizer, build_scheduler
from pipeline.train.progress import TrainingProgress
from pipeline.train.state import seed_everything
from pipeline.train.trainer import Trainer, autocast_for

OnEval = Callable[[int, dict[str, float]], None]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        model: The trained model (not DDP-wrapped) holding the best validation weights
            (or the last ones when there was no validation data).
        steps: Optimiser steps taken in total (including those before a resume).
        best_step: Step of the best validation NLL (-1 without validation data).
        best_val_nll: The best validation mixture NLL (NaN without validation data).
        stopped_early: Whether patience ran out before the last step.
        history: One dict per evaluation: step, train loss/nll/kl/elbo averages since the
            previous evaluation, beta, lr, val_nll.
        seconds: Wall time of this call.
    """

    model: nn.Module
    steps: int
    best_step: int
    best_val_nll: float
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def fit(
    model: nn.Module,
    train: Data,
    val: Data | None,
    *,
    likelihood: Likelihood,
    n_train: int,
    config: TrainConfig,
    ensemble_size: int | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    on_eval: OnEval | None = None,
    on_step: Callable[[int], None] | None = None,
) -> FitResult:
    """Train one model with the paper's objective.

    Seeds python/numpy/torch with ``config.seed`` (plus the process rank) before the first
    step; create the model under the same seed beforehand for a reproducible run.

    Args:
        model: A rank-1 model taking ``(K * B, ...)`` tiled batches, or a deterministic
            model taking ``(B, ...)`` (then K = 1).
        train: ``(x, y)`` tensors of the N unique training examples, ``x`` ``(N, ...)``
            and ``y`` ``(N,)``; or a DataLoader of unique ``(x, y)`` batches.
        val: Validation data in the same forms, or None (no model selection).
        likelihood: ``"bernoulli"`` (``(K*B,)`` logits) or ``"categorical"``
            (``(K*B, C)`` logits).
        n_train: N, which divides the KL.
        config: The training config; ``batch_size`` unique examples per step (all
            processes together), which a rank-1 model sees tiled K times
            (``K * batch_size`` rows).
        ensemble_size: K for tiling; defaults to the model's ``ensemble_size`` (1 for a
            plain model).
        checkpoint_dir: Folder for ``checkpoint.pt``; None writes no checkpoints.
        resume: Continue from ``checkpoint_dir/checkpoint.pt`` when it exists.
        progress: Show a rich progress bar (main process only).
        on_eval: Called on the main process after each evaluation with
            ``(step, metrics)``, e.g. to log to MLflow. Without validation data it is
            called at the same points (every ``eval_every`` steps and at the end) with the
            training averages only (no ``val_nll``; nothing is added to the history).
        on_step: Called after every optimiser step with the number of steps done.

    Returns:
        A :class:`FitResult`.
    """
    started = time.perf_counter()
    info = dist_info()
    device = resolve_device(config.device, info)
    joined = init_distributed(device, info)
    try:
        trainer = _build(
            model, train, val, likelihood=likelihood, n_train=n_train, config=config,
            ensemble_size=ensemble_size, checkpoint_dir=checkpoint_dir, resume=resume,
            info=info, device=device,
        )  # fmt: skip
        stopped_early = _run(trainer, progress, on_eval, on_step)
    finally:
        if joined:
            dist.destroy_process_group()
    s = trainer.state
    if s.best_model is not None:
        model.load_state_dict(s.best_model)
    return FitResult(
        model=model,
        steps=s.step,
        best_step=s.best_step,
        best_val_nll=s.best_val_nll if s.best_step >= 0 else float("nan"),
        stopped_early=stopped_early,
        history=s.history,
        seconds=time.perf_counter() - started,
    )


def _build(
    model: nn.Module,
    train: Data,
    val: Data | None,
    *,
    likelihood: Likelihood,
    n_train: int,
    config: TrainConfig,
    ensemble_size: int | None,
    checkpoint_dir: str | os.PathLike | None,
    resume: bool,
    info: DistInfo,
    device: torch.device,
) -> Trainer:
    """A ready :class:`Trainer`: seeded, resumed when asked, DDP-wrapped under torchrun."""
    k = model_ensemble_size(model) if ensemble_size is None else ensemble_size
    batches = training_batches(train, config.batch_size, config.seed, info)
    steps_per_epoch = batches.steps_per_epoch
    model.to(device)
    optimizer = build_optimizer(model, config)
    trainer = Trainer(
        model=model, net=model, optimizer=optimizer,
        scheduler=build_scheduler(optimizer, config, steps_per_epoch), config=config,
        info=info, device=device, k=k, likelihood=likelihood, n_train=n_train,
        anneal=to_steps(config.schedule.kl_anneal, config.schedule.unit, steps_per_epoch),
        total=config.total_steps(steps_per_epoch), batches=batches,
        autocast=autocast_for(config, device), val=None,
        checkpoint_path=Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir else None,
    )  # fmt: skip
    # Different noise per process; identical weights come from DDP's initial broadcast.
    seed_everything(config.seed + 7919 * info.rank)
    if resume and trainer.checkpoint_path is not None and trainer.checkpoint_path.exists():
        trainer.resume()
    if info.world_size > 1:
        trainer.net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    # After seeding and resuming: reading a validation loader may draw random numbers.
    trainer.val = val_arrays(val) if val is not None else None
    return trainer


class _Window:
    """Sums of the training terms since the last evaluation point (kept on the device)."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(4, device=device)  # loss, nll, kl, elbo
        self.count = 0

    def add(self, terms: ObjectiveTerms) -> None:
        """Add one step's terms (no host sync)."""
        self.sums += torch.stack([terms.loss.detach(), terms.nll, terms.kl, terms.elbo])
        self.count += 1

    def take(self) -> list[float]:
        """The averages since the last call, ``[loss, nll, kl, elbo]``; then start afresh."""
        averages = (self.sums / max(self.count, 1)).tolist()
        self.sums.zero_()
        self.count = 0
        return averages


def _run(
    t: Trainer, progress: bool, on_eval: OnEval | None, on_step: Callable[[int], None] | None
) -> bool:
    """Train to ``t.total`` steps or until patience runs out; return whether it did."""
    config, window, stopped = t.config, _Window(t.device), False
    t.model.train()
    data = t.batches.from_step(t.state.step)
    with TrainingProgress(progress and t.info.is_main, t.total, t.state.step) as bar:
        while t.state.step < t.total:
            terms = t.train_step(*next(data))
            window.add(terms)
            step = t.state.step
            if on_step is not None:
                on_step(step)
            last = step == t.total
            if last or (config.eval_every and step % config.eval_every == 0):
                stopped = _evaluation_point(t, window, terms.beta, on_eval, last)
            bar.update(step, terms.loss, t.state.best_val_nll, force=last or stopped)
            if stopped or last or (config.checkpoint_every and step % config.checkpoint_every == 0):
                t.save(final=stopped or last)
            if stopped:
                break
    return stopped


def _evaluation_point(
    t: Trainer, window: _Window, beta: float, on_eval: OnEval | None, last: bool
) -> bool:
    """Evaluate (with validation data), book the record, report it; return whether to stop.

    Without validation data the training averages are still reported to ``on_eval`` at the
    same points, but nothing is selected or added to the history.
    """
    if t.val is None and on_eval is None:
        return False
    val_nll = t.evaluate() if t.val is not None else None
    record = t.record(window.take(), beta, val_nll)
    stopped = False
    if val_nll is not None:
        stopped = t.state.select(record, t.model, t.config.patience, last)
    if on_eval is not None and t.info.is_main:
        on_eval(t.state.step, record)
    return stopped
