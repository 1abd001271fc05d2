"""Hand-written forward/backward kernels of the rank-1 layers, and their plain twins.

Each core (``rank1_linear``, ``rank1_conv2d``, ``rank1_lstm_recurrence``) has two
implementations of the same maths: a fused ``torch.autograd.Function`` with a hand-written
backward, and plain autograd ops. :func:`use_fused` alone picks one; :func:`plain_kernels`
forces the plain ones, so both run (and are compared) on a CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from rank1.factors import CLIP

Kernel = Literal["linear", "conv2d", "lstm"]
#: Depth of nested :func:`plain_kernels` blocks; > 0 forces the plain implementations.
_plain_depth = 0


@contextlib.contextmanager
def plain_kernels() -> Iterator[None]:
    """Run every rank-1 layer core with plain autograd ops inside this block.

    The fused kernels compute the same values and gradients (to float rounding); the plain
    path is the readable reference, and tests compare the two on a CPU. Nesting is allowed;
    the switch is process-wide (not per thread), as the layers read it at each forward.

    Example:
        >>> with rank1.plain_kernels():
        ...     loss = model(x).sum()
        ...     loss.backward()
    """
    global _plain_depth
    _plain_depth += 1
    try:
        yield
    finally:
        _plain_depth -= 1


def use_fused(x: Tensor, kernel: Kernel) -> bool:
    """Whether the ``kernel`` core runs its fused implementation for input ``x``.

    The one place that chooses (measurements in BENCHMARKS.md):

    - Linear and Conv2d are fused on the CPU only: there the hand-written backward saves
      activation-sized passes; on a GPU those passes are cheap next to kernel launches, and
      the plain ops (which autocast also handles) measured faster.
    - The LSTM recurrence is fused on every device: autograd over its Python time loop
      records ~15 small ops per step and cost 2.8x the plain ``nn.LSTM`` on the CPU; the
      fused loop also issues fewer ops per step, which is what a launch-bound GPU counts
      (the plain loop was not measured on a GPU).

    Inside :func:`plain_kernels` the answer is always False.

    Args:
        x: The core's input (its device decides).
        kernel: ``"linear"``, ``"conv2d"`` or ``"lstm"``.

    Returns:
        True for the fused ``autograd.Function``, False for plain autograd ops.
    """
    if _plain_depth:
        return False
    if kernel == "lstm":
        return True
    if kernel in ("linear", "conv2d"):
        return x.device.type == "cpu"
    raise ValueError(f"unknown kernel {kernel!r}; expected 'linear', 'conv2d' or 'lstm'")


def _reduce_to(t: Tensor, shape: torch.Size) -> Tensor:
    return t if t.shape == shape else t.sum_to_size(shape)


class _Rank1Linear(torch.autograd.Function):
    """Sample the factors and apply ``((x * r) W^T) * s + bias`` with a hand-written backward.

    Autograd's ``addcmul`` backward multiplies by its scalar ``value`` in a separate pass
    over the activations, twice per factor; here each activation-sized pass is made once.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, r_loc, r_scale, eps_r, s_loc, s_scale, eps_s, clip):
        # x: (K, n, M, d_in); eps_r: (K, n or 1, 1, d_in); eps_s: (K, n or 1, 1, d_out);
        # *_loc, *_scale: (K, d); bias: (K, 1, 1, d_out) or None; clip: (bool, bool).
        r = torch.addcmul(r_loc[:, None, None], r_scale[:, None, None], eps_r)
        s = torch.addcmul(s_loc[:, None, None], s_scale[:, None, None], eps_s)
        masks = []
        for v, do_clip in ((r, clip[0]), (s, clip[1])):
            # Clipped entries get no gradient, as under torch.clamp.
            masks.append(v.abs() < CLIP if do_clip else None)
            if do_clip:
                v.clamp_(-CLIP, CLIP)
        xr = x * r
        h = F.linear(xr, weight)
        out = h * s if bias is None else torch.addcmul(bias, h, s)
        ctx.save_for_backward(x, weight, xr, h, r, s, eps_r, eps_s, *masks)
        ctx.has_bias = bias is not None
        ctx.clip = clip
        return out

    @staticmethod
    def backward(ctx, g):
        x, weight, xr, h, r, s, eps_r, eps_s, mask_r, mask_s = ctx.saved_tensors
        need = ctx.needs_input_grad
        g_bias = _reduce_to(g, (g.shape[0], 1, 1, g.shape[-1])) if ctx.has_bias else None

        def factor_grads(gv, eps, mask):
            gv = _reduce_to(gv, eps.shape)
            if mask is not None:
                gv = gv * mask
            loc = gv.sum((1, 2))
            # gv is a fresh tensor owned here, so the product may overwrite it.
            scale = torch.mul(gv, eps, out=gv).sum((1, 2))
            return loc, scale

        g_sloc, g_sscale = factor_grads(g * h, eps_s, mask_s)
        # Matmuls run in the forward's compute dtype (bf16 under autocast, as autograd
        # would); gradients go back in each input's own dtype.
        cdt = h.dtype
        gh = (g * s).to(cdt)
        gxr = gh.matmul(weight.to(cdt)).to(r.dtype)
        g_w = None
        if need[1]:
            g_w = gh.reshape(-1, gh.shape[-1]).t().mm(xr.reshape(-1, xr.shape[-1]).to(cdt))
            g_w = g_w.to(weight.dtype)
        g_x = (gxr * r).to(x.dtype) if need[0] else None
        g_rloc, g_rscale = factor_grads(gxr.mul_(x), eps_r, mask_r)
        return g_x, g_w, g_bias, g_rloc, g_rscale, None, g_sloc, g_sscale, None, None


