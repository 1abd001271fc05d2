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

Modules: ``distributed`` (torchrun, device, process group), ``state`` (seeding, RNG
state), ``checkpoint`` (files), ``optim`` (optimiser, schedule), ``batches`` (resumable
batches), ``trainer`` (one run's state and its step/evaluation/resume/save), ``loop``
(:func:`fit`), ``progress`` (the bar) and ``ensemble`` (:func:`fit_ensemble`).
"""

from __future__ import annotations

from pipeline.train.batches import Data, EpochShuffleSampler
from pipeline.train.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from pipeline.train.distributed import DistInfo, dist_info, init_distributed, resolve_device
from pipeline.train.ensemble import fit_ensemble
from pipeline.train.loop import FitResult, fit
from pipeline.train.optim import build_optimizer, build_scheduler, lr_factor
from pipeline.train.state import rng_state, seed_everything, set_rng_state

__all__ = [
    "CHECKPOINT_FILE",
    "CheckpointError",
    "Data",
    "DistInfo",
    "EpochShuffleSampler",
    "FitResult",
    "build_optimizer",
    "build_scheduler",
    "dist_info",
    "fit",
    "fit_ensemble",
    "init_distributed",
    "load_checkpoint",
    "lr_factor",
    "resolve_device",
    "rng_state",
    "save_checkpoint",
    "seed_everything",
    "set_rng_state",
]
