"""The rank-1 factor posteriors, priors, initialisation and KL, in one place.

A rank-1 layer owns two factors, ``r`` (input side) and ``s`` (output side). Each factor is a
mixture of K fully factorised distributions over a vector of size ``d``, one component per
ensemble member, stored as a ``(K, d)`` location and a ``(K, d)`` raw scale with
``scale = softplus(raw) + 1e-7`` (spec sections 1.3-1.6).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Family = Literal["normal", "cauchy"]
Sampling = Literal["example", "member", "mean"]

#: edward2's softplus constraint adds the Keras epsilon to the scale.
SCALE_EPS = 1e-7
#: Samples of Linear/Conv factors are clipped to this range (edward2's perturbation bounds).
CLIP = 10.0
#: No Gaussian draw of torch's reaches this many standard deviations (Box-Muller from
#: uniforms of at most 53 bits gives |eps| < 8.6); the layers use it to skip the clip pass
#: when no sample can reach the bounds.
_GAUSS_BOUND = 40.0


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def scale_from_dropout_rate(dropout_rate: float) -> float:
    """Posterior stddev implied by a "dropout rate" p: ``sqrt(p / (1 - p))`` (spec 1.4)."""
    if not 0.0 < dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in (0, 1), got {dropout_rate}")
    return math.sqrt(dropout_rate / (1.0 - dropout_rate))


class Rank1Factor(nn.Module):
    """A mixture posterior over one rank-1 factor (``r`` or ``s``) of K members.

    Args:
        ensemble_size: K, the number of mixture components.
        features: d, the length of the factor vector.
        posterior: ``"normal"`` or ``"cauchy"`` components.
        prior: family of the prior, centred at ``prior_mean``; defaults to ``posterior``.
        prior_mean: Location of the prior (1.0 in every paper recipe).
        prior_stddev: Stddev of a normal prior, or scale of a Cauchy prior.
        random_sign_init: ``v > 0``: means are +1 with probability v, else -1;
            ``v < 0``: means are drawn from N(1, v^2); ``v == 0``: means are exactly 1.
        dropout_rate: Sets the initial posterior scale to ``sqrt(p / (1 - p))``.
        device: Factory keyword, as in ``nn.Linear``.
        dtype: Factory keyword, as in ``nn.Linear``.

    Attributes:
        loc: ``(K, d)`` posterior locations.
        scale_raw: ``(K, d)`` raw scales; ``scale = softplus(scale_raw) + 1e-7``.
    """

    def __init__(
        self,
        ensemble_size: int,
        features: int,
        *,
        posterior: Family = "normal",
        prior: Family | None = None,
        prior_mean: float = 1.0,
        prior_stddev: float = 0.1,
        random_sign_init: float = 0.5,
        dropout_rate: float = 1e-3,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if posterior not in ("normal", "cauchy"):
            raise ValueError(f"posterior must be 'normal' or 'cauchy', got {posterior!r}")
        prior = posterior if prior is None else prior
        if prior not in ("normal", "cauchy"):
            raise ValueError(f"prior must be 'normal' or 'cauchy', got {prior!r}")
        if prior_stddev <= 0:
            raise ValueError(f"prior_stddev must be > 0, got {prior_stddev}")
        self.ensemble_size = ensemble_size
        self.features = features
        self.posterior = posterior
        self.prior = prior
        self.prior_mean = float(prior_mean)
        self.prior_stddev = float(prior_stddev)
        self.random_sign_init = float(random_sign_init)
        self.dropout_rate = float(dropout_rate)
        factory = {"device": device, "dtype": dtype}
        self.loc = nn.Parameter(torch.empty(ensemble_size, features, **factory))
        self.scale_raw = nn.Parameter(torch.empty(ensemble_size, features, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as the paper's scripts do (spec section 1.4)."""
        with torch.no_grad():
            v = self.random_sign_init
            if v > 0:
                signs = torch.bernoulli(torch.full_like(self.loc, v))
                self.loc.copy_(2.0 * signs - 1.0)
            elif v < 0:
                self.loc.normal_(1.0, abs(v))
            else:
                self.loc.fill_(1.0)
            raw = _inverse_softplus(scale_from_dropout_rate(self.dropout_rate))
            if self.posterior == "normal":
                nn.init.trunc_normal_(self.scale_raw, raw, 0.1, raw - 0.2, raw + 0.2)
            else:
                self.scale_raw.fill_(raw)

    @property
    def scale(self) -> Tensor:
        """``(K, d)`` posterior scales."""
        return F.softplus(self.scale_raw) + SCALE_EPS

    def can_reach_clip(self, scale: Tensor) -> bool:
        """Whether a sample could fall outside ``[-CLIP, CLIP]`` (always True for Cauchy)."""
        if self.posterior == "cauchy" or self.loc.device.type != "cpu":
            # On an accelerator the check would force a host sync each forward, which costs
            # more than the clip pass it could save.
            return True
        with torch.no_grad():
            return bool((self.loc.abs() + _GAUSS_BOUND * scale).max() >= CLIP)

    def noise(self, n: int) -> Tensor:
        """Draw standard noise of shape ``(K, n, d)`` for ``n`` samples per member."""
        shape = (self.ensemble_size, n, self.features)
        if self.posterior == "normal":
            return torch.randn(shape, device=self.loc.device, dtype=self.loc.dtype)
        eps = torch.empty(shape, device=self.loc.device, dtype=self.loc.dtype)
        return eps.cauchy_()

    def reparameterization(
        self, n: int, mode: Sampling = "example", clip: bool = True
    ) -> tuple[Tensor, Tensor, bool]:
        """The terms of ``value = loc + scale * eps`` for one forward pass.

        Args:
            n: Samples per member (the per-member batch size B).
            mode: ``"example"`` (an independent draw per example), ``"member"`` (one draw
                per member, shared by its B examples) or ``"mean"`` (zero noise).
            clip: Whether samples are to be clipped to ``[-10, 10]`` (Linear/Conv).

        Returns:
            ``scale`` ``(K, d)``, standard noise ``eps`` ``(K, n, d)`` for ``"example"``
            (else ``(K, 1, d)``), and whether a clip is needed: only when ``clip`` is set
            and some sample can reach the bounds.
        """
        if mode == "mean":
            zeros = torch.zeros_like(self.loc)
            return zeros, zeros.unsqueeze(1), False
        scale = self.scale
        eps = self.noise(n if mode == "example" else 1)
        return scale, eps, clip and self.can_reach_clip(scale)

    def sample(self, n: int, mode: Sampling = "example", clip: bool = True) -> Tensor:
        """Draw reparameterised factor values.

        Args:
            n: Samples per member (the per-member batch size B).
            mode: ``"example"`` (an independent draw per example), ``"member"`` (one draw
                per member, shared by its B examples) or ``"mean"`` (the posterior locations).
            clip: Clip samples to ``[-10, 10]`` (Linear/Conv do; LSTM does not).

        Returns:
            ``(K, n, d)`` for ``mode="example"``, else ``(K, 1, d)`` (broadcastable).
        """
        if mode == "mean":
            return self.loc.unsqueeze(1)
        scale, eps, do_clip = self.reparameterization(n, mode, clip)
        value = torch.addcmul(self.loc.unsqueeze(1), scale.unsqueeze(1), eps)
        return value.clamp(-CLIP, CLIP) if do_clip else value

    def kl(self) -> Tensor:
        """KL(q || p) of the whole ``(K, d)`` factor, summed over all K*d entries.

        Closed form when posterior and prior are both normal; otherwise a one-sample Monte
        Carlo estimate ``log q(x) - log p(x)`` at a fresh draw, as edward2 does (spec 1.6).
        """
        return _kl_sum(
            self.posterior, self.prior, self.prior_mean, self.prior_stddev, self.loc, self.scale
        )

    def extra_repr(self) -> str:
        """Summarise the configuration for ``repr``."""
        return (
            f"ensemble_size={self.ensemble_size}, features={self.features}, "
            f"posterior={self.posterior}, prior={self.prior}({self.prior_mean}, "
            f"{self.prior_stddev})"
        )


