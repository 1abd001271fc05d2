"""The EHR model for the 48-hour in-hospital-mortality task (spec sections 4.4 and 5.3).

Input projection -> LSTM -> dense hidden (relu6) -> one Bernoulli logit, on the hourly
``(48, 76)`` grid of the MIMIC-III benchmark. The paper's released model embeds FHIR event
sequences with an internal embedding layer that was never published; here a (rank-1) linear
projection of each hourly feature vector stands in for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from rank1.config import Rank1Config
from rank1.layers import Rank1Linear, Rank1LSTM, glorot_uniform_, init_dense_weight_


def _mimic_rank1() -> Rank1Config:
    # The MIMIC flags: random-sign init 0.5, dropout rate 1e-3 and a N(1, 1) prior (the flag
    # default shared with the CHIL model; the paper's tuned value is not public).
    return Rank1Config(prior_stddev=1.0, random_sign_init=0.5)


@dataclass
class EHRConfig:
    """EHR LSTM configuration; defaults follow the paper's MIMIC-III flags.

    Attributes:
        input_features: Channels of the hourly grid (76 in the benchmark).
        projection_dim: Width of the per-hour input projection (the dense embedding dim, 32).
        rnn_dim: LSTM units (256).
        hidden_dim: Dense hidden units before the logit (128, relu6).
        bayesian: Rank-1 layers when True, ordinary layers when False.
        rank1: Factor settings (K=4, prior N(1, 1), random-sign init 0.5).
    """

    input_features: int = 76
    projection_dim: int = 32
    rnn_dim: int = 256
    hidden_dim: int = 128
    bayesian: bool = True
    rank1: Rank1Config = field(default_factory=_mimic_rank1)


class EHRModel(nn.Module):
    """Projection -> LSTM -> dense(relu6) -> logit, rank-1 or deterministic.

    Args:
        config: An :class:`EHRConfig`.

    Shape:
        - x: ``(K * B, T, F)`` tiled grids (rank-1) or ``(B, T, F)`` (deterministic).
        - lengths (optional): ``(B,)`` or ``(K * B,)`` numbers of valid hours; the model
          reads the LSTM state after each sequence's last valid hour.
        - Output: ``(K * B,)`` (or ``(B,)``) Bernoulli logits.
    """

    def __init__(self, config: EHRConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EHRConfig()
        # The reference's hidden and output DenseRank1 layers both set he_normal kernels
        # (records-research Rank1BayesianRNN); the projection stands in for the unreleased
        # embedding and keeps the library default, glorot_uniform.
        if config.bayesian:
            rc = config.rank1
            self.projection = Rank1Linear(config.input_features, config.projection_dim, rank1=rc)
            self.lstm = Rank1LSTM(config.projection_dim, config.rnn_dim, batch_first=True, rank1=rc)
            self.hidden = Rank1Linear(
                config.rnn_dim, config.hidden_dim, rank1=rc, weight_init="he_normal"
            )
            self.output = Rank1Linear(config.hidden_dim, 1, rank1=rc, weight_init="he_normal")
        else:
            self.projection = nn.Linear(config.input_features, config.projection_dim)
            self.lstm = nn.LSTM(config.projection_dim, config.rnn_dim, batch_first=True)
            self.hidden = nn.Linear(config.rnn_dim, config.hidden_dim)
            self.output = nn.Linear(config.hidden_dim, 1)
            # Same initialisers as the rank-1 twin, so baselines differ only in the factors.
            for layer, scheme in (
                (self.projection, "glorot_uniform"),
                (self.output, "he_normal"),
                (self.hidden, "he_normal"),
            ):
                init_dense_weight_(layer.weight, scheme)
                nn.init.zeros_(layer.bias)
            glorot_uniform_(self.lstm.weight_ih_l0)
            nn.init.orthogonal_(self.lstm.weight_hh_l0)
            with torch.no_grad():
                h = config.rnn_dim
                self.lstm.bias_ih_l0.zero_()
                self.lstm.bias_hh_l0.zero_()
                self.lstm.bias_ih_l0[h : 2 * h] = 1.0

    @property
    def ensemble_size(self) -> int:
        """K for the rank-1 model, 1 for the deterministic one."""
        return self.config.rank1.ensemble_size if self.config.bayesian else 1

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Map a batch to logits (see the class docstring for shapes)."""
        z = self.projection(x)
        if self.config.bayesian:
            _, (h_n, _) = self.lstm(z, lengths=lengths)
        elif lengths is not None:
            packed = pack_padded_sequence(
                z, torch.as_tensor(lengths).cpu(), batch_first=True, enforce_sorted=False
            )
            _, (h_n, _) = self.lstm(packed)
        else:
            _, (h_n, _) = self.lstm(z)
        y = nn.functional.relu6(self.hidden(h_n[-1]))
        return self.output(y).squeeze(-1)
