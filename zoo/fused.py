"""The LSTM and layer-norm LSTM time loops as one autograd function with a hand-written backward.

Autograd over the step-by-step loop (zoo.sequence.loop) records a dozen small ops per step and, in
backward, one weight-gradient matmul and accumulation per step. This function does what a fused
RNN kernel does instead:
  forward, per step:  a_t = xw_t + h_{t-1} W_hh^T (one addmm), then the cell's pointwise math;
  backward, per step: dh = dH_t + da_{t+1} W_hh (one addmm), then the pointwise backward;
  after the loop:     dW_hh = sum_t da_t^T h_{t-1} as ONE matmul over all T, and the layer-norm
                      gains and biases as one reduction each.
Only a_t (gate pre-activations) and c_t are kept; the backward recomputes the rest from them.
The pointwise forward and backward are plain functions of whole tensors, so `torch.compile` fuses
each into a few kernels (CUDA); zoo.sequence then captures the whole loop as CUDA graphs. The math
is exactly `lstm_step` / `layer_norm_lstm_step` of zoo.model (tests/test_sequence.py checks forward
and gradients against autograd over that loop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

LN_EPS = 1e-3  # zoo.model.LN_EPS (magenta's); repeated here so this module imports no model code

Pointwise = Callable[..., tuple[torch.Tensor, ...]]


def _norm(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x - mean) / sqrt(var + eps) over the last axis, and 1 / sqrt(var + eps) (keepdim)."""
    xc = x - x.mean(-1, keepdim=True)
    rstd = torch.rsqrt((xc * xc).mean(-1, keepdim=True) + LN_EPS)
    return xc * rstd, rstd