def rank1_factors(model: nn.Module) -> Iterator[Rank1Factor]:
    """Yield every :class:`Rank1Factor` in ``model``."""
    for m in model.modules():
        if isinstance(m, Rank1Factor):
            yield m


def _distribution(family: Family, loc: Tensor, scale: Tensor):
    if family == "normal":
        return torch.distributions.Normal(loc, scale)
    return torch.distributions.Cauchy(loc, scale)


def _kl_sum(
    posterior: Family,
    prior: Family,
    prior_mean: float,
    prior_stddev: float,
    loc: Tensor,
    scale: Tensor,
) -> Tensor:
    """Summed KL of elementwise posteriors ``(loc, scale)`` against one shared prior."""
    if posterior == "normal" and prior == "normal":
        ratio = scale / prior_stddev
        diff = (loc - prior_mean) / prior_stddev
        return (0.5 * (ratio.square() + diff.square()) - 0.5 - torch.log(ratio)).sum()
    q = _distribution(posterior, loc, scale)
    p = _distribution(prior, torch.full_like(loc, prior_mean), torch.full_like(loc, prior_stddev))
    x = q.rsample()
    return (q.log_prob(x) - p.log_prob(x)).sum()


def kl_divergence(model: nn.Module) -> Tensor:
    """Sum of the KL terms of every rank-1 factor in ``model`` (over layers and members).

    Factors that share a posterior family and a prior are concatenated and their KL is
    computed in one vectorised pass: a model has dozens of factors, and one small op chain
    per factor would cost more kernel launches than the network itself on a GPU.

    Args:
        model: Any module; modules that are not rank-1 contribute nothing.

    Returns:
        A scalar tensor (zero for a model without rank-1 layers).
    """
    groups: dict[tuple, list[Rank1Factor]] = {}
    for f in rank1_factors(model):
        groups.setdefault((f.posterior, f.prior, f.prior_mean, f.prior_stddev), []).append(f)
    if not groups:
        p = next(model.parameters(), None)
        return torch.zeros((), device=None if p is None else p.device)
    total = None
    for (posterior, prior, prior_mean, prior_stddev), factors in groups.items():
        loc = torch.cat([f.loc.reshape(-1) for f in factors])
        raw = torch.cat([f.scale_raw.reshape(-1) for f in factors])
        scale = F.softplus(raw) + SCALE_EPS
        term = _kl_sum(posterior, prior, prior_mean, prior_stddev, loc, scale)
        total = term if total is None else total + term
    return total


