"""Member logits of rank-1 models, deterministic models and deep ensembles.

Every model is evaluated the same way: the batch is tiled K times (member-major, K = 1 for
a deterministic model), run ``S`` times, and the outputs are arranged as
``(S * K, N[, C])`` with path ``m = s * K + k``, the sample-major order that
``pipeline.metrics`` expects.

A deep ensemble of K independently trained models is wrapped in
:class:`rank1.models.DeepEnsemble`, which takes the same tiled batch as a rank-1 model
(member k reads rows ``[k*B, (k+1)*B)``), so it is predicted, logged and reloaded exactly
like a rank-1 model.

:func:`predict_logits` is how every job evaluates (training, validation, reports): with the
config's Monte Carlo samples, batch and precision, under the fixed :data:`EVAL_SEED`.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

import rank1

if TYPE_CHECKING:
    from pipeline.config import TrainConfig

#: Seed of the Monte Carlo draws at evaluation, so that evaluating a model twice (after
#: training, in a report) gives the same numbers.
EVAL_SEED = 0


def model_ensemble_size(model: nn.Module) -> int:
    """K of a model: its ``ensemble_size`` attribute (rank-1 models, ensembles), else 1."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    return int(getattr(model, "ensemble_size", 1))


def _is_stochastic(model: nn.Module) -> bool:
    return next(rank1.rank1_factors(model), None) is not None


def _batches(data: Tensor | Iterable, batch_size: int) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        yield from data.split(batch_size)
        return
    for batch in data:
        yield batch[0] if isinstance(batch, list | tuple) else batch


@torch.no_grad()
def predict_member_logits(
    model: nn.Module,
    data: Tensor | Iterable,
    ensemble_size: int,
    num_samples: int = 1,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    bf16: bool = False,
) -> Tensor:
    """All forward paths' logits on a dataset, sample-major.

    Rank-1 layers sample even in eval mode, so the S passes are S Monte Carlo samples per
    member; a model without rank-1 factors is deterministic and is run once (S = 1),
    since repeated identical passes would not change any mixture metric.

    Args:
        model: A rank-1 model or ``DeepEnsemble`` taking ``(K * B, ...)`` tiled
            batches, or a deterministic model taking ``(B, ...)`` (use K = 1).
        data: An untiled ``(N, ...)`` tensor, or an iterable of batches (tensors or
            ``(x, y)`` tuples, e.g. a DataLoader).
        ensemble_size: K.
        num_samples: S.
        batch_size: Unique examples per forward pass when ``data`` is a tensor.
        device: Where to run; defaults to the model's device.
        bf16: bfloat16 autocast (CUDA only).

    Returns:
        A float32 CPU tensor ``(S * K, N)`` (binary head) or ``(S * K, N, C)``, path
        ``m = s * K + k``.
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    samples = num_samples if _is_stochastic(model) else 1
    was_training = model.training
    model.eval()
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if bf16 and device.type == "cuda"
        else nullcontext()
    )
    outs = []
    try:
        with autocast:
            for x in _batches(data, batch_size):
                paths = rank1.predict(model, x.to(device), ensemble_size, samples)
                outs.append(paths.flatten(0, 1).float().cpu())  # (S*K, B[, C])
    finally:
        model.train(was_training)
    if not outs:
        raise ValueError("predict_member_logits: no data")
    return torch.cat(outs, 1)


def predict_logits(
    model: nn.Module,
    data: Tensor | Iterable,
    config: TrainConfig,
    device: torch.device,
) -> Tensor:
    """Member logits with the config's eval samples, batch and precision, seeded.

    The draws come from torch's global generator, seeded with :data:`EVAL_SEED` inside a
    forked RNG state, so the caller's random stream is left as it was.

    Args:
        model: Rank-1 model, deterministic model or ``DeepEnsemble``.
        data: As in :func:`predict_member_logits` (a tensor or a DataLoader).
        config: Gives ``num_eval_samples``, ``eval_batch_size`` (for a tensor) and ``bf16``.
        device: Where to run.

    Returns:
        ``(S * K, N[, C])`` float32 CPU logits, sample-major.
    """
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(EVAL_SEED)
        return predict_member_logits(
            model,
            data,
            model_ensemble_size(model),
            config.num_eval_samples,
            batch_size=config.eval_batch_size,
            device=device,
            bf16=config.bf16,
        )
