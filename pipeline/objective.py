"""The paper's training objective: tiled-batch NLL plus the annealed KL (spec 1.6-1.7).

Per unique example the loss is

    (1/K) sum_k E_{q_k}[-log p(y | x)]  +  beta_t * KL_total / N_train

where the first term is the mean NLL over the K*B tiled rows (the average of the per-member
NLLs, the reference's default ``nll = average``), ``KL_total`` is summed over every rank-1
factor and over the K components (``rank1.kl_divergence``), and ``beta_t`` grows linearly
to ``kl_scale`` (1 in the spec's recipes) over the annealing period. The L2 term is not
part of this function: it is applied by the optimiser as weight decay on the shared
parameters (see ``pipeline.config``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

import rank1

Likelihood = Literal["bernoulli", "categorical"]


def kl_weight(step: int, anneal_steps: int, kl_scale: float = 1.0) -> float:
    """Linear KL annealing: ``beta_t = kl_scale * min(1, (t + 1) / anneal_steps)``.

    Args:
        step: The optimiser step t, counted from 0.
        anneal_steps: Steps to reach the full weight (``epochs * steps_per_epoch`` for
            epoch recipes); 0 means no annealing (full weight from the first step).
        kl_scale: The full weight (``ScheduleConfig.kl_scale``).

    Returns:
        beta_t in (0, kl_scale].
    """
    if anneal_steps <= 0:
        return kl_scale
    return kl_scale * min(1.0, (step + 1) / anneal_steps)


def tiled_nll(logits: Tensor, target: Tensor, likelihood: Likelihood) -> Tensor:
    """Mean NLL over every row of a tiled batch (= the mean of the per-member NLLs).

    Args:
        logits: ``(K * B,)`` Bernoulli logits or ``(K * B, C)`` class logits.
        target: ``(B,)`` labels (0/1 or class indices), tiled here to the K*B rows;
            ``(K * B,)`` targets are used as they are.
        likelihood: ``"bernoulli"`` or ``"categorical"``.

    Returns:
        A scalar tensor (float32 even under bf16 autocast).
    """
    rows = logits.shape[0]
    if target.shape[0] != rows:
        k = rank1.check_divisible(rows, target.shape[0], "logits")
        target = rank1.tile(target, k)
    if likelihood == "bernoulli":
        z = logits.float()
        if z.dim() == 2 and z.shape[-1] == 1:
            z = z.squeeze(-1)
        return F.binary_cross_entropy_with_logits(z, target.float())
    if likelihood == "categorical":
        return F.cross_entropy(logits.float(), target.long())
    raise ValueError(f"likelihood must be 'bernoulli' or 'categorical', got {likelihood!r}")


@dataclass
class ObjectiveTerms:
    """The parts of one step's objective.

    Attributes:
        loss: The differentiable loss ``nll + beta * kl / n_train`` (scalar tensor).
        nll: Mean NLL over the tiled batch (detached scalar tensor).
        kl: Total KL summed over factors and components (detached; 0 for plain models).
        beta: The annealing weight of this step.
        elbo: ``-(nll + kl / n_train)`` without beta, per example, as the paper logs it
            (detached scalar tensor; kept on the device so a step needs no host sync).
    """

    loss: Tensor
    nll: Tensor
    kl: Tensor
    beta: float
    elbo: Tensor


def objective(
    logits: Tensor,
    target: Tensor,
    model: nn.Module,
    *,
    likelihood: Likelihood,
    n_train: int,
    step: int,
    anneal_steps: int,
    kl_scale: float = 1.0,
) -> ObjectiveTerms:
    """Evaluate the paper's objective for one training step.

    Args:
        logits: Model output on the tiled batch, ``(K * B,)`` or ``(K * B, C)``.
        target: ``(B,)`` labels of the unique examples (or ``(K * B,)``).
        model: The model (unwrapped from DDP); its rank-1 factors give the KL.
        likelihood: ``"bernoulli"`` or ``"categorical"``.
        n_train: N, the number of unique training examples.
        step: The optimiser step t (from 0), for the annealing weight.
        anneal_steps: KL annealing length in steps.
        kl_scale: The KL weight once annealed (1 in the spec's recipes).

    Returns:
        The :class:`ObjectiveTerms`.
    """
    if n_train < 1:
        raise ValueError(f"n_train must be >= 1, got {n_train}")
    nll = tiled_nll(logits, target, likelihood)
    kl = rank1.kl_divergence(model).float()
    beta = kl_weight(step, anneal_steps, kl_scale)
    loss = nll + (beta / n_train) * kl
    nll, kl = nll.detach(), kl.detach()
    return ObjectiveTerms(loss=loss, nll=nll, kl=kl, beta=beta, elbo=-(nll + kl / n_train))
