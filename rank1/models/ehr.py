"""The EHR model for the MIMIC-III benchmark tasks (spec sections 4.4 and 5.3).

Input projection -> LSTM -> dense hidden (relu6) -> a linear head, on hourly grids of the
MIMIC-III benchmark. The paper's released model embeds FHIR event sequences with an
internal embedding layer that was never published; here a (rank-1) linear projection of
each hourly feature vector stands in for it.

The head has ``output_dim`` units (1 Bernoulli logit for in-hospital mortality and
decompensation, 10 bucket logits for length of stay, 25 phenotype logits) and reads either
the LSTM state after each stay's last valid hour (``per_step=False``: in-hospital
mortality, phenotyping) or the LSTM output after every hour of one causal pass over the
stay (``per_step=True``: decompensation, length of stay, predicted at many hours of a
stay). A :class:`StayBatch` (padded whole stays plus the steps to predict at) gives the
model the predictions of a set of samples directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence

from rank1.config import Rank1Config
from rank1.ensemble import check_divisible
from rank1.layers import Rank1Linear, Rank1LSTM, glorot_uniform_, init_dense_weight_


def _mimic_rank1() -> Rank1Config:
    # The MIMIC flags: random-sign init 0.5, dropout rate 1e-3 and a N(1, 1) prior (the flag
    # default shared with the CHIL model; the paper's tuned value is not public).
    return Rank1Config(prior_stddev=1.0, random_sign_init=0.5)


@dataclass
class EHRConfig:
    """EHR LSTM configuration; defaults follow the paper's MIMIC-III flags (the IHM model).

    Attributes:
        input_features: Channels of the hourly grid (76 in the benchmark).
        projection_dim: Width of the per-hour input projection (the dense embedding dim, 32).
        rnn_dim: LSTM units (256).
        hidden_dim: Dense hidden units before the head (128, relu6).
        output_dim: Units of the head: 1 (a Bernoulli logit: in-hospital mortality,
            decompensation), 10 (length-of-stay buckets) or 25 (phenotypes).
        per_step: Outputs after every hour (decompensation, length of stay) instead of
            after each stay's last valid hour (in-hospital mortality, phenotyping).
        bayesian: Rank-1 layers when True, ordinary layers when False.
        rank1: Factor settings (K=4, prior N(1, 1), random-sign init 0.5).
    """

    input_features: int = 76
    projection_dim: int = 32
    rnn_dim: int = 256
    hidden_dim: int = 128
    output_dim: int = 1
    per_step: bool = False
    bayesian: bool = True
    rank1: Rank1Config = field(default_factory=_mimic_rank1)


@dataclass(frozen=True)
class StayBatch:
    """Whole stays padded to the longest, and the samples (stay, step) to predict.

    Sample j is the model's output at step ``sample_step[j]`` of stay ``sample_row[j]``: a
    prediction at hour t that may read rows ``0 .. t-1`` is step ``t - 1``; a prediction
    from the whole stay (phenotyping) is step ``lengths[row] - 1``. A batch tiles like a
    tensor (:meth:`tile`, :meth:`untile`, member-major), so ``rank1.tile`` and
    ``rank1.untile`` and the trainer take it where they take a tensor.

    Attributes:
        values: ``(B, T, F)`` hourly rows, zero after each stay's length.
        lengths: ``(B,)`` int64 valid rows of each stay (>= 1).
        sample_row: ``(S,)`` int64 row in ``values`` of each sample.
        sample_step: ``(S,)`` int64 step of each sample, ``< lengths[sample_row]``.
    """

    values: Tensor
    lengths: Tensor
    sample_row: Tensor
    sample_step: Tensor

    @property
    def num_samples(self) -> int:
        """S, the samples of the batch."""
        return int(self.sample_row.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> StayBatch:
        """The same batch on ``device``."""
        return StayBatch(
            *(t.to(device, non_blocking=non_blocking) for t in self._fields())  # type: ignore[arg-type]
        )

    def _fields(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.values, self.lengths, self.sample_row, self.sample_step

    def tile(self, ensemble_size: int) -> StayBatch:
        """K copies, member-major: stays ``[k*B, (k+1)*B)`` and samples ``[k*S, (k+1)*S)``."""
        k, b = ensemble_size, self.values.shape[0]
        if k < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {k}")
        offsets = torch.arange(k, device=self.sample_row.device).repeat_interleave(self.num_samples)
        return StayBatch(
            self.values.repeat(k, 1, 1),
            self.lengths.repeat(k),
            self.sample_row.repeat(k) + offsets * b,
            self.sample_step.repeat(k),
        )

    def untile(self, ensemble_size: int) -> list[StayBatch]:
        """The inverse of :meth:`tile`: member k's stays and samples, rows renumbered."""
        k = ensemble_size
        b = check_divisible(self.values.shape[0], k, "StayBatch stays")
        s = check_divisible(self.num_samples, k, "StayBatch samples")
        return [
            StayBatch(
                self.values[i * b : (i + 1) * b],
                self.lengths[i * b : (i + 1) * b],
                self.sample_row[i * s : (i + 1) * s] - i * b,
                self.sample_step[i * s : (i + 1) * s],
            )
            for i in range(k)
        ]


