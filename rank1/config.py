"""Typed configuration of the rank-1 factors shared by every rank-1 layer of a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rank1.factors import Family, Sampling


@dataclass
class Rank1Config:
    """Prior, posterior and sampling settings of a rank-1 model.

    Defaults are the CIFAR WRN-28-10 recipe (spec section 5.1); the model configs override
    what their recipe changes (ImageNet: ``prior_stddev=0.05``, ``random_sign_init=0.75``).

    Attributes:
        ensemble_size: K, the number of mixture components (members).
        posterior: ``"normal"`` or ``"cauchy"`` factor posteriors.
        prior: Prior family; ``None`` means the same as ``posterior``.
        prior_mean: Prior location (1.0 in every recipe).
        prior_stddev: Prior stddev (normal) or scale (Cauchy).
        random_sign_init: ``v > 0``: factor means are +1 w.p. v else -1; ``v < 0``: N(1, v^2).
        dropout_rate: Initial posterior stddev ``sqrt(p / (1 - p))``.
        sampling: ``"example"`` (per-example draws, the paper's way), ``"member"`` or
            ``"mean"``.
    """

    ensemble_size: int = 4
    posterior: Family = "normal"
    prior: Family | None = None
    prior_mean: float = 1.0
    prior_stddev: float = 0.1
    random_sign_init: float = 0.5
    dropout_rate: float = 1e-3
    sampling: Sampling = "example"

    def layer_kwargs(self) -> dict:
        """Keyword arguments for ``Rank1Linear`` / ``Rank1Conv2d`` / ``Rank1LSTM``."""
        return asdict(self)
