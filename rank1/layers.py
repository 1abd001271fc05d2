"""Rank-1 Bayesian layers: ``Rank1Linear``, ``Rank1Conv2d`` and ``Rank1LSTM``.

Each layer shares one weight ``W`` across K ensemble members and owns, per member k, a
stochastic input-side factor ``r_k`` and output-side factor ``s_k`` (see
:class:`rank1.factors.Rank1Factor`) plus a deterministic per-member bias. The effective weight
of member k is ``W * (r_k s_k^T)``, computed without materialising it:
``y = ((x * r_k) W^T) * s_k + b_k`` (spec section 1.1).

Inputs are member-major tiled batches of ``K * B`` rows (see :func:`rank1.tile`).

Reference: Dusenberry et al., "Efficient and Scalable Bayesian Neural Nets with Rank-1
Factors", ICML 2020.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from rank1._fused import rank1_conv2d, rank1_linear, rank1_lstm_recurrence
from rank1.config import Rank1Config
from rank1.ensemble import check_divisible
from rank1.factors import Rank1Factor, Sampling


def he_normal_(weight: Tensor, fan_in: int) -> Tensor:
    """Keras ``he_normal``: a normal truncated at 2 std, std ``sqrt(2/fan_in)/0.8796``."""
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
    return nn.init.trunc_normal_(weight, 0.0, std, -2.0 * std, 2.0 * std)


def glorot_uniform_(weight: Tensor) -> Tensor:
    """Keras ``glorot_uniform`` (the edward2 library default kernel initializer)."""
    return nn.init.xavier_uniform_(weight)


def init_dense_weight_(weight: Tensor, scheme: str | float) -> Tensor:
    """Initialise an ``(out, in)`` dense weight as the reference does.

    Args:
        weight: The weight to fill in place.
        scheme: ``"glorot_uniform"`` (edward2's default), ``"he_normal"`` (Keras, truncated)
            or a float stddev of a plain normal (the ResNet-50 head uses 0.01).

    Returns:
        ``weight``.
    """
    if scheme == "glorot_uniform":
        return glorot_uniform_(weight)
    if scheme == "he_normal":
        return he_normal_(weight, weight.shape[1])
    if isinstance(scheme, float | int) and not isinstance(scheme, bool):
        return nn.init.normal_(weight, 0.0, float(scheme))
    raise ValueError(f"unknown weight_init {scheme!r}")


class _Rank1Mixin:
    """Shared construction of the settings, per-member biases and r/s factors.

    A layer keeps the :class:`Rank1Config` it was built with as ``rank1``; ``ensemble_size``
    and ``sampling`` read it, and setting ``sampling`` (as :func:`rank1.set_sampling` does)
    replaces it with a checked copy.
    """

    rank1: Rank1Config

    @property
    def ensemble_size(self) -> int:
        """K, the number of members."""
        return self.rank1.ensemble_size

    @property
    def sampling(self) -> Sampling:
        """How the factors are drawn: ``"example"``, ``"member"`` or ``"mean"``."""
        return self.rank1.sampling

    @sampling.setter
    def sampling(self, mode: Sampling) -> None:
        self.rank1 = dataclasses.replace(self.rank1, sampling=mode)

    def _set_config(self, config: Rank1Config | None) -> None:
        if config is None:
            config = Rank1Config()
        elif not isinstance(config, Rank1Config):
            raise TypeError(f"rank1 must be a Rank1Config or None, got {type(config).__name__}")
        self.rank1 = config

    def _member_bias(self, features: int, bias: bool, factory: dict) -> nn.Parameter | None:
        """A ``(K, features)`` per-member bias parameter, or None."""
        if not bias:
            return None
        return nn.Parameter(torch.empty(self.ensemble_size, features, **factory))

    def _make_factors(self, d_in: int, d_out: int, factory: dict, suffix: str = "") -> None:
        """Add the ``r{suffix}`` (K, d_in) and ``s{suffix}`` (K, d_out) factor posteriors."""
        c = self.rank1
        for name, features in (("r", d_in), ("s", d_out)):
            factor = Rank1Factor(
                c.ensemble_size,
                features,
                posterior=c.posterior,
                prior=c.prior,
                prior_mean=c.prior_mean,
                prior_stddev=c.prior_stddev,
                random_sign_init=c.random_sign_init,
                dropout_rate=c.dropout_rate,
                **factory,
            )
            self.add_module(name + suffix, factor)

    def _init_shared(
        self, weight_shape: tuple[int, ...], d_in: int, d_out: int, bias: bool, factory: dict
    ) -> None:
        """The Linear/Conv parameters: shared ``weight``, per-member ``bias``, ``r`` and ``s``."""
        self.weight = nn.Parameter(torch.empty(*weight_shape, **factory))
        self.bias = self._member_bias(d_out, bias, factory)
        self._make_factors(d_in, d_out, factory)

    def _reset_bias_and_factors(self) -> None:
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        self.r.reset_parameters()
        self.s.reset_parameters()

    def _copy_from(self, module: nn.Module) -> _Rank1Mixin:
        """Copy ``module``'s weight into the shared weight and its bias into every member's."""
        with torch.no_grad():
            self.weight.copy_(module.weight)
            if module.bias is not None:
                self.bias.copy_(module.bias.expand_as(self.bias))
        return self


class Rank1Linear(_Rank1Mixin, nn.Module):
    """A rank-1 Bayesian ``nn.Linear`` over K ensemble members.

    Args:
        in_features: Size of each input sample, as in ``nn.Linear``.
        out_features: Size of each output sample.
        bias: Add a learnable per-member bias ``(K, out_features)``, zeros at init.
        device: Factory keyword.
        dtype: Factory keyword.
        rank1: The factor settings (K, posterior, prior, init, sampling); ``None`` means
            ``Rank1Config()``, the CIFAR recipe's defaults.
        weight_init: ``"glorot_uniform"`` (edward2 default), ``"he_normal"`` or a float
            stddev for a plain normal init (the ResNet-50 head uses 0.01).

    Shape:
        - Input: ``(K * B, *, in_features)``, member-major (rows ``[kB, (k+1)B)`` are
          member k). Samples are drawn per leading row and shared over ``*``.
        - Output: ``(K * B, *, out_features)``.

    Attributes:
        weight: Shared ``(out_features, in_features)`` weight, as in ``nn.Linear``.
        bias: ``(K, out_features)`` per-member bias, or ``None``.
        r: Input-side factor posterior, ``(K, in_features)``.
        s: Output-side factor posterior, ``(K, out_features)``.
        rank1: The :class:`Rank1Config` in force (``sampling`` follows ``set_sampling``).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        rank1: Rank1Config | None = None,
        weight_init: str | float = "glorot_uniform",
    ) -> None:
        super().__init__()
        self._set_config(rank1)
        self.in_features = in_features
        self.out_features = out_features
        self.weight_init = weight_init
        factory = {"device": device, "dtype": dtype}
        self._init_shared((out_features, in_features), in_features, out_features, bias, factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise W (as ``weight_init`` says), zero biases and the factors."""
        init_dense_weight_(self.weight, self.weight_init)
        self._reset_bias_and_factors()

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, rank1: Rank1Config | None = None) -> Rank1Linear:
        """Build a rank-1 layer whose shared weight (and every member's bias) copy ``linear``."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
            rank1=rank1,
        )
        return layer._copy_from(linear)

    def forward(self, input: Tensor) -> Tensor:
        """Apply the layer to a member-major tiled batch ``(K * B, *, in_features)``."""
        k = self.ensemble_size
        n = check_divisible(input.shape[0], k, "Rank1Linear input batch")
        x = input.reshape(k, n, -1, self.in_features)  # (K, n, M, d_in), M = middle dims
        bias = None if self.bias is None else self.bias[:, None, None, :]
        r_scale, eps_r, clip_r = self.r.reparameterization(n, self.sampling)
        s_scale, eps_s, clip_s = self.s.reparameterization(n, self.sampling)
        out = rank1_linear(
            x,
            self.weight,
            bias,
            self.r.loc,
            r_scale,
            eps_r.unsqueeze(2),
            self.s.loc,
            s_scale,
            eps_s.unsqueeze(2),
            (clip_r, clip_s),
        )
        return out.reshape(*input.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        """Summarise the configuration for ``repr``."""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, ensemble_size={self.ensemble_size}, "
            f"sampling={self.sampling}"
        )


class Rank1Conv2d(_Rank1Mixin, nn.Module):
    """A rank-1 Bayesian ``nn.Conv2d``: r scales input channels, s output channels.

    Args:
        in_channels: As in ``nn.Conv2d``.
        out_channels: As in ``nn.Conv2d``.
        kernel_size: As in ``nn.Conv2d``.
        stride: As in ``nn.Conv2d``.
        padding: As in ``nn.Conv2d`` (int, tuple, ``"same"`` or ``"valid"``).
        dilation: As in ``nn.Conv2d``.
        groups: As in ``nn.Conv2d``.
        bias: Add a per-member bias ``(K, out_channels)``. The WRN and ResNet-50 convs use
            ``bias=False``.
        padding_mode: ``"zeros"``, ``"reflect"``, ``"replicate"`` or ``"circular"``.
        device: Factory keyword.
        dtype: Factory keyword.
        rank1: The factor settings; ``None`` means ``Rank1Config()``.

    Shape:
        - Input: ``(K * B, C_in, H, W)``, member-major.
        - Output: ``(K * B, C_out, H_out, W_out)``.

    Attributes:
        weight: Shared ``(C_out, C_in / groups, kh, kw)`` kernel (Keras ``he_normal`` init).
        bias: ``(K, C_out)`` or ``None``.
        r: ``(K, C_in)`` factor posterior; s: ``(K, C_out)``.
        rank1: The :class:`Rank1Config` in force.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        rank1: Rank1Config | None = None,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError("in_channels and out_channels must be divisible by groups")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"unknown padding_mode {padding_mode!r}")
        if padding_mode != "zeros" and isinstance(padding, str):
            raise ValueError("string padding is only supported with padding_mode='zeros'")
        self._set_config(rank1)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.padding_mode = padding_mode
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        factory = {"device": device, "dtype": dtype}
        self._init_shared(shape, in_channels, out_channels, bias, factory)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise W with Keras ``he_normal``, zero biases, and the factors."""
        fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
        he_normal_(self.weight, fan_in)
        self._reset_bias_and_factors()

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, *, rank1: Rank1Config | None = None) -> Rank1Conv2d:
        """Build a rank-1 conv whose shared kernel (and every member's bias) copy ``conv``."""
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            rank1=rank1,
        )
        return layer._copy_from(conv)

    def forward(self, input: Tensor) -> Tensor:
        """Apply the layer to a member-major tiled batch ``(K * B, C_in, H, W)``."""
        k = self.ensemble_size
        n = check_divisible(input.shape[0], k, "Rank1Conv2d input batch")
        # Factor draws are tiny, (K, n, C): leave them to autograd; expand per-member draws.
        r = self.r.sample(n, self.sampling).expand(k, n, self.in_channels)
        s = self.s.sample(n, self.sampling).expand(k, n, self.out_channels)
        x = input
        padding = self.padding
        if self.padding_mode != "zeros":
            ph, pw = self.padding
            x = F.pad(x, (pw, pw, ph, ph), mode=self.padding_mode)
            padding = (0, 0)
        return rank1_conv2d(
            x,
            self.weight,
            self.bias,
            r.reshape(k * n, -1),
            s.reshape(k * n, -1),
            n,
            self.stride,
            padding,
            self.dilation,
            self.groups,
        )

    def extra_repr(self) -> str:
        """Summarise the configuration for ``repr``."""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, bias={self.bias is not None}, "
            f"ensemble_size={self.ensemble_size}, sampling={self.sampling}"
        )


