"""One model's training state and its parts: resume, save, one step, one evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor, nn

import rank1
from pipeline.config import TrainConfig
from pipeline.objective import Likelihood, ObjectiveTerms, objective
from pipeline.predict import predict_member_logits
from pipeline.train.batches import LoaderBatches, TensorBatches
from pipeline.train.checkpoint import config_diff, cpu_state_dict, load_checkpoint, save_checkpoint
from pipeline.train.distributed import DistInfo
from pipeline.train.state import gather_rng_states, set_rng_state

#: Offset of the evaluation RNG seed, so evaluation draws differ from training draws.
_EVAL_SEED_OFFSET = 1_000_003


@dataclass
class TrainerState:
    """What a checkpoint restores besides modules and RNG: position, selection, history.

    Attributes:
        step: Optimiser steps taken (the data position follows from it).
        best_step: Step of the best validation NLL so far (-1: none yet).
        best_val_nll: The best validation mixture NLL so far.
        stale: Evaluations since the best one.
        best_model: CPU copy of the best weights (None: none yet).
        history: One record per evaluation with validation data.
    """

    step: int = 0
    best_step: int = -1
    best_val_nll: float = math.inf
    stale: int = 0
    best_model: dict[str, Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def select(self, record: dict[str, float], model: nn.Module, patience: int, last: bool) -> bool:
        """Book one evaluation's ``record`` (it holds ``val_nll``); keep the best weights.

        Returns:
            Whether ``patience`` evaluations passed without improvement (never at the last
            step, where the run ends anyway).
        """
        self.history.append(record)
        if record["val_nll"] < self.best_val_nll:
            self.best_val_nll, self.best_step, self.stale = record["val_nll"], self.step, 0
            self.best_model = cpu_state_dict(model)
        else:
            self.stale += 1
        return bool(patience and self.stale >= patience and not last)


@dataclass
class Trainer:
    """Everything one :func:`~pipeline.train.fit` run works with (all processes alike).

    Attributes:
        model: The model being trained (never DDP-wrapped); it holds the weights.
        net: What the forward pass calls: ``model``, or its DDP wrapper.
        k: K, the rows each unique example is tiled to.
        anneal: KL-annealing length in steps.
        total: Steps of the whole run.
        val: Validation inputs (tensor ``(N, ...)`` or loader) and labels ``(N,)``, or None.
        checkpoint_path: ``checkpoint.pt`` to write, or None.
    """

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: TrainConfig
    info: DistInfo
    device: torch.device
    k: int
    likelihood: Likelihood
    n_train: int
    anneal: int
    total: int
    batches: TensorBatches | LoaderBatches
    autocast: AbstractContextManager
    val: tuple[Tensor | Iterable, Tensor] | None
    checkpoint_path: Path | None
    state: TrainerState = field(default_factory=TrainerState)

    @property
    def steps_per_epoch(self) -> int:
        """Optimiser steps per pass over the training data."""
        return self.batches.steps_per_epoch

    def resume(self) -> None:
        """Continue from :attr:`checkpoint_path`: modules, state and this process's RNG.

        Raises:
            ValueError: When the checkpoint was written with another config or another
                number of processes (its RNG streams could not be continued exactly).
        """
        path = self.checkpoint_path
        saved = load_checkpoint(path, map_location="cpu")
        if saved["config"] != self.config.to_dict():
            changed = config_diff(saved["config"], self.config.to_dict())
            raise ValueError(f"{path}: written with a different config ({changed})")
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = TrainerState(
            step=saved["step"],
            best_step=saved["best_step"],
            best_val_nll=saved["best_val_nll"],
            stale=saved["stale"],
            best_model=saved["best_model"],
            history=saved["history"],
        )
        if saved["world_size"] != self.info.world_size:
            raise ValueError(
                f"{path}: written by {saved['world_size']} processes, resuming with "
                f"{self.info.world_size}; the RNG streams cannot be continued exactly"
            )
        set_rng_state(saved["rng"][self.info.rank])

    def save(self, final: bool) -> None:
        """Write the checkpoint (main process; every process joins the RNG gather)."""
        rng = gather_rng_states(self.info)
        if not self.info.is_main or self.checkpoint_path is None:
            return
        s = self.state
        save_checkpoint(
            self.checkpoint_path,
            {
                "step": s.step,
                "epoch": s.step // self.steps_per_epoch,
                "batch_in_epoch": s.step % self.steps_per_epoch,
                "model": cpu_state_dict(self.model),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "rng": rng,
                "world_size": self.info.world_size,
                "best_model": s.best_model,
                "best_step": s.best_step,
                "best_val_nll": s.best_val_nll,
                "stale": s.stale,
                "history": s.history,
                "config": self.config.to_dict(),
                "final": final,
            },
        )

    def train_step(self, x: Tensor, y: Tensor) -> ObjectiveTerms:
        """One optimiser step on this process's share ``x`` ``(B, ...)``, ``y`` ``(B,)``.

        The model sees ``x`` tiled K times, ``(K * B, ...)``; DDP averages the gradients.
        """
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        xt = rank1.tile(x, self.k) if self.k > 1 else x
        with self.autocast:
            logits = self.net(xt)
        terms = objective(
            logits, y, self.model, likelihood=self.likelihood, n_train=self.n_train,
            step=self.state.step, anneal_steps=self.anneal,
            kl_scale=self.config.schedule.kl_scale,
        )  # fmt: skip
        self.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        clip = self.config.optim.grad_clip_norm
        if clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        # The reference's fast-weight multiplier acts on the factors' gradients. UB's CIFAR
        # script does not clip, so there the order is ours to choose; the EHR reference
        # (records-research bayesian_rnn_eager_main.py), the recipe that clips, scales
        # after tf.clip_by_global_norm, so we do too: the clip norm is measured on the
        # same gradients as there, and the multiplier is not undone by the clip.
        rank1.scale_factor_grads_(self.model, self.config.optim.fast_weight_lr_multiplier)
        self.optimizer.step()
        self.scheduler.step()
        self.state.step += 1
        return terms

    def evaluate(self) -> float:
        """The validation mixture NLL, computed by the main process and shared with all."""
        value = torch.zeros(1, device=self.device)
        if self.info.is_main:
            inputs, labels = self.val
            cuda = [self.device] if self.device.type == "cuda" else []
            # A forked, fixed-seed RNG: evaluation neither consumes nor depends on the
            # training streams, so eval settings cannot change the trained weights.
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(self.config.seed + _EVAL_SEED_OFFSET)
                logits = predict_member_logits(
                    self.model, inputs, self.k, self.config.num_eval_samples,
                    batch_size=self.config.eval_batch_size, device=self.device,
                    bf16=self.config.bf16,
                )  # fmt: skip
            nll = rank1.mixture_nll(logits, labels.to(logits.device), self.likelihood)
            value[0] = float(nll)
        if self.info.world_size > 1:
            dist.broadcast(value, 0)  # every process takes the main process's decision
        return float(value)

    def record(self, averages: list[float], beta: float, val_nll: float | None) -> dict:
        """One evaluation point's metrics (``val_nll`` only with validation data).

        Args:
            averages: Training loss, NLL, KL and ELBO averaged since the last point.
            beta: This step's KL weight.
            val_nll: The validation NLL, or None without validation data.
        """
        step = self.state.step
        loss, nll, kl, elbo = averages
        record = {
            "step": float(step), "epoch": step / self.steps_per_epoch, "train_loss": loss,
            "train_nll": nll, "kl": kl, "elbo": elbo, "beta": beta,
            "lr": self.optimizer.param_groups[0]["lr"],
        }  # fmt: skip
        if val_nll is not None:
            record["val_nll"] = val_nll
        return record


def autocast_for(config: TrainConfig, device: torch.device) -> AbstractContextManager:
    """bfloat16 autocast on CUDA when ``config.bf16``; a no-op context otherwise."""
    if config.bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()