def _norm_backward(dy: torch.Tensor, xhat: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """d/dx of _norm's xhat, given dL/dxhat."""
    return rstd * (dy - dy.mean(-1, keepdim=True) - xhat * (dy * xhat).mean(-1, keepdim=True))


def _gates(
    a: torch.Tensor, ln: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Pre-activations a (B, 4H) -> gates (B, 4, H), and for layer norm n (B, 4, H), rstd (B, 4, 1)."""
    B = a.shape[0]
    a4 = a.view(B, 4, -1)
    if not ln:
        return a4, None, None
    n, rstd = _norm(a4)
    return n * ln[0].view(4, -1) + ln[1].view(4, -1), n, rstd


def pointwise_forward(
    a: torch.Tensor, c_prev: torch.Tensor, mask: torch.Tensor | None, *ln: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step after the matmul: a (B, 4H), c_prev (B, H), mask (B, H) or None, ln = () or
    (gates weight, gates bias, c weight, c bias) -> h, c."""
    g4, _, _ = _gates(a, ln)
    i, f, g, o = g4.unbind(1)
    tg = torch.tanh(g)
    c = torch.sigmoid(f + 1.0 if ln else f) * c_prev + torch.sigmoid(i) * (tg if mask is None else tg * mask)
    cn = _norm(c)[0] * ln[2] + ln[3] if ln else c
    return torch.sigmoid(o) * torch.tanh(cn), c


def pointwise_backward(
    a: torch.Tensor,
    c_prev: torch.Tensor,
    c: torch.Tensor,
    mask: torch.Tensor | None,
    dh: torch.Tensor,
    dc: torch.Tensor,
    *ln: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """The step's backward from its saved a, c_prev, c -> da (B, 4H), dc_prev (B, H), and for
    layer norm the gates' output grads (B, 4H) and c-norm's output grads (B, H) (their weight grads
    are reduced over all steps at once)."""
    B = a.shape[0]
    g4, n, rstd = _gates(a, ln)
    i, f, g, o = g4.unbind(1)
    si, sf, so, tg = torch.sigmoid(i), torch.sigmoid(f + 1.0 if ln else f), torch.sigmoid(o), torch.tanh(g)
    gd = tg if mask is None else tg * mask
    if ln:
        chat, rstd_c = _norm(c)
        tc = torch.tanh(chat * ln[2] + ln[3])
    else:
        tc = torch.tanh(c)
    dcn = dh * so * (1 - tc * tc)
    dc = dc + (_norm_backward(dcn * ln[2], chat, rstd_c) if ln else dcn)
    dtg = dc * si if mask is None else dc * si * mask
    dgates = torch.stack(
        [dc * gd * si * (1 - si), dc * c_prev * sf * (1 - sf), dtg * (1 - tg * tg), dh * tc * so * (1 - so)],
        1,
    )  # (B, 4, H)
    dc_prev = dc * sf
    if not ln:
        return dgates.view(B, -1), dc_prev
    assert n is not None and rstd is not None
    da = _norm_backward(dgates * ln[0].view(4, -1), n, rstd)
    return da.view(B, -1), dc_prev, dgates.view(B, -1), dcn


class LSTMSequence(torch.autograd.Function):
    """xw (B, T, 4H), h0, c0 (B, H), masks (T, B, H) or None, w_hh (4H, H), ln weights or ()
    -> h for every step (B, T, H), h_T, c_T."""

    @staticmethod
    def forward(ctx, xw, h0, c0, masks, w_hh, fwd, bwd, *ln):  # type: ignore[override]
        T = xw.shape[1]
        h, c = h0, c0
        hs, cs, as_ = [], [c0], []
        w_t = w_hh.t()
        for t in range(T):
            a = torch.addmm(xw[:, t], h, w_t)
            h, c = fwd(a, c, None if masks is None else masks[t], *ln)
            hs.append(h)
            cs.append(c)
            as_.append(a)
        H = torch.stack(hs, 1)
        ctx.bwd = bwd
        ctx.has_masks = masks is not None
        ctx.save_for_backward(
            h0, H, torch.stack(as_), torch.stack(cs), w_hh, *(() if masks is None else (masks,)), *ln
        )
        return H, h, c

    @staticmethod
    def backward(ctx, dH, dhT, dcT):  # type: ignore[override]
        bwd = ctx.bwd
        h0, H, A, C, w_hh, *rest = ctx.saved_tensors
        masks = rest.pop(0) if ctx.has_masks else None
        ln = tuple(rest)
        T = A.shape[0]
        dc = dcT
        da = None
        das, dgs, dcns = [], [], []
        for t in reversed(range(T)):
            dh = dH[:, t] + dhT if da is None else torch.addmm(dH[:, t], da, w_hh)
            da, dc, *lnd = bwd(A[t], C[t], C[t + 1], None if masks is None else masks[t], dh, dc, *ln)
            das.append(da)
            if ln:
                dgs.append(lnd[0])
                dcns.append(lnd[1])
        DA = torch.stack(das[::-1])  # (T, B, 4H)
        Hprev = torch.cat([h0.unsqueeze(0), H.transpose(0, 1)[:-1]])  # (T, B, H)
        dW = DA.flatten(0, 1).t() @ Hprev.flatten(0, 1)
        dh0 = da @ w_hh
        dln: tuple[torch.Tensor | None, ...] = ()
        if ln:
            DG, DCN = torch.stack(dgs[::-1]), torch.stack(dcns[::-1])  # (T, B, 4H), (T, B, H)
            n = _norm(A.view(T, A.shape[1], 4, -1))[0].view(A.shape)
            chat = _norm(C[1:])[0]
            dln = ((DG * n).sum((0, 1)), DG.sum((0, 1)), (DCN * chat).sum((0, 1)), DCN.sum((0, 1)))
        return (DA.transpose(0, 1), dh0, dc, None, dW, None, None, *dln)


def lstm_sequence(
    xw: torch.Tensor,
    carry: tuple[torch.Tensor, ...],
    masks: torch.Tensor | None,
    w_hh: torch.Tensor,
    *ln: torch.Tensor,
    compile: Callable[[Pointwise], Pointwise] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """zoo.sequence.loop over lstm_step (ln = ()) or layer_norm_lstm_step (ln = its four layer-norm
    weights), with the fused backward: -> h (B, T, H), (h_T, c_T). `compile` (zoo.sequence.compiled
    on CUDA) wraps the two pointwise functions."""
    fwd, bwd = (pointwise_forward, pointwise_backward) if compile is None else (
        compile(pointwise_forward), compile(pointwise_backward))  # fmt: skip
    H, hT, cT = LSTMSequence.apply(xw, carry[0], carry[1], masks, w_hh, fwd, bwd, *ln)
    return H, (hT, cT)
