"""Batch tiling and mixture predictions for rank-1 ensembles.

Every rank-1 layer works on a **member-major** batch of ``K * B`` rows: rows
``[k * B, (k + 1) * B)`` belong to ensemble member (mixture component) ``k``. This is the
layout of ``x.repeat(K, ...)`` (repeat the whole block, do not interleave), the one the
reference scripts use [Dusenberry et al. 2020, spec section 1.3].

Predictions are combined over ``S`` samples and ``K`` members as a uniform mixture:
probabilities are averaged and the NLL is the negative log of the averaged likelihood,
computed stably with ``logsumexp`` (spec section 1.8).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

Likelihood = Literal["categorical", "bernoulli"]


def check_divisible(batch: int, ensemble_size: int, what: str = "batch") -> int:
    """Return ``batch // ensemble_size``, raising a clear error when it does not divide.

    Args:
        batch: The leading dimension of a tiled tensor.
        ensemble_size: The number of members K.
        what: A name for the tensor, used in the error message.

    Returns:
        The per-member batch size B.

    Raises:
        ValueError: If ``batch`` is not a multiple of ``ensemble_size``.
    """
    if ensemble_size < 1:
        raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
    if batch % ensemble_size != 0:
        raise ValueError(
            f"{what} size {batch} is not divisible by ensemble_size={ensemble_size}; rank-1 "
            f"layers expect a member-major tiled batch of K*B rows (use rank1.tile(x, K))"
        )
    return batch // ensemble_size


def tile(x: Tensor, ensemble_size: int) -> Tensor:
    """Repeat a batch once per member, member-major.

    Args:
        x: A batch of shape ``(B, ...)``, or a structured batch with its own
            ``tile(ensemble_size)`` (e.g. :class:`rank1.models.StayBatch`).
        ensemble_size: The number of members K.

    Returns:
        A tensor of shape ``(K * B, ...)`` whose rows ``[k*B, (k+1)*B)`` are a copy of ``x``
        (a structured batch: what its ``tile`` returns).
    """
    if ensemble_size < 1:
        raise ValueError(f"ensemble_size must be >= 1, got {ensemble_size}")
    if not isinstance(x, Tensor):
        return x.tile(ensemble_size)
    return x.repeat(ensemble_size, *([1] * (x.dim() - 1)))


def untile(y: Tensor, ensemble_size: int) -> Tensor:
    """Split a member-major batch into one slice per member.

    Args:
        y: A tensor of shape ``(K * B, ...)``, or a structured batch with its own
            ``untile(ensemble_size)`` (e.g. :class:`rank1.models.StayBatch`).
        ensemble_size: The number of members K.

    Returns:
        A view of shape ``(K, B, ...)`` (a structured batch: the list of its K parts).

    Raises:
        ValueError: If the leading dimension is not divisible by K.
    """
    if not isinstance(y, Tensor):
        return y.untile(ensemble_size)
    b = check_divisible(y.shape[0], ensemble_size, "output batch")
    return y.view(ensemble_size, b, *y.shape[1:])


def _log_likelihood(logits: Tensor, target: Tensor, likelihood: Likelihood) -> Tensor:
    """Per-path log-likelihood of the targets, broadcasting over leading sample dims."""
    if likelihood == "categorical":
        logp = torch.log_softmax(logits.float(), dim=-1)
        idx = target.long().expand(logp.shape[:-1]).unsqueeze(-1)
        return logp.gather(-1, idx).squeeze(-1)
    if likelihood == "bernoulli":
        z = logits.float()
        if z.shape[-1] == 1 and z.dim() > target.dim():
            z = z.squeeze(-1)
        t = target.float().expand(z.shape)
        # log sigmoid(z) if y=1, log sigmoid(-z) if y=0, without forming probabilities.
        return -nn.functional.binary_cross_entropy_with_logits(z, t, reduction="none")
    raise ValueError(f"likelihood must be 'categorical' or 'bernoulli', got {likelihood!r}")


def mixture_probs(member_logits: Tensor, likelihood: Likelihood = "categorical") -> Tensor:
    """Predictive probabilities of the uniform mixture over members (and samples).

    Args:
        member_logits: Logits of shape ``(M, B, C)`` for a categorical head or ``(M, B)``
            (or ``(M, B, 1)``) for a Bernoulli head, where ``M = S * K`` paths; use
            ``logits.flatten(0, 1)`` on an ``(S, K, B, ...)`` tensor first.
        likelihood: ``"categorical"`` (softmax) or ``"bernoulli"`` (sigmoid).

    Returns:
        ``(B, C)`` class probabilities, or ``(B,)`` probabilities of the positive class.
    """
    if likelihood == "categorical":
        return torch.softmax(member_logits.float(), dim=-1).mean(0)
    if likelihood == "bernoulli":
        z = member_logits.float()
        if z.dim() == 3 and z.shape[-1] == 1:
            z = z.squeeze(-1)
        return torch.sigmoid(z).mean(0)
    raise ValueError(f"likelihood must be 'categorical' or 'bernoulli', got {likelihood!r}")


def mixture_nll(
    member_logits: Tensor,
    target: Tensor,
    likelihood: Likelihood = "categorical",
    reduction: Literal["mean", "none"] = "mean",
) -> Tensor:
    """Negative log-likelihood of the uniform mixture over M paths (log-mean-exp).

    ``-log( (1/M) * sum_m p_m(y) )``, computed as ``-logsumexp_m log p_m(y) + log M``.

    Args:
        member_logits: ``(M, B, C)`` (categorical) or ``(M, B)`` / ``(M, B, 1)`` (Bernoulli).
        target: ``(B,)`` class indices or 0/1 labels.
        likelihood: ``"categorical"`` or ``"bernoulli"``.
        reduction: ``"mean"`` over the batch or ``"none"`` for a ``(B,)`` tensor.

    Returns:
        A scalar (``reduction="mean"``) or a ``(B,)`` tensor.
    """
    ll = _log_likelihood(member_logits, target, likelihood)  # (M, B)
    nll = -(torch.logsumexp(ll, dim=0) - math.log(ll.shape[0]))
    return nll.mean() if reduction == "mean" else nll


def member_nll(
    member_logits: Tensor, target: Tensor, likelihood: Likelihood = "categorical"
) -> Tensor:
    """Mean NLL of each path on its own.

    Args:
        member_logits: ``(M, B, C)`` or ``(M, B)`` logits.
        target: ``(B,)`` labels.
        likelihood: ``"categorical"`` or ``"bernoulli"``.

    Returns:
        A ``(M,)`` tensor of per-path mean NLLs.
    """
    return -_log_likelihood(member_logits, target, likelihood).mean(-1)


@torch.no_grad()
def predict(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    ensemble_size: int,
    num_samples: int = 1,
) -> Tensor:
    """Run a rank-1 model on an untiled batch and return every path's output.

    The batch is tiled K times and the tiled batch is run ``num_samples`` times; rank-1 layers
    draw fresh factors on every call (unless set to posterior means, see
    :func:`rank1.set_sampling`), so the S passes are S Monte Carlo samples per member.

    Args:
        model: A module that maps a tiled ``(K * B, ...)`` batch to ``(K * B, ...)`` outputs.
        x: An untiled batch ``(B, ...)``.
        ensemble_size: K.
        num_samples: S, the number of stochastic passes.

    Returns:
        Outputs of shape ``(S, K, B, ...)``.
    """
    xt = tile(x, ensemble_size)
    outs = [untile(model(xt), ensemble_size) for _ in range(num_samples)]
    return torch.stack(outs, 0)