class Rank1LSTM(_Rank1Mixin, nn.Module):
    """A rank-1 Bayesian LSTM over K ensemble members (edward2 ``LSTMCellRank1`` semantics).

    Factors sit on both kernels: ``r_ih`` (K, input_size) and ``s_ih`` (K, 4H) on the input
    kernel, ``r_hh`` (K, H) and ``s_hh`` (K, 4H) on the recurrent kernel. The four factor
    samples are drawn **once per sequence batch** (one draw per example) and reused at every
    time step, and they are not clipped (spec section 2). Gate order is (i, f, g, o), as in
    ``nn.LSTM`` and Keras. The bias is per member, ``(K, 4H)``, with the forget chunk at 1.

    Args:
        input_size: As in ``nn.LSTM``.
        hidden_size: As in ``nn.LSTM``.
        num_layers: Number of stacked rank-1 LSTM layers.
        bias: Use the per-member bias.
        batch_first: Input and output are ``(batch, seq, feature)`` when True.
        device: Factory keyword.
        dtype: Factory keyword.
        rank1: The factor settings (shared by all four factors of every layer); ``None``
            means ``Rank1Config()``.

    Shape:
        - input: ``(K * B, T, input_size)`` if ``batch_first`` else ``(T, K * B, input_size)``.
        - lengths (optional): ``(K * B,)`` or ``(B,)`` valid lengths; or mask: ``(K * B, T)``
          / ``(B, T)`` booleans (True = valid). Padded steps carry the state unchanged, so
          ``h_n`` is the state after each sequence's last valid step (Keras masking).
        - output: ``(K * B, T, H)`` (batch_first) or ``(T, K * B, H)``.
        - h_n, c_n: ``(num_layers, K * B, H)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        device=None,
        dtype=None,
        *,
        rank1: Rank1Config | None = None,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self._set_config(rank1)
        factory = {"device": device, "dtype": dtype}
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.batch_first = batch_first
        g = 4 * hidden_size
        for layer in range(num_layers):
            d_in = input_size if layer == 0 else hidden_size
            sfx = f"_l{layer}"
            self.register_parameter(
                "weight_ih" + sfx, nn.Parameter(torch.empty(g, d_in, **factory))
            )
            self.register_parameter(
                "weight_hh" + sfx, nn.Parameter(torch.empty(g, hidden_size, **factory))
            )
            self.register_parameter("bias" + sfx, self._member_bias(g, bias, factory))
            # r_ih/s_ih on the input kernel, r_hh/s_hh on the recurrent one.
            for kernel, kernel_in in (("_ih", d_in), ("_hh", hidden_size)):
                self._make_factors(kernel_in, g, factory, suffix=kernel + sfx)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform input kernels, orthogonal recurrent kernels, unit forget bias."""
        h = self.hidden_size
        for layer in range(self.num_layers):
            sfx = f"_l{layer}"
            glorot_uniform_(getattr(self, "weight_ih" + sfx))
            # Keras' orthogonal init of the (H, 4H) recurrent kernel, stored transposed.
            nn.init.orthogonal_(getattr(self, "weight_hh" + sfx))
            b = getattr(self, "bias" + sfx)
            if b is not None:
                with torch.no_grad():
                    b.zero_()
                    b[:, h : 2 * h] = 1.0
            for name in ("r_ih", "s_ih", "r_hh", "s_hh"):
                getattr(self, name + sfx).reset_parameters()

    def _step_mask(self, batch: int, steps: int, lengths, mask, device) -> Tensor | None:
        k = self.ensemble_size
        if lengths is not None and mask is not None:
            raise ValueError("pass either lengths or mask, not both")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=device)
            if lengths.dim() != 1 or lengths.shape[0] not in (batch, batch // k):
                raise ValueError(
                    f"lengths must have shape ({batch},) or ({batch // k},), "
                    f"got {tuple(lengths.shape)}"
                )
            if bool((lengths < 1).any()) or bool((lengths > steps).any()):
                raise ValueError(f"lengths must lie in [1, {steps}]")
            mask = torch.arange(steps, device=device)[None, :] < lengths[:, None]
        if mask is None:
            return None
        mask = torch.as_tensor(mask, device=device).bool()
        if mask.shape[1] != steps or mask.shape[0] not in (batch, batch // k):
            raise ValueError(
                f"mask must have shape ({batch}, {steps}) or ({batch // k}, {steps}), "
                f"got {tuple(mask.shape)}"
            )
        if mask.shape[0] != batch:
            mask = mask.repeat(k, 1)
        return mask

    def forward(
        self,
        input: Tensor,
        hx: tuple[Tensor, Tensor] | None = None,
        *,
        lengths: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Run the sequence batch; returns ``output, (h_n, c_n)`` like ``nn.LSTM``."""
        # Time-major internally: each step then reads one contiguous (K*B, 4H) slab.
        x = input.transpose(0, 1).contiguous() if self.batch_first else input  # (T, K*B, D)
        steps, batch = x.shape[0], x.shape[1]
        k = self.ensemble_size
        n = check_divisible(batch, k, "Rank1LSTM input batch")
        step_mask = self._step_mask(batch, steps, lengths, mask, x.device)
        if step_mask is not None:
            step_mask = step_mask.t().unsqueeze(-1)  # (T, K*B, 1)
        hs, cs = [], []
        for layer in range(self.num_layers):
            sfx = f"_l{layer}"
            h0 = c0 = None
            if hx is not None:
                h0, c0 = hx[0][layer], hx[1][layer]
            x, (h, c) = self._run_layer(x, sfx, n, h0, c0, step_mask)
            hs.append(h)
            cs.append(c)
        out = x.transpose(0, 1).contiguous() if self.batch_first else x
        return out, (torch.stack(hs, 0), torch.stack(cs, 0))

    def _run_layer(self, x, sfx, n, h, c, step_mask):
        """One layer over a time-major ``(T, K*B, D)`` sequence; returns ``(T, K*B, H)``."""
        k = self.ensemble_size
        batch = x.shape[1]

        def draw(name):  # (K*B, d): sampled once per sequence batch, no clipping
            v = getattr(self, name + sfx).sample(n, self.sampling, clip=False)
            return v.expand(k, n, v.shape[-1]).reshape(batch, v.shape[-1])

        r_ih, s_ih, r_hh, s_hh = draw("r_ih"), draw("s_ih"), draw("r_hh"), draw("s_hh")
        bias = getattr(self, "bias" + sfx)
        # The input-side term of every step in one matmul: (T, K*B, 4H).
        proj = F.linear(x * r_ih, getattr(self, "weight_ih" + sfx))
        bias = None if bias is None else bias.repeat_interleave(n, 0)  # (K*B, 4H)
        if h is None:
            h = x.new_zeros(batch, self.hidden_size)
            c = x.new_zeros(batch, self.hidden_size)
        outs, h, c = rank1_lstm_recurrence(
            proj, s_ih, bias, r_hh, s_hh, getattr(self, "weight_hh" + sfx), h, c, step_mask
        )
        return outs, (h, c)

    def extra_repr(self) -> str:
        """Summarise the configuration for ``repr``."""
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
            f"batch_first={self.batch_first}, ensemble_size={self.ensemble_size}, "
            f"sampling={self.sampling}"
        )
