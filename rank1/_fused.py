"""The scale-matmul-scale core of a rank-1 dense layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def rank1_scale_linear(
    x: Tensor, r: Tensor, s: Tensor, weight: Tensor, bias: Tensor | None
) -> Tensor:
    """Compute ``((x * r) W^T) * s + bias`` with broadcasting.

    Args:
        x: ``(K, n, M, d_in)`` inputs.
        r: ``(K, n or 1, 1, d_in)`` input-side factors.
        s: ``(K, n or 1, 1, d_out)`` output-side factors.
        weight: ``(d_out, d_in)`` shared weight.
        bias: ``(K, 1, 1, d_out)`` per-member bias or None.

    Returns:
        ``(K, n, M, d_out)``.
    """
    h = F.linear(x * r, weight)
    if bias is None:
        return h * s
    return torch.addcmul(bias, h, s)


class _Rank1LSTMRecurrence(torch.autograd.Function):
    """The time loop of a rank-1 LSTM layer with a hand-written backward pass.

    Autograd over a Python time loop records ~15 small ops per step and then makes several
    passes over ``(T, B, 4H)`` tensors. Writing back-propagation through time by hand keeps
    every per-step tensor hot in cache: the factor and bias gradients are accumulated inside
    the loop and the weight gradient is one matmul after it.
    """

    @staticmethod
    def forward(ctx, proj, s_x, bias, r, s, weight_hh, h0, c0, mask):
        # proj: (T, B, 4H) = (x * r_x) W_ih^T; s_x: (B, 4H); bias: (B, 4H) or None;
        # r: (B, H); s: (B, 4H); weight_hh: (4H, H); h0, c0: (B, H); mask: (T, B, 1) or None.
        steps, batch, g4 = proj.shape
        hid = g4 // 4
        sl_i, sl_f = slice(0, hid), slice(hid, 2 * hid)
        sl_g, sl_o = slice(2 * hid, 3 * hid), slice(3 * hid, g4)
        w_t = weight_hh.t()
        acts = torch.empty_like(proj)  # sigmoid of (i, f, 2*g, o) pre-activations
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
            z = acts[t]
            if bias is None:
                torch.mul(proj[t], s_x, out=z)
            else:
                torch.addcmul(bias, proj[t], s_x, out=z)
            z.addcmul_(u[t], s)
            # One sigmoid over all four gates: tanh(x) = 2 sigmoid(2x) - 1.
            z[:, sl_g].mul_(2.0)
            z.sigmoid_()
            torch.mul(z[:, sl_g], 2.0, out=gval[t]).sub_(1.0)
            c_new = torch.addcmul(z[:, sl_f] * cs[t], z[:, sl_i], gval[t])
            torch.tanh(c_new, out=tc[t])
            h_new = z[:, sl_o] * tc[t]
            if mask is not None:
                torch.where(mask[t], c_new, cs[t], out=cs[t + 1])
                torch.where(mask[t], h_new, hs[t], out=hs[t + 1])
            else:
                cs[t + 1] = c_new
                hs[t + 1] = h_new
        ctx.has_bias = bias is not None
        ctx.save_for_backward(proj, s_x, r, s, weight_hh, acts, u, gval, hr, hs, cs, tc, mask)
        return hs[1:], hs[steps], cs[steps]

    @staticmethod
    def backward(ctx, g_out, g_hn, g_cn):
        proj, s_x, r, s, weight_hh, acts, u, gval, hr, hs, cs, tc, mask = ctx.saved_tensors
        steps, batch, g4 = acts.shape
        hid = g4 // 4
        sl_i, sl_f = slice(0, hid), slice(hid, 2 * hid)
        sl_g, sl_o = slice(2 * hid, 3 * hid), slice(3 * hid, g4)
        d_proj = torch.empty_like(proj)
        du_all = torch.empty_like(proj)
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
            du = torch.mul(dz, s, out=du_all[t])
            torch.mul(dz, s_x, out=d_proj[t])
            g_s.addcmul_(dz, u[t])
            g_sx.addcmul_(dz, proj[t])
            g_b.add_(dz)
            dhr = du.mm(weight_hh)
            g_r.addcmul_(dhr, hs[t])
            dh = dhr * r
            if maskf is not None:
                dh = dh + dh_pass
                dc = dc + dc_pass
        g_w = du_all.reshape(-1, g4).t().mm(hr.reshape(-1, hid))
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
    return _Rank1LSTMRecurrence.apply(proj, s_x, bias, r, s, weight_hh, h0, c0, mask)