def rank1_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    r_loc: Tensor,
    r_scale: Tensor,
    eps_r: Tensor,
    s_loc: Tensor,
    s_scale: Tensor,
    eps_s: Tensor,
    clip: tuple[bool, bool],
) -> Tensor:
    """Rank-1 dense layer core: ``((x * r) W^T) * s + bias`` with ``r = loc + scale * eps``.

    Fused kernel or plain autograd ops, as :func:`use_fused` says; both give the same values
    and gradients.

    Args:
        x: ``(K, n, M, d_in)`` member-major inputs (M: flattened middle dimensions).
        weight: ``(d_out, d_in)`` shared weight.
        bias: ``(K, 1, 1, d_out)`` per-member bias, or None.
        r_loc: ``(K, d_in)`` posterior locations of r.
        r_scale: ``(K, d_in)`` posterior scales of r.
        eps_r: ``(K, n or 1, 1, d_in)`` standard noise (zeros for posterior means).
        s_loc: ``(K, d_out)`` posterior locations of s.
        s_scale: ``(K, d_out)`` posterior scales of s.
        eps_s: ``(K, n or 1, 1, d_out)`` standard noise.
        clip: Whether r / s samples may reach the ``[-10, 10]`` clip and must be clipped.

    Returns:
        ``(K, n, M, d_out)``.
    """
    if use_fused(x, "linear"):
        return _Rank1Linear.apply(
            x, weight, bias, r_loc, r_scale, eps_r, s_loc, s_scale, eps_s, clip
        )
    r = torch.addcmul(r_loc[:, None, None], r_scale[:, None, None], eps_r)
    s = torch.addcmul(s_loc[:, None, None], s_scale[:, None, None], eps_s)
    r = r.clamp(-CLIP, CLIP) if clip[0] else r
    s = s.clamp(-CLIP, CLIP) if clip[1] else s
    h = F.linear(x * r, weight)
    return h * s if bias is None else torch.addcmul(bias, h, s)


def _channel_dot(a: Tensor, b: Tensor) -> Tensor:
    """``(a * b).sum((2, 3))`` for ``(N, C, H, W)`` tensors without writing the product."""
    n, c = a.shape[:2]
    return torch.bmm(a.reshape(n * c, 1, -1), b.reshape(n * c, -1, 1)).view(n, c)