class EHRModel(nn.Module):
    """Projection -> LSTM -> dense(relu6) -> head, rank-1 or deterministic.

    A head of one unit is squeezed, as the in-hospital-mortality model always was: its
    outputs are Bernoulli logits without a trailing unit dimension.

    Args:
        config: An :class:`EHRConfig`.

    Shape:
        - x: ``(K * B, T, F)`` tiled grids (rank-1) or ``(B, T, F)`` (deterministic); or a
          (tiled) :class:`StayBatch`.
        - lengths (optional, with a tensor x): ``(B,)`` or ``(K * B,)`` numbers of valid
          hours; the last-step model reads the LSTM state after each sequence's last valid
          hour. The per-step model needs none: it is causal, so padding after a stay's
          last row does not change its outputs up to that row (outputs at padded steps
          are not meaningful).
        - Output with a tensor x: ``(K * B, out)`` (last step) or ``(K * B, T, out)`` (per
          step), ``out`` dropped when ``output_dim == 1``; with a :class:`StayBatch` of S
          (tiled: K * S) samples, ``(K * S, out)`` (``(K * S,)`` for one unit).
    """

    def __init__(self, config: EHRConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or EHRConfig()
        if config.output_dim < 1:
            raise ValueError(f"output_dim must be >= 1, got {config.output_dim}")
        out = config.output_dim
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
            self.output = Rank1Linear(config.hidden_dim, out, rank1=rc, weight_init="he_normal")
        else:
            self.projection = nn.Linear(config.input_features, config.projection_dim)
            self.lstm = nn.LSTM(config.projection_dim, config.rnn_dim, batch_first=True)
            self.hidden = nn.Linear(config.rnn_dim, config.hidden_dim)
            self.output = nn.Linear(config.hidden_dim, out)
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

    def forward(self, x: Tensor | StayBatch, lengths: Tensor | None = None) -> Tensor:
        """Map a batch to logits (see the class docstring for shapes)."""
        if isinstance(x, StayBatch):
            if lengths is not None:
                raise ValueError("a StayBatch carries its own lengths")
            if self.config.per_step:
                out = self._heads(self._states(x.values, None))  # (K*B, T, out)
                out = out[x.sample_row, x.sample_step]
            else:
                out = self._heads(self._states(x.values, x.lengths))[x.sample_row]
        else:
            out = self._heads(self._states(x, lengths))
        return out.squeeze(-1) if self.config.output_dim == 1 else out

    def _states(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        """LSTM outputs ``(K*B, T, H)`` (per step) or the last valid states ``(K*B, H)``."""
        z = self.projection(x)
        if self.config.per_step:
            # One causal pass, no mask: a step's output reads only the rows before it.
            out, _ = self.lstm(z)
            return out
        if self.config.bayesian:
            _, (h_n, _) = self.lstm(z, lengths=lengths)
        elif lengths is not None:
            packed = pack_padded_sequence(
                z, torch.as_tensor(lengths).cpu(), batch_first=True, enforce_sorted=False
            )
            _, (h_n, _) = self.lstm(packed)
        else:
            _, (h_n, _) = self.lstm(z)
        return h_n[-1]

    def _heads(self, states: Tensor) -> Tensor:
        """Dense(relu6) and the head on ``(K*B, [T,] H)`` states; rank-1 draws per stay."""
        return self.output(nn.functional.relu6(self.hidden(states)))
