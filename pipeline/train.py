"""One trainer for rank-1 BNNs, deterministic models and deep ensembles (EHR and images).

:func:`fit` trains one model with the paper's objective (``pipeline.objective``) and the
optimiser and schedule of a :class:`~pipeline.config.TrainConfig`; :func:`fit_ensemble`
trains K independently seeded models for a deep ensemble.

* Device: ``"auto"`` picks CUDA when present; bfloat16 autocast runs on CUDA only.
* Data: ``(x, y)`` tensors of the unique examples (the trainer shuffles, shards and tiles
  them) or a DataLoader of unique ``(x, y)`` batches. With tensors the order of epoch e is
  a permutation seeded by ``(seed, e)``, so the data-order state is the step counter.
* Checkpoints: model, optimiser, scheduler, RNG states (torch, CUDA, numpy, python; every
  process's), data position, best weights and history, written atomically (tmp file +
  ``os.replace``) every ``checkpoint_every`` steps and at the end; loaded with
  ``torch.load(weights_only=True)`` (RNG states are stored as tensors and lists). A resumed
  CPU run ends with the same weights, bit for bit, as an uninterrupted one.
* Model selection: validation mixture NLL every ``eval_every`` steps; the best weights are
  kept and restored at the end; ``patience`` evaluations without improvement stop early.
  Evaluation runs under a forked, separately seeded RNG, so it does not change the training
  trajectory.
* Data-parallel: under ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the model
  is wrapped in DistributedDataParallel (gloo on CPU, nccl on CUDA). ``batch_size`` stays
  the global batch: each of the W processes takes every W-th unique example of the step's
  batch (DistributedSampler-style), so the averaged gradient equals the single-process one.
"""

from __future__ import annotations

import copy
import io
import math
import os
import pickle
import random
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

import rank1
from features.io import make_private_dir, write_private_bytes
from pipeline.config import TrainConfig, check_device, to_steps
from pipeline.objective import Likelihood, objective
from pipeline.predict import model_ensemble_size, predict_member_logits
from rank1.models import DeepEnsemble

CHECKPOINT_FILE = "checkpoint.pt"
#: Offset of the evaluation RNG seed, so evaluation draws differ from training draws.
_EVAL_SEED_OFFSET = 1_000_003

Data = tuple[Tensor, Tensor] | Iterable