class _Rank1Conv2d(torch.autograd.Function):
    """``conv(x * r) * s + bias`` with per-example channel factors and a fused backward.

    The factor gradients are per-channel dot products over the spatial positions, computed
    without materialising activation-sized products, and autograd's extra passes of
    ``addcmul`` (its scalar ``value``) are avoided.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, r, s, n_per_member, stride, padding, dilation, groups):
        # x: (K*n, C_in, H, W); r: (K*n, C_in); s: (K*n, C_out); bias: (K, C_out) or None.
        xr = x * r[:, :, None, None]
        h = F.conv2d(xr, weight, None, stride, padding, dilation, groups)
        if bias is None:
            out = h * s[:, :, None, None]
        else:
            rows = bias.repeat_interleave(n_per_member, 0)  # member-major, (K*n, C_out)
            out = torch.addcmul(rows[:, :, None, None], h, s[:, :, None, None])
        ctx.save_for_backward(x, weight, xr, h, r, s)
        ctx.conf = (n_per_member, stride, padding, dilation, groups, bias is not None)
        return out

    @staticmethod
    def backward(ctx, g):
        x, weight, xr, h, r, s = ctx.saved_tensors
        n_per_member, stride, padding, dilation, groups, has_bias = ctx.conf
        need = ctx.needs_input_grad
        g = g.contiguous()
        g_bias = None
        if has_bias:
            g_bias = g.sum((2, 3)).view(-1, n_per_member, g.shape[1]).sum(1)
        # Work in the forward conv's compute dtype (bf16 under autocast, as autograd would);
        # gradients go back in each input's own dtype.
        cdt = h.dtype
        g_s = _channel_dot(g.to(cdt), h).to(s.dtype)
        gh = (g * s[:, :, None, None]).to(cdt)
        if isinstance(padding, str):
            # convolution_backward wants explicit padding; "same"/"valid" as numbers.
            padding = tuple(
                0 if padding == "valid" else d * (k - 1) // 2
                for k, d in zip(weight.shape[2:], dilation, strict=True)
            )
        g_xr, g_w, _ = torch.ops.aten.convolution_backward(
            gh,
            xr.to(cdt),
            weight.to(cdt),
            None,
            stride,
            padding,
            dilation,
            False,
            (0, 0),
            groups,
            (need[0] or need[3], need[1], False),
        )
        g_r = _channel_dot(g_xr, x.to(cdt)).to(r.dtype) if need[3] else None
        g_x = g_xr.mul_(r[:, :, None, None].to(cdt)).to(x.dtype) if need[0] else None
        g_w = None if g_w is None else g_w.to(weight.dtype)
        return g_x, g_w, g_bias, g_r, g_s, None, None, None, None, None


def rank1_conv2d(x, weight, bias, r, s, n_per_member, stride, padding, dilation, groups) -> Tensor:
    """Rank-1 conv core ``conv(x * r) * s + bias``.

    Fused kernel or plain autograd ops, as :func:`use_fused` says; both give the same values
    and gradients.

    Args:
        x: ``(K*n, C_in, H, W)`` member-major inputs.
        weight: ``(C_out, C_in / groups, kh, kw)`` shared kernel.
        bias: ``(K, C_out)`` per-member bias or None.
        r: ``(K*n, C_in)`` input-channel factors (one row per example).
        s: ``(K*n, C_out)`` output-channel factors.
        n_per_member: n, examples per member.
        stride: As in ``F.conv2d``.
        padding: As in ``F.conv2d`` (zeros padding).
        dilation: As in ``F.conv2d``.
        groups: As in ``F.conv2d``.

    Returns:
        ``(K*n, C_out, H_out, W_out)``.
    """
    if not use_fused(x, "conv2d"):
        h = F.conv2d(x * r[:, :, None, None], weight, None, stride, padding, dilation, groups)
        if bias is None:
            return h * s[:, :, None, None]
        rows = bias.repeat_interleave(n_per_member, 0)
        return torch.addcmul(rows[:, :, None, None], h, s[:, :, None, None])
    return _Rank1Conv2d.apply(
        x, weight, bias, r, s, n_per_member, stride, padding, dilation, groups
    )


class _Rank1LSTMRecurrence(torch.autograd.Function):
    """The time loop of a rank-1 LSTM layer with a hand-written backward pass.

    Autograd over a Python time loop records ~15 small ops per step and then makes several
    passes over ``(T, B, 4H)`` tensors. Writing back-propagation through time by hand keeps
    every per-step tensor hot in cache: the weight, factor and bias gradients are
    accumulated inside the loop from reused ``(B, 4H)`` buffers.

    Forward and backward run in float32 under CUDA autocast (``custom_fwd``): the recurrence
    is a chain of small matmuls where bf16 saves little and loses precision over 48 steps.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)  # bf16 autocast
    def forward(ctx, proj, s_x, bias, r, s, weight_hh, h0, c0, mask):
        # proj: (T, B, 4H) = (x * r_x) W_ih^T; s_x: (B, 4H); bias: (B, 4H) or None;
        # r: (B, H); s: (B, 4H); weight_hh: (4H, H); h0, c0: (B, H); mask: (T, B, 1) or None.
        steps, batch, g4 = proj.shape
        hid = g4 // 4
        sl_i, sl_f = slice(0, hid), slice(hid, 2 * hid)
        sl_g, sl_o = slice(2 * hid, 3 * hid), slice(3 * hid, g4)
        w_t = weight_hh.t()
        # acts starts as the input-side pre-activations of every step, computed in one pass;
        # the g chunk is doubled up front (in it and in s) so that one sigmoid per step gives
        # all four gates: tanh(x) = 2 sigmoid(2x) - 1. Fewer, larger ops: the loop is bound
        # by per-op overhead at clinical sizes.
        acts = proj * s_x if bias is None else torch.addcmul(bias, proj, s_x)
        acts[:, :, sl_g] *= 2.0
        s2 = s.clone()
        s2[:, sl_g] *= 2.0
        minus_one = proj.new_full((batch, hid), -1.0)
        u = torch.empty_like(proj)  # (h_{t-1} * r) W_hh^T
        gval = proj.new_empty(steps, batch, hid)  # tanh(g) = 2 sigmoid(2 g) - 1
        hr = proj.new_empty(steps, batch, hid)  # h_{t-1} * r
        hs = proj.new_empty(steps + 1, batch, hid)
        cs = proj.new_empty(steps + 1, batch, hid)
        tc = proj.new_empty(steps, batch, hid)  # tanh(c_t) before masking
        hs[0], cs[0] = h0, c0
        for t in range(steps):
            torch.mul(hs[t], r, out=hr[t])
            torch.mm(hr[t], w_t, out=u[t])
            z = acts[t].addcmul_(u[t], s2).sigmoid_()
            torch.add(minus_one, z[:, sl_g], alpha=2.0, out=gval[t])
            fc = z[:, sl_f] * cs[t]
            if mask is None:
                c_new = torch.addcmul(fc, z[:, sl_i], gval[t], out=cs[t + 1])
                torch.mul(z[:, sl_o], torch.tanh(c_new, out=tc[t]), out=hs[t + 1])
            else:
                c_new = torch.addcmul(fc, z[:, sl_i], gval[t])
                h_new = z[:, sl_o] * torch.tanh(c_new, out=tc[t])
                torch.where(mask[t], c_new, cs[t], out=cs[t + 1])
                torch.where(mask[t], h_new, hs[t], out=hs[t + 1])
        ctx.has_bias = bias is not None
        ctx.save_for_backward(proj, s_x, r, s, weight_hh, acts, u, gval, hr, hs, cs, tc, mask)
        return hs[1:], hs[steps], cs[steps]

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g_out, g_hn, g_cn):
        proj, s_x, r, s, weight_hh, acts, u, gval, hr, hs, cs, tc, mask = ctx.saved_tensors
        steps, batch, g4 = acts.shape
        hid = g4 // 4
        sl_i, sl_f = slice(0, hid), slice(hid, 2 * hid)
        sl_g, sl_o = slice(2 * hid, 3 * hid), slice(3 * hid, g4)
        d_proj = torch.empty_like(proj)
        # The recurrent weight's gradient is accumulated step by step from one reused (B, 4H)
        # buffer: a (T, B, 4H) buffer for one big matmul page-faults on every first write,
        # which cost more than the arithmetic at clinical sizes.
        g_w = torch.zeros_like(weight_hh)
        du = torch.empty_like(s)
        g_sx = torch.zeros_like(s_x)
        g_b = torch.zeros_like(s_x)
        g_s = torch.zeros_like(s)
        g_r = torch.zeros_like(r)
        dz = torch.empty_like(s_x)
        tmp = torch.empty_like(s_x)  # scratch, reused every step to avoid allocations
        maskf = None if mask is None else mask.to(proj.dtype)
        dh = g_hn.clone() if g_hn is not None else hs.new_zeros(batch, hid)
        dc = g_cn.clone() if g_cn is not None else hs.new_zeros(batch, hid)
        for t in range(steps - 1, -1, -1):
            if g_out is not None:
                dh = dh + g_out[t]
            if maskf is not None:
                # A padded step passes the state through unchanged.
                m = maskf[t]
                dh_pass, dc_pass = dh - dh * m, dc - dc * m
                dh, dc = dh * m, dc * m
            a = acts[t]
            dc = dc.addcmul(dh * a[:, sl_o], 1.0 - tc[t] * tc[t])
            # Gradients w.r.t. the gate activations (the g chunk w.r.t. sigmoid(2 z_g),
            # hence the factor 2 from tanh(x) = 2 sigmoid(2x) - 1 and 2 more from the chain).
            torch.mul(dc, gval[t], out=dz[:, sl_i])
            torch.mul(dc, cs[t], out=dz[:, sl_f])
            torch.mul(dc, a[:, sl_i], out=dz[:, sl_g]).mul_(4.0)
            torch.mul(dh, tc[t], out=dz[:, sl_o])
            torch.mul(a, a, out=tmp)
            dz.mul_(torch.sub(a, tmp, out=tmp))
            dc = dc * a[:, sl_f]
            torch.mul(dz, s_x, out=d_proj[t])
            g_s.addcmul_(dz, u[t])
            torch.mul(dz, s, out=du)
            g_w.addmm_(du.t(), hr[t])
            g_sx.addcmul_(dz, proj[t])
            g_b.add_(dz)
            dhr = du.mm(weight_hh)
            g_r.addcmul_(dhr, hs[t])
            dh = dhr * r
            if maskf is not None:
                dh = dh + dh_pass
                dc = dc + dc_pass
        return d_proj, g_sx, g_b if ctx.has_bias else None, g_r, g_s, g_w, dh, dc, None