def set_sampling(model: nn.Module, mode: Sampling) -> None:
    """Set how every rank-1 layer in ``model`` draws its factors.

    Args:
        model: A module containing rank-1 layers.
        mode: ``"example"`` (paper default: an independent draw per example), ``"member"``
            (one draw per member per forward), or ``"mean"`` (posterior locations: a
            deterministic, repeatable forward).
    """
    if mode not in ("example", "member", "mean"):
        raise ValueError(f"sampling must be 'example', 'member' or 'mean', got {mode!r}")
    for m in model.modules():
        if hasattr(m, "sampling") and any(isinstance(c, Rank1Factor) for c in m.children()):
            m.sampling = mode


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer parameter groups that decay everything except the factor posteriors.

    Shared weights, biases (including per-member biases) and normalisation layers get
    ``weight_decay``; the rank-1 posterior locations and scales get none (they are
    regularised by the KL only). Groups are chosen by module type, not by parameter names,
    so renaming cannot silently change them. Every group trains at the optimiser's learning
    rate: the reference's ``fast_weight_lr_multiplier`` scales the factors' gradients
    instead (:func:`scale_factor_grads_`).

    Note: the paper's L2 is ``lambda * sum(theta^2)``; its SGD equivalent is
    ``weight_decay = 2 * lambda``.

    Args:
        model: The model.
        weight_decay: Decay for shared weights, biases and norm layers.

    Returns:
        A list of one or two param-group dicts for a ``torch.optim`` optimizer: ``"shared"``
        and, when the model has rank-1 factors, ``"rank1_factors"``.
    """
    factor_ids = {id(p) for f in rank1_factors(model) for p in f.parameters()}
    decayed = [p for p in model.parameters() if id(p) not in factor_ids and p.requires_grad]
    fast = [p for p in model.parameters() if id(p) in factor_ids and p.requires_grad]
    groups: list[dict] = [{"params": decayed, "weight_decay": weight_decay, "name": "shared"}]
    if fast:
        groups.append({"params": fast, "weight_decay": 0.0, "name": "rank1_factors"})
    return groups


def scale_factor_grads_(model: nn.Module, multiplier: float) -> None:
    """Multiply the gradients of every factor posterior (``loc``, ``scale_raw``) in place.

    This is the reference's ``fast_weight_lr_multiplier`` (spec 1.7): its training steps
    multiply the fast weights' gradients before ``apply_gradients``. Under plain SGD that
    equals an m-times learning rate for the factors; under Adam, which is invariant to the
    scale of a parameter's gradients, it is nearly a no-op (only ``eps`` sees it).

    Args:
        model: Any module; call it after ``backward()`` and before ``optimizer.step()``.
        multiplier: The factor; 1.0 leaves every gradient untouched (not even rewritten).
    """
    if multiplier == 1.0:
        return
    with torch.no_grad():
        for factor in rank1_factors(model):
            for p in factor.parameters():
                if p.grad is not None:
                    p.grad.mul_(multiplier)