# --------------------------------------------------------------------------- environment


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a data-parallel job (a single process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process logs, shows progress and writes checkpoints."""
        return self.rank == 0


def dist_info() -> DistInfo:
    """Read the torchrun environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    """``"auto"`` -> CUDA when present (this process's local GPU), else CPU.

    Raises:
        pipeline.config.DeviceUnavailableError: For a CUDA device this machine lacks (a
            ValueError, so the flows do not retry it).
    """
    info = info or dist_info()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(name)
    device = torch.device(name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return device


def init_distributed(device: torch.device, info: DistInfo) -> bool:
    """Join the process group when launched by torchrun; return whether this call joined."""
    if info.world_size <= 1 or dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    return True


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    # Third-party code may still draw from numpy's legacy global RNG; seed and save it too.
    np.random.seed(seed % 2**32)  # noqa: NPY002
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors, lists and ints (``weights_only``-loadable)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": {"version": int(py_version), "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            n["name"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --------------------------------------------------------------------------- checkpoints


class CheckpointError(ValueError):
    """A checkpoint file cannot be loaded; the message names the file on one line."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` with ``torch.save`` atomically, owner-only (weights fit patient data).

    A missing folder is created owner-only (0700) too.
    """
    make_private_dir(Path(path).parent)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_private_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; never unpickles objects.

    Raises:
        OSError: When the file cannot be read.
        CheckpointError: When the file is not a complete ``torch.save`` archive or holds
            objects other than tensors, numbers, strings and containers (which
            ``weights_only=True`` refuses to build).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's text suggests weights_only=False, i.e. running the file's code: never.
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if found is None:
            raise CheckpointError(
                f"{path}: not a readable checkpoint (not a torch.save file)"
            ) from None
        raise CheckpointError(
            f"{path}: refused: it holds an object of {found.group(1)}, which a checkpoint of "
            "this project never contains (only tensors, numbers, strings and containers); "
            "delete it or use another checkpoint folder"
        ) from None
    except (RuntimeError, EOFError) as err:
        # torch's zip reader reports truncated or foreign archives as RuntimeError.
        reason = str(err).split(".")[0] or type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None


def _cpu_state_dict(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- optimiser


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD over ``rank1.param_groups`` (no decay on the factor posteriors).

    With ``config.optim.decay_norm`` False, normalisation-layer parameters move from the
    decayed group to an undecayed one (the ImageNet recipe, spec 1.7).
    """
    o = config.optim
    groups = rank1.param_groups(model, o.weight_decay, o.fast_weight_lr_multiplier, lr=o.lr)
    if not o.decay_norm:
        norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
        norm_ids = {
            id(p) for m in model.modules() if isinstance(m, norm_types) for p in m.parameters()
        }
        shared = groups[0]
        norm = [p for p in shared["params"] if id(p) in norm_ids]
        shared["params"] = [p for p in shared["params"] if id(p) not in norm_ids]
        if norm:
            groups.append({"params": norm, "weight_decay": 0.0, "name": "norm"})
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr)
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)


def lr_factor(step: int, config: TrainConfig, steps_per_epoch: int) -> float:
    """LR multiplier at ``step``: linear warm-up from 0, then step decay.

    Args:
        step: Optimiser step (from 0).
        config: The schedule lives in ``config.schedule``.
        steps_per_epoch: Converts epoch-based schedules to steps.

    Returns:
        The factor applied to each group's base learning rate.
    """
    s = config.schedule
    warmup = to_steps(s.warmup, s.unit, steps_per_epoch)
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    drops = sum(step >= to_steps(b, s.unit, steps_per_epoch) for b in s.decay_at)
    return s.decay_factor**drops


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR of :func:`lr_factor` (its state dict holds only numbers)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config, steps_per_epoch)
    )


# --------------------------------------------------------------------------- data


def _epoch_order(n: int, seed: int, epoch: int) -> Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


class _TensorBatches:
    """Shuffled unique batches of tensors, sharded over processes, resumable by step."""

    def __init__(self, x: Tensor, y: Tensor, batch: int, seed: int, info: DistInfo) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}")
        if batch % info.world_size:
            raise ValueError(
                f"{batch} unique examples per step cannot be split over {info.world_size} processes"
            )
        self.x, self.y, self.batch, self.seed, self.info = x, y, batch, seed, info
        self.steps_per_epoch = x.shape[0] // batch  # the last partial batch is dropped
        if self.steps_per_epoch < 1:
            raise ValueError(f"{x.shape[0]} training examples are fewer than one batch of {batch}")

    def from_step(self, step: int) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, position = divmod(step, self.steps_per_epoch)
        while True:
            order = _epoch_order(self.x.shape[0], self.seed, epoch)
            for i in range(position, self.steps_per_epoch):
                rows = order[i * self.batch : (i + 1) * self.batch]
                rows = rows[self.info.rank :: self.info.world_size]
                yield self.x[rows], self.y[rows]
            epoch, position = epoch + 1, 0


class _LoaderBatches:
    """Batches from a DataLoader; resuming skips the batches already seen this epoch.

    Exact only if the loader's order depends on nothing but the epoch (a sampler with
    ``set_epoch``, e.g. ``DistributedSampler``, or a seeded generator re-seeded per epoch).
    """

    def __init__(self, loader: Iterable) -> None:
        self.loader = loader
        self.steps_per_epoch = len(loader)  # type: ignore[arg-type]

    def from_step(self, step: int) -> Iterator[tuple[Tensor, Tensor]]:
        epoch, position = divmod(step, self.steps_per_epoch)
        while True:
            sampler = getattr(self.loader, "sampler", None)
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)
            for i, (x, y) in enumerate(self.loader):
                if i >= position:
                    yield x, y
            epoch, position = epoch + 1, 0


def _val_arrays(val: Data) -> tuple[Tensor | Iterable, Tensor]:
    if isinstance(val, tuple) and len(val) == 2 and isinstance(val[0], Tensor):
        return val[0], val[1]
    labels = torch.cat([torch.as_tensor(b[1]) for b in val])
    return val, labels


# --------------------------------------------------------------------------- fit


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
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
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
        config: The training config; ``batch_size`` rows per step are
            ``config.unique_batch_size`` unique examples tiled K times.
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
        return _fit(
            model, train, val, likelihood=likelihood, n_train=n_train, config=config,
            ensemble_size=ensemble_size, checkpoint_dir=checkpoint_dir, resume=resume,
            progress=progress, on_eval=on_eval, on_step=on_step, info=info, device=device,
            started=started,
        )  # fmt: skip
    finally:
        if joined:
            dist.destroy_process_group()


def _fit(
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
    progress: bool,
    on_eval: Callable[[int, dict[str, float]], None] | None,
    on_step: Callable[[int], None] | None,
    info: DistInfo,
    device: torch.device,
    started: float,
) -> FitResult:
    """The body of :func:`fit`, run inside the process group (see there)."""
    k = model_ensemble_size(model) if ensemble_size is None else ensemble_size
    if config.batch_size % k:
        raise ValueError(f"batch_size {config.batch_size} is not a multiple of K={k}")
    unique = config.batch_size // k
    if isinstance(train, tuple) and len(train) == 2 and isinstance(train[0], Tensor):
        batches: _TensorBatches | _LoaderBatches = _TensorBatches(
            train[0], train[1], unique, config.seed, info
        )
    else:
        batches = _LoaderBatches(train)
    steps_per_epoch = batches.steps_per_epoch
    total = config.total_steps(steps_per_epoch)
    anneal = to_steps(config.schedule.kl_anneal, config.schedule.unit, steps_per_epoch)

    model.to(device)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config, steps_per_epoch)
    # Different noise per process; identical weights come from DDP's initial broadcast.
    seed_everything(config.seed + 7919 * info.rank)

    step, best_step, best_nll, stale = 0, -1, math.inf, 0
    best_state: dict[str, Tensor] | None = None
    history: list[dict[str, float]] = []
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir else None
    if resume and ckpt_path is not None and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location="cpu")
        if state["config"] != config.to_dict():
            changed = _diff(state["config"], config.to_dict())
            raise ValueError(f"{ckpt_path}: written with a different config ({changed})")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best_step, best_nll = state["step"], state["best_step"], state["best_val_nll"]
        stale, history, best_state = state["stale"], state["history"], state["best_model"]
        if state["world_size"] == info.world_size:
            set_rng_state(state["rng"][info.rank])
        else:
            raise ValueError(
                f"{ckpt_path}: written by {state['world_size']} processes, resuming with "
                f"{info.world_size}; the RNG streams cannot be continued exactly"
            )

    net: nn.Module = model
    if info.world_size > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if config.bf16 and device.type == "cuda"
        else nullcontext()
    )
    val_x, val_y = _val_arrays(val) if val is not None else (None, None)

    def checkpoint(final: bool) -> None:
        rng = rng_state()
        if info.world_size > 1:
            gathered: list[Any] = [None] * info.world_size
            dist.all_gather_object(gathered, rng)  # our own processes' plain RNG states
        else:
            gathered = [rng]
        if not info.is_main or ckpt_path is None:
            return
        save_checkpoint(
            ckpt_path,
            {
                "step": step,
                "epoch": step // steps_per_epoch,
                "batch_in_epoch": step % steps_per_epoch,
                "model": _cpu_state_dict(model),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": gathered,
                "world_size": info.world_size,
                "best_model": best_state,
                "best_step": best_step,
                "best_val_nll": best_nll,
                "stale": stale,
                "history": history,
                "config": config.to_dict(),
                "final": final,
            },
        )

    def evaluate() -> float:
        value = torch.zeros(1, device=device)
        if info.is_main:
            # A forked, fixed-seed RNG: evaluation neither consumes nor depends on the
            # training streams, so eval settings cannot change the trained weights.
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(config.seed + _EVAL_SEED_OFFSET)
                logits = predict_member_logits(
                    model, val_x, k, config.num_eval_samples,
                    batch_size=config.eval_batch_size, device=device, bf16=config.bf16,
                )  # fmt: skip
            value[0] = float(rank1.mixture_nll(logits, val_y.to(logits.device), likelihood))
        if info.world_size > 1:
            dist.broadcast(value, 0)  # every process takes the main process's decision
        return float(value)

    sums = torch.zeros(4, device=device)  # loss, nll, kl, elbo since the last evaluation
    count = 0
    stopped_early = False
    bar = _progress(progress and info.is_main, total, step)
    model.train()
    data = batches.from_step(step)
    with bar as live:
        task = live.add_task("train", total=total, completed=step) if live else None
        while step < total:
            x, y = next(data)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            xt = rank1.tile(x, k) if k > 1 else x
            with autocast:
                logits = net(xt)
            terms = objective(
                logits, y, model, likelihood=likelihood, n_train=n_train, step=step,
                anneal_steps=anneal,
            )  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            if config.optim.grad_clip_norm is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            step += 1
            sums += torch.stack([terms.loss.detach(), terms.nll, terms.kl, terms.elbo])
            count += 1
            if on_step is not None:
                on_step(step)
            last = step == total
            if val_x is not None and (
                last or (config.eval_every and step % config.eval_every == 0)
            ):
                val_nll = evaluate()
                avg = (sums / max(count, 1)).tolist()
                record = {
                    "step": float(step),
                    "epoch": step / steps_per_epoch,
                    "train_loss": avg[0],
                    "train_nll": avg[1],
                    "kl": avg[2],
                    "elbo": avg[3],
                    "beta": terms.beta,
                    "lr": optimizer.param_groups[0]["lr"],
                    "val_nll": val_nll,
                }
                sums.zero_()
                count = 0
                history.append(record)
                if val_nll < best_nll:
                    best_nll, best_step, stale = val_nll, step, 0
                    best_state = _cpu_state_dict(model)
                else:
                    stale += 1
                if on_eval is not None and info.is_main:
                    on_eval(step, record)
                if config.patience and stale >= config.patience and not last:
                    stopped_early = True
            elif on_eval is not None and (
                last or (config.eval_every and step % config.eval_every == 0)
            ):
                # No validation data: still report the training curves at the same points.
                avg = (sums / max(count, 1)).tolist()
                sums.zero_()
                count = 0
                if info.is_main:
                    on_eval(step, {
                        "step": float(step), "epoch": step / steps_per_epoch,
                        "train_loss": avg[0], "train_nll": avg[1], "kl": avg[2],
                        "elbo": avg[3], "beta": terms.beta,
                        "lr": optimizer.param_groups[0]["lr"],
                    })  # fmt: skip
            if live is not None and (step % 10 == 0 or last or stopped_early):
                live.update(
                    task, completed=step,
                    description=f"loss {terms.loss.item():.4f} best val {best_nll:.4f}",
                )  # fmt: skip
            if (
                stopped_early
                or last
                or (config.checkpoint_every and step % config.checkpoint_every == 0)
            ):
                checkpoint(final=stopped_early or last)
            if stopped_early:
                break

    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(
        model=model,
        steps=step,
        best_step=best_step,
        best_val_nll=best_nll if best_step >= 0 else float("nan"),
        stopped_early=stopped_early,
        history=history,
        seconds=time.perf_counter() - started,
    )


def _diff(old: dict, new: dict, prefix: str = "") -> str:
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _diff(a, b, f"{prefix}{key}.")
            if inner:
                changed.append(inner)
        elif a != b:
            changed.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return ", ".join(changed)


def _progress(enabled: bool, total: int, done: int):
    if not enabled:
        return nullcontext(None)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )


def fit_ensemble(
    make_model: Callable[[], nn.Module],
    train: Data,
    val: Data | None,
    *,
    likelihood: Likelihood,
    n_train: int,
    config: TrainConfig,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
) -> tuple[DeepEnsemble, list[FitResult]]:
    """Train ``config.ensemble_size`` deterministic models independently (a deep ensemble).

    Member k is created and trained under seed ``config.seed + k`` (different weights,
    data order and noise), each with the full schedule and its own best checkpoint.

    Args:
        make_model: Builds one untrained deterministic model (called under member k's seed).
        train: As in :func:`fit`.
        val: As in :func:`fit`.
        likelihood: As in :func:`fit`.
        n_train: As in :func:`fit`.
        config: The shared config; ``ensemble_size`` members are trained.
        checkpoint_dir: Member k checkpoints into ``checkpoint_dir/m<k>``.
        resume: As in :func:`fit`, per member.
        progress: As in :func:`fit`.
        on_eval: Called with ``(step, metrics)``; metrics carry ``member`` = k.

    Returns:
        The :class:`~pipeline.predict.DeepEnsemble` and each member's :class:`FitResult`.
    """
    members, results = [], []
    for member in range(config.ensemble_size):
        member_config = copy.deepcopy(config)
        member_config.seed = config.seed + member
        seed_everything(member_config.seed)
        model = make_model()
        callback = None
        if on_eval is not None:

            def callback(step, record, member=member):
                on_eval(step, {**record, "member": float(member)})

        result = fit(
            model, train, val, likelihood=likelihood, n_train=n_train, config=member_config,
            ensemble_size=1,
            checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir) / f"m{member}",
            resume=resume, progress=progress, on_eval=callback,
        )  # fmt: skip
        members.append(result.model)
        results.append(result)
    return DeepEnsemble(members), results
