"""Typed configuration of the rank-1 factors shared by every rank-1 layer of a model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

from rank1.factors import Family, Sampling

#: The accepted values of ``posterior`` / ``prior`` and of ``sampling``.
FAMILIES: tuple[str, ...] = get_args(Family)
SAMPLINGS: tuple[str, ...] = get_args(Sampling)


@dataclass(frozen=True)
class Rank1Config:
    """Prior, posterior and sampling settings of a rank-1 layer or model.

    The one home of these settings' defaults and checks: ``Rank1Linear``, ``Rank1Conv2d`` and
    ``Rank1LSTM`` take one (``rank1=``), and the model configs hold one. It is frozen, so a
    layer's settings cannot drift from the config it was built with (derive a new one with
    ``dataclasses.replace``, which checks again).

    Defaults are the CIFAR WRN-28-10 recipe (spec section 5.1); the model configs override
    what their recipe changes (ImageNet: ``prior_stddev=0.05``, ``random_sign_init=0.75``).

    Attributes:
        ensemble_size: K, the number of mixture components (members), at least 1.
        posterior: ``"normal"`` or ``"cauchy"`` factor posteriors.
        prior: Prior family; ``None`` means the same as ``posterior``.
        prior_mean: Prior location (1.0 in every recipe).
        prior_stddev: Prior stddev (normal) or scale (Cauchy), > 0.
        random_sign_init: ``v > 0``: factor means are +1 w.p. v else -1; ``v < 0``: N(1, v^2);
            ``v == 0``: exactly 1.
        dropout_rate: In (0, 1); sets the initial posterior stddev ``sqrt(p / (1 - p))``.
        sampling: ``"example"`` (an independent draw per example: the paper's way),
            ``"member"`` (one draw per member per forward: cheaper, more correlated) or
            ``"mean"`` (posterior means: deterministic).

    Raises:
        ValueError: On construction, naming the first setting out of range.
    """

    ensemble_size: int = 4
    posterior: Family = "normal"
    prior: Family | None = None
    prior_mean: float = 1.0
    prior_stddev: float = 0.1
    random_sign_init: float = 0.5
    dropout_rate: float = 1e-3
    sampling: Sampling = "example"

    def __post_init__(self) -> None:
        # bool is an int in Python; True is not an ensemble size.
        if (
            not isinstance(self.ensemble_size, int)
            or isinstance(self.ensemble_size, bool)
            or self.ensemble_size < 1
        ):
            raise ValueError(f"ensemble_size must be an int >= 1, got {self.ensemble_size!r}")
        if self.posterior not in FAMILIES:
            raise ValueError(f"posterior must be one of {FAMILIES}, got {self.posterior!r}")
        if self.prior is not None and self.prior not in FAMILIES:
            raise ValueError(f"prior must be None or one of {FAMILIES}, got {self.prior!r}")
        if not self.prior_stddev > 0:
            raise ValueError(f"prior_stddev must be > 0, got {self.prior_stddev!r}")
        if not 0.0 < self.dropout_rate < 1.0:
            raise ValueError(f"dropout_rate must be in (0, 1), got {self.dropout_rate!r}")
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
