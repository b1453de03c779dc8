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


# ---------------------------------------------------------------------------------------------
# the HyperLSTM (zoo.model.hyper_lstm_step): the same treatment. Per step forward: one matmul of h
# against [W_hh; the hyper LSTM's h-columns] (both recurrent products at once), one addmm for the
# hyper LSTM's own recurrence, one for the hyper output z = [z_x | z_h | z_b], one bmm for the twelve
# (B, H) scale and shift blocks, and the pointwise parts; backward mirrors it, and every weight
# gradient (the 64 MiB W_hh's included) is summed once after the loop.


def hyper_main_forward(
    xm: torch.Tensor,
    rec: torch.Tensor,
    S: torch.Tensor,
    bias: torch.Tensor,
    c_prev: torch.Tensor,
    mask: torch.Tensor | None,
    *ln: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The main cell after its matmuls: xm (B, 4H) = W_ih x, rec (B, 4H) = W_hh h, S (12, B, H) =
    [scale_x | scale_h | shift_h] per gate block -> h, c, and a (B, 4H), the gates before layer norm."""
    B = xm.shape[0]
    S4 = S.view(3, 4, B, -1).transpose(1, 2)  # (3, B, 4, H)
    a = xm.view(B, 4, -1) * S4[0] + rec.view(B, 4, -1) * S4[1] + S4[2] + bias.view(4, -1)
    a = a.reshape(B, -1)
    h, c = pointwise_forward(a, c_prev, mask, *ln)
    return h, c, a


def hyper_main_backward(
    xm: torch.Tensor,
    rec: torch.Tensor,
    S: torch.Tensor,
    a: torch.Tensor,
    c_prev: torch.Tensor,
    c: torch.Tensor,
    mask: torch.Tensor | None,
    dh: torch.Tensor,
    dc: torch.Tensor,
    *ln: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """-> d xm (B, 4H), d rec (B, 4H), dS (12, B, H), dc_prev, and the layer norms' output grads."""
    B = xm.shape[0]
    da, dc_prev, dgates, dcn = pointwise_backward(a, c_prev, c, mask, dh, dc, *ln)
    S4 = S.view(3, 4, B, -1).transpose(1, 2)  # (3, B, 4, H)
    da4 = da.view(B, 4, -1)
    dS = torch.stack([da4 * xm.view(B, 4, -1), da4 * rec.view(B, 4, -1), da4]).transpose(1, 2)  # (3, 4, B, H)
    return (
        (da4 * S4[0]).reshape(B, -1),
        (da4 * S4[1]).reshape(B, -1),
        dS.reshape(12, B, -1),
        dc_prev,
        dgates,
        dcn,
    )


class HyperLSTMSequence(torch.autograd.Function):
    """xw (B, T, 4H + 4Hh), the carry (h, c, h_hyper, c_hyper), masks (T, B, H) or None, the
    pointwise functions, then hyper_lstm_step's 17 weights -> h for every step (B, T, H) and the
    last carry."""

    @staticmethod
    def forward(ctx, xw, h0, c0, hh0, ch0, masks, fns, *w):  # type: ignore[override]
        main_fwd, _, hyper_fwd, _ = fns
        w_hh, bias, hyper_ih, hyper_hh, hyper_bias = w[:5]
        ln = w[13:]
        H, Hh = w_hh.shape[1], hyper_hh.shape[1]
        w_cat = torch.cat([w_hh, hyper_ih[:, hyper_ih.shape[1] - H :]])  # (4H + 4Hh, H): h's two products
        w_z = torch.cat([w[5], w[7], w[9]])  # (12E, Hh)
        b_z = torch.cat([w[6], w[8], torch.zeros_like(w[6])])
        A3 = torch.stack([w[10], w[11], w[12]]).flatten(0, 1)  # (12, E, H)
        xm_all, xh_all = xw.split([4 * H, 4 * Hh], 2)
        h, c, hh, ch = h0, c0, hh0, ch0
        hs, cs, hhs, chs, rs, ahs, zs, As_ = [h0], [c0], [hh0], [ch0], [], [], [], []
        for t in range(xw.shape[1]):
            r = h @ w_cat.t()  # (B, 4H + 4Hh)
            rec, rh = r.split([4 * H, 4 * Hh], 1)
            ah = torch.addmm(xh_all[:, t] + rh + hyper_bias, hh, hyper_hh.t())
            hh, ch = hyper_fwd(ah, ch, None)
            z = torch.addmm(b_z, hh, w_z.t())  # (B, 12E)
            S = torch.bmm(z.view(z.shape[0], 12, -1).transpose(0, 1), A3)  # (12, B, H)
            h, c, a = main_fwd(xm_all[:, t], rec, S, bias, c, None if masks is None else masks[t], *ln)
            hs.append(h), cs.append(c), hhs.append(hh), chs.append(ch)
            rs.append(rec), ahs.append(ah), zs.append(z), As_.append(a)
        Hs = torch.stack(hs[1:], 1)
        ctx.fns, ctx.has_masks, ctx.sizes = fns, masks is not None, (H, Hh)
        saved = [xw, torch.stack(hs), torch.stack(cs), torch.stack(hhs), torch.stack(chs)]
        saved += [torch.stack(rs), torch.stack(ahs), torch.stack(zs), torch.stack(As_), w_cat, w_z, A3]
        ctx.save_for_backward(*saved, *(() if masks is None else (masks,)), *w)
        return Hs, h, c, hh, ch

    @staticmethod
    def backward(ctx, dHs, dhT, dcT, dhhT, dchT):  # type: ignore[override]
        _, main_bwd, _, hyper_bwd = ctx.fns
        xw, Hh_all, C, HH, CH, R, AH, Z, A, w_cat, w_z, A3, *rest = ctx.saved_tensors
        masks = rest.pop(0) if ctx.has_masks else None
        w = rest
        w_hh, bias, hyper_ih, hyper_hh = w[:4]
        ln = tuple(w[13:])
        H, Hh = ctx.sizes
        B, T = xw.shape[:2]
        xm_all = xw[..., : 4 * H]
        dc, dhh, dch = dcT, dhhT, dchT
        dr = None
        dxms, drs, dSs, dzs, dgs, dcns = [], [], [], [], [], []
        for t in reversed(range(T)):
            dh = dHs[:, t] + dhT if dr is None else torch.addmm(dHs[:, t], dr, w_cat)
            S = torch.bmm(Z[t].view(B, 12, -1).transpose(0, 1), A3)
            dxm, drec, dS, dc, dg, dcn = main_bwd(
                xm_all[:, t], R[t], S, A[t], C[t], C[t + 1], None if masks is None else masks[t], dh, dc, *ln
            )
            dz = torch.bmm(dS, A3.transpose(1, 2)).transpose(0, 1).reshape(B, -1)  # (B, 12E)
            dhh = torch.addmm(dhh, dz, w_z)
            dah, dch = hyper_bwd(AH[t], CH[t], CH[t + 1], None, dhh, dch)
            dr = torch.cat([drec, dah], 1)
            dhh = dah @ hyper_hh
            dxms.append(dxm), drs.append(dr), dSs.append(dS), dzs.append(dz), dgs.append(dg), dcns.append(dcn)
        DR, DS, DZ = torch.stack(drs[::-1]), torch.stack(dSs[::-1]), torch.stack(dzs[::-1])
        DAH = DR[..., 4 * H :]
        dw_cat = DR.flatten(0, 1).t() @ Hh_all[:-1].flatten(0, 1)  # (4H + 4Hh, H)
        d_hyper_ih = torch.cat([torch.zeros_like(hyper_ih[:, : hyper_ih.shape[1] - H]), dw_cat[4 * H :]], 1)
        d_hyper_hh = DAH.flatten(0, 1).t() @ HH[:-1].flatten(0, 1)
        dw_z = DZ.flatten(0, 1).t() @ HH[1:].flatten(0, 1)  # (12E, Hh)
        db_z = DZ.sum((0, 1))
        E4 = dw_z.shape[0] // 3
        dA3 = torch.bmm(  # (12, E, H): sum over T and B of z^T dS
            Z.view(T, B, 12, -1).permute(2, 3, 0, 1).flatten(2), DS.permute(1, 0, 2, 3).flatten(1, 2)
        ).view(3, 4, -1, H)
        DG, DCN = torch.stack(dgs[::-1]), torch.stack(dcns[::-1])
        n = _norm(A.view(T, B, 4, -1))[0].view(A.shape)
        chat = _norm(C[1:])[0]
        dln = ((DG * n).sum((0, 1)), DG.sum((0, 1)), (DCN * chat).sum((0, 1)), DCN.sum((0, 1)))
        dxw = torch.cat([torch.stack(dxms[::-1]), DAH], 2).transpose(0, 1)
        dweights = (
            dw_cat[: 4 * H], DS[:, 8:].sum((0, 2)).reshape(-1), d_hyper_ih, d_hyper_hh, DAH.sum((0, 1)),
            dw_z[:E4], db_z[:E4], dw_z[E4 : 2 * E4], db_z[E4 : 2 * E4], dw_z[2 * E4 :],
            dA3[0], dA3[1], dA3[2], *dln,
        )  # fmt: skip
        dh0 = dr @ w_cat
        return (dxw, dh0, dc, dhh, dch, None, None, *dweights)


def hyper_sequence(
    xw: torch.Tensor,
    carry: tuple[torch.Tensor, ...],
    masks: torch.Tensor | None,
    *weights: torch.Tensor,
    compile: Callable[[Pointwise], Pointwise] | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """zoo.sequence.loop over hyper_lstm_step (its 17 weights, in its order), with the fused
    backward: -> h (B, T, H), (h_T, c_T, h_hyper_T, c_hyper_T)."""
    fns = (hyper_main_forward, hyper_main_backward, pointwise_forward, pointwise_backward)
    if compile is not None:
        fns = tuple(compile(f) for f in fns)  # type: ignore[assignment]
    Hs, *last = HyperLSTMSequence.apply(xw, *carry, masks, fns, *weights)
    return Hs, tuple(last)