def rank1_lstm_recurrence(
    proj: Tensor,
    s_x: Tensor,
    bias: Tensor | None,
    r: Tensor,
    s: Tensor,
    weight_hh: Tensor,
    h0: Tensor,
    c0: Tensor,
    mask: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``z_t = proj_t * s_x + bias + ((h_{t-1} * r) W_hh^T) * s`` through LSTM gates.

    Fused kernel or plain autograd ops, as :func:`use_fused` says; both give the same values
    and gradients.

    Args:
        proj: ``(T, B, 4H)`` input projections ``(x_t * r_x) W_ih^T``.
        s_x: ``(B, 4H)`` input-kernel output-side factors (one draw per example).
        bias: ``(B, 4H)`` per-example (member-repeated) bias, or None.
        r: ``(B, H)`` recurrent-kernel input-side factors.
        s: ``(B, 4H)`` recurrent-kernel output-side factors.
        weight_hh: ``(4H, H)`` shared recurrent weight.
        h0: ``(B, H)`` initial hidden state.
        c0: ``(B, H)`` initial cell state.
        mask: ``(T, B, 1)`` bool, True where the step is valid; None if all are.

    Returns:
        ``(outputs (T, B, H), h_n (B, H), c_n (B, H))``.
    """
    if use_fused(proj, "lstm"):
        return _Rank1LSTMRecurrence.apply(proj, s_x, bias, r, s, weight_hh, h0, c0, mask)
    # Plain autograd over the time loop. Unlike the fused kernel it does not force float32
    # under CUDA autocast: its matmuls run in the autocast dtype.
    acts = proj * s_x if bias is None else torch.addcmul(bias, proj, s_x)
    h, c = h0, c0
    outs = []
    for t in range(proj.shape[0]):
        z = acts[t] + F.linear(h * r, weight_hh) * s
        z_i, z_f, z_g, z_o = z.chunk(4, dim=-1)
        c_new = torch.sigmoid(z_f) * c + torch.sigmoid(z_i) * torch.tanh(z_g)
        h_new = torch.sigmoid(z_o) * torch.tanh(c_new)
        if mask is not None:
            # A padded step carries the state unchanged (Keras masking).
            c_new = torch.where(mask[t], c_new, c)
            h_new = torch.where(mask[t], h_new, h)
        h, c = h_new, c_new
        outs.append(h)
    return torch.stack(outs), h, c
