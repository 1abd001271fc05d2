"""Rank-1 Bayesian neural networks in PyTorch (Dusenberry et al., ICML 2020).

The model library: torch only. It imports without pandas, polars, MLflow or Prefect.
"""

from rank1._fused import plain_kernels, use_fused
from rank1.config import Rank1Config
from rank1.ensemble import (
    check_divisible,
    member_nll,
    mixture_nll,
    mixture_probs,
    predict,
    tile,
    untile,
)
from rank1.factors import (
    Rank1Factor,
    kl_divergence,
    param_groups,
    rank1_factors,
    scale_factor_grads_,
    scale_from_dropout_rate,
    set_sampling,
)
from rank1.layers import Rank1Conv2d, Rank1Linear, Rank1LSTM

__all__ = [
    "Rank1Config",
    "Rank1Conv2d",
    "Rank1Factor",
    "Rank1LSTM",
    "Rank1Linear",
    "check_divisible",
    "kl_divergence",
    "member_nll",
    "mixture_nll",
    "mixture_probs",
    "param_groups",
    "plain_kernels",
    "predict",
    "rank1_factors",
    "scale_factor_grads_",
    "scale_from_dropout_rate",
    "set_sampling",
    "tile",
    "untile",
    "use_fused",
]
