"""sketch-rnn (Ha & Eck, 2017) in one module, read top-down: encoder, decoder cells, mixture head,
then the model that joins them. Equation numbers are the paper's; the loss is in `zoo.loss`.

Shapes: B batch, T time (N_max for the decoder), H decoder size, S packed state size, Nz latent
size, M mixture components, P = 6M + 3 output width.

The step-wise methods (`encode`, `init_state`, `step`) are the ONNX graph contract of
ARCHITECTURE.md and never drop (whatever the mode); `forward` is the teacher-forced training pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sketchkit.dims import ModelDims
from sketchkit.zoo import fused, sequence
from sketchkit.zoo.loss import Losses, kl_loss, reconstruction_loss

LN_EPS = 1e-3  # magenta's layer-norm epsilon (rnn.py), kept so its recipes behave the same


# ---------------------------------------------------------------------------------------------
# encoder (Eq. 1-2)


def reverse_within_length(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """x[b, :len_b] reversed in time, padding left where it is: S_reverse of Eq. 1 on a padded
    batch. A gather, so it exports to ONNX (pack_padded_sequence does not with dynamo)."""
    B, T, D = x.shape
    t = torch.arange(T, device=x.device).unsqueeze(0)  # (1, T)
    last = (lengths - 1).unsqueeze(1)  # (B, 1)
    idx = torch.where(t <= last, last - t, t)  # (B, T)
    return x.gather(1, idx.unsqueeze(2).expand(B, T, D))


class Encoder(nn.Module):
    """Bidirectional LSTM over the real points of each sketch; its two final hidden states are
    projected to mu and sigma-hat (Eq. 1-2). Two one-directional nn.LSTMs (fused kernels) run
    over S and S_reverse; the output at position len - 1 is each direction's final state, so
    padding never reaches it."""

    def __init__(self, dims: ModelDims, keep: float = 1.0):
        super().__init__()
        self.fw = nn.LSTM(5, dims.enc_size, batch_first=True)
        self.bw = nn.LSTM(5, dims.enc_size, batch_first=True)
        for rnn in (self.fw, self.bw):
            init_lstm_(*rnn.all_weights[0])
        self.mu = nn.Linear(2 * dims.enc_size, dims.z_size)
        self.presig = nn.Linear(2 * dims.enc_size, dims.z_size)
        self.keep = keep

    def run(self, rnn: nn.LSTM, x: torch.Tensor, drop: bool) -> torch.Tensor:
        if drop and self.keep < 1.0:  # recurrent dropout needs the step-by-step cell
            w_ih, w_hh, b_ih, b_hh = rnn.all_weights[0]
            B, T, _ = x.shape
            H = w_hh.shape[1]
            zero = x.new_zeros(B, H)
            masks = sequence.dropout_masks(T, B, H, self.keep, x)
            xw = F.linear(x, w_ih, b_ih + b_hh)  # (B, T, 4 enc)
            return sequence.run(rnn, lstm_step, [w_hh], xw, (zero, zero), masks, fused.lstm_sequence)[0]
        return rnn(x)[0]  # (B, T, enc)

    def forward(
        self, strokes: torch.Tensor, lengths: torch.Tensor, drop: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        B, T, _ = strokes.shape
        lengths = lengths.clamp(min=1)
        h_fw = self.run(self.fw, strokes, drop)  # (B, T, enc)
        h_bw = self.run(self.bw, reverse_within_length(strokes, lengths), drop)  # (B, T, enc)
        idx = (lengths - 1).view(B, 1, 1).expand(B, 1, h_fw.shape[2])
        h = torch.cat([h_fw.gather(1, idx), h_bw.gather(1, idx)], dim=2).squeeze(1)  # (B, 2 enc)
        return self.mu(h), self.presig(h)  # (B, Nz) each


# ---------------------------------------------------------------------------------------------
# decoder cells
#
# Every cell works on a packed state (B, S) and exposes
#   project(x)                -> the input's contribution, computed for all T steps in one matmul
#   recur(xw, state, mask)    -> (h (B, H), next_state (B, S)), one step
#   sequence(x, state, drop)  -> (h (B, T, H), last_state), teacher forcing (zoo.sequence)
# The step's math is one plain function per cell, `*_step(xw, carry, mask, *weights) -> (h, carry)`
# on the unpacked state: `recur` (export, sampling) and the teacher-forcing loop, eager or compiled
# and CUDA-graphed (zoo.sequence), all run it. Gates are in PyTorch's order (i, f, g, o).
# Recurrent dropout (keep probability `keep`) drops the candidate g = tanh(.), as magenta's rnn.py
# does, only when `drop` is set: SketchRNN.forward sets it in training mode; the masks for all T
# are drawn before the loop (zoo.sequence.dropout_masks). The step-wise methods never drop,
# whatever the module's mode (an export wrapper left in training mode cannot put dropout into a graph).


def init_lstm_(w_ih: torch.Tensor, w_hh: torch.Tensor, *biases: torch.Tensor) -> None:
    """Magenta's initialisation: uniform (Glorot) input weights, orthogonal recurrent weights per
    gate block, zero biases except +1.0 on the forget gate (TF's forget_bias, folded in)."""
    H = w_hh.shape[1]
    with torch.no_grad():
        nn.init.xavier_uniform_(w_ih)
        for k in range(4):
            nn.init.orthogonal_(w_hh[k * H : (k + 1) * H])
        for b in biases:
            b.zero_()
        if biases:
            biases[0][H : 2 * H] = 1.0


def _dropped(g: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return g if mask is None else g * mask  # mask: 1 / keep or 0 (zoo.sequence.dropout_masks)


def lstm_step(
    xw: torch.Tensor, carry: tuple[torch.Tensor, ...], mask: torch.Tensor | None, w_hh: torch.Tensor
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One plain LSTM step; xw (B, 4H) holds the input projection and both biases."""
    h, c = carry
    i, f, g, o = (xw + F.linear(h, w_hh)).chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * _dropped(torch.tanh(g), mask)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, (h, c)


class Cell(nn.Module):
    hidden_size: int
    state_size: int
    keep: float

    def project(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step_fn(self) -> sequence.Step:
        """The module-level step function of this cell (zoo.sequence.Step)."""
        raise NotImplementedError

    def weights(self) -> list[nn.Parameter]:
        """The step function's weights, in its argument order."""
        raise NotImplementedError

    def fused_fn(self) -> sequence.Fused | None:
        """The whole teacher-forcing loop with a hand-written backward (zoo.fused), if this cell has one."""
        return None

    def unpack(self, state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return state.chunk(2, 1)  # [h | c]

    def pack(self, carry: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.cat(carry, 1)

    def recur(
        self, xw: torch.Tensor, state: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h, carry = self.step_fn()(xw, self.unpack(state), mask, *self.weights())
        return h, self.pack(carry)

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.recur(self.project(x), state)  # inference: never drops

    def sequence(
        self, x: torch.Tensor, state: torch.Tensor, drop: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        xw = self.project(x)  # (B, T, ...): the input's share for all T in one matmul
        B, T = xw.shape[:2]
        masks = (
            sequence.dropout_masks(T, B, self.hidden_size, self.keep, xw)
            if drop and self.keep < 1.0
            else None
        )
        h, carry = sequence.run(
            self, self.step_fn(), self.weights(), xw, self.unpack(state), masks, self.fused_fn()
        )
        return h, self.pack(carry)  # (B, T, H), (B, S)


class LSTMCell(Cell):
    """The standard LSTM, held as an `nn.LSTM` so the same weights drive the fused kernel
    (cuDNN / MKL, teacher forcing without dropout) and the single step (export, sampling).

    State (B, 2H) = [h | c]. Parameters (nn.LSTM names): `rnn.weight_ih_l0` (4H, in),
    `rnn.weight_hh_l0` (4H, H), `rnn.bias_ih_l0` (4H), `rnn.bias_hh_l0` (4H); gates (i, f, g, o);
    no forget bias inside the cell (ours starts at +1.0 in bias_ih_l0, like TF's forget_bias).
    """

    def __init__(self, input_size: int, hidden_size: int, keep: float = 1.0):
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, batch_first=True)
        init_lstm_(*self.rnn.all_weights[0])  # weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0
        self.hidden_size, self.state_size, self.keep = hidden_size, 2 * hidden_size, keep

    def project(self, x: torch.Tensor) -> torch.Tensor:
        w_ih, _, b_ih, b_hh = self.rnn.all_weights[0]
        return F.linear(x, w_ih, b_ih + b_hh)

    def step_fn(self) -> sequence.Step:
        return lstm_step

    def fused_fn(self) -> sequence.Fused:
        return fused.lstm_sequence

    def weights(self) -> list[nn.Parameter]:
        return [self.rnn.weight_hh_l0]  # type: ignore[list-item]  # an nn.LSTM parameter

    def sequence(
        self, x: torch.Tensor, state: torch.Tensor, drop: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if drop and self.keep < 1.0:
            return super().sequence(x, state, drop)
        h0, c0 = state.chunk(2, 1)
        out, (hn, cn) = self.rnn(x, (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()))
        return out, torch.cat([hn[0], cn[0]], 1)


def _layer_norm_gates(gates: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Layer norm of each of the four gate blocks on its own (magenta's layer_norm_all)."""
    H = weight.shape[0] // 4  # from the parameter: a traced gates.shape would not export to ONNX
    g = F.layer_norm(gates.reshape(gates.shape[0], 4, H), (H,), eps=LN_EPS)  # (B, 4, H)
    return g.reshape(gates.shape) * weight + bias


def layer_norm_lstm_step(
    xw: torch.Tensor,
    carry: tuple[torch.Tensor, ...],
    mask: torch.Tensor | None,
    w_hh: torch.Tensor,
    ln_gates_weight: torch.Tensor,
    ln_gates_bias: torch.Tensor,
    ln_c_weight: torch.Tensor,
    ln_c_bias: torch.Tensor,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One layer-norm LSTM step (LayerNormLSTMCell); xw (B, 4H) = W_ih x, no bias."""
    h, c = carry
    gates = _layer_norm_gates(xw + F.linear(h, w_hh), ln_gates_weight, ln_gates_bias)
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f + 1.0) * c + torch.sigmoid(i) * _dropped(torch.tanh(g), mask)
    h = torch.sigmoid(o) * torch.tanh(
        F.layer_norm(c, (ln_c_weight.shape[0],), ln_c_weight, ln_c_bias, LN_EPS)
    )
    return h, (h, c)


class LayerNormLSTMCell(Cell):
    """LSTM with layer normalisation (Ba et al., 2016) as in magenta's LayerNormLSTMCell: no
    bias before the norm, each gate block normalised with its own gain and bias, forget bias
    +1.0, and the cell state normalised again before the output tanh. State (B, 2H) = [h | c]."""

    def __init__(self, input_size: int, hidden_size: int, keep: float = 1.0):
        super().__init__()
        H = hidden_size
        self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * H, H))
        self.ln_gates_weight = nn.Parameter(torch.ones(4 * H))
        self.ln_gates_bias = nn.Parameter(torch.zeros(4 * H))
        self.ln_c = nn.LayerNorm(H, eps=LN_EPS)
        init_lstm_(self.weight_ih, self.weight_hh)
        self.hidden_size, self.state_size, self.keep = H, 2 * H, keep

    def project(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_ih)

    def step_fn(self) -> sequence.Step:
        return layer_norm_lstm_step

    def fused_fn(self) -> sequence.Fused:
        return fused.lstm_sequence

    def weights(self) -> list[nn.Parameter]:
        return [self.weight_hh, self.ln_gates_weight, self.ln_gates_bias, self.ln_c.weight, self.ln_c.bias]


class HyperLSTMCell(Cell):
    """HyperLSTM (Ha, Dai & Le, 2017) as in magenta's rnn.py: a small LSTM (size Hh) reads
    [x; h] and emits, per step, embeddings (size E) that scale the main cell's input and
    recurrent pre-activations gate by gate and add a bias to the recurrent ones; then layer norm
    as in LayerNormLSTMCell.

    State (B, 2H + 2Hh) = [h | c | h_hyper | c_hyper].
    """

    # Only the fused loop (zoo.fused.hyper_sequence) is ever CUDA-graph captured, never the step loop:
    # captured under autograd, the step loop keeps every step's weight gradients (w_hh alone is
    # 64 MiB) in the graph's memory pool, and at the paper's sizes (H 2048, T 250) that exhausted an
    # H200's 140 GiB (benchmarks/RESULTS.md, issue 11).
    step_capture = False

    def __init__(self, input_size: int, hidden_size: int, hyper_size: int, embed: int, keep: float = 1.0):
        super().__init__()
        H, Hh, E = hidden_size, hyper_size, embed
        self.weight_ih = nn.Parameter(torch.empty(4 * H, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * H, H))
        self.bias = nn.Parameter(torch.zeros(4 * H))
        init_lstm_(self.weight_ih, self.weight_hh)
        # the hyper LSTM (plain, forget bias folded in); its input is [x; h]
        self.hyper_ih = nn.Parameter(torch.empty(4 * Hh, input_size + H))
        self.hyper_hh = nn.Parameter(torch.empty(4 * Hh, Hh))
        self.hyper_bias = nn.Parameter(torch.zeros(4 * Hh))
        init_lstm_(self.hyper_ih, self.hyper_hh, self.hyper_bias)
        # per gate block k: z = W h_hyper + b (E), then scale_k = z @ alpha_k (H); magenta's init
        # (zw: weight 0, bias 1; alpha: 0.1 / E) starts every scale at 0.1
        self.z_x = nn.Linear(Hh, 4 * E)
        self.z_h = nn.Linear(Hh, 4 * E)
        self.z_b = nn.Linear(Hh, 4 * E, bias=False)
        self.alpha_x = nn.Parameter(torch.full((4, E, H), 0.1 / E))
        self.alpha_h = nn.Parameter(torch.full((4, E, H), 0.1 / E))
        self.beta_h = nn.Parameter(torch.zeros(4, E, H))
        with torch.no_grad():
            for lin in (self.z_x, self.z_h):
                lin.weight.zero_()
                lin.bias.fill_(1.0)
            nn.init.normal_(self.z_b.weight, std=0.01)
        self.ln_gates_weight = nn.Parameter(torch.ones(4 * H))
        self.ln_gates_bias = nn.Parameter(torch.zeros(4 * H))
        self.ln_c = nn.LayerNorm(H, eps=LN_EPS)
        self.hidden_size, self.hyper_size, self.embed = H, Hh, E
        self.state_size, self.keep = 2 * H + 2 * Hh, keep
        self.input_size = input_size

    def project(self, x: torch.Tensor) -> torch.Tensor:
        # x's share of both the main and the hyper pre-activations: (..., 4H + 4Hh)
        w = torch.cat([self.weight_ih, self.hyper_ih[:, : self.input_size]], 0)
        return F.linear(x, w)

    def step_fn(self) -> sequence.Step:
        return hyper_lstm_step

    def fused_fn(self) -> sequence.Fused:
        return fused.hyper_sequence

    def weights(self) -> list[nn.Parameter]:
        return [
            self.weight_hh, self.bias, self.hyper_ih, self.hyper_hh, self.hyper_bias,
            self.z_x.weight, self.z_x.bias, self.z_h.weight, self.z_h.bias, self.z_b.weight,  # type: ignore[list-item]
            self.alpha_x, self.alpha_h, self.beta_h,
            self.ln_gates_weight, self.ln_gates_bias, self.ln_c.weight, self.ln_c.bias,
        ]  # fmt: skip

    def unpack(self, state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        H, Hh = self.hidden_size, self.hyper_size
        return state.split([H, H, Hh, Hh], 1)  # [h | c | h_hyper | c_hyper]


def hyper_lstm_step(
    xw: torch.Tensor,
    carry: tuple[torch.Tensor, ...],
    mask: torch.Tensor | None,
    w_hh: torch.Tensor,
    bias: torch.Tensor,
    hyper_ih: torch.Tensor,
    hyper_hh: torch.Tensor,
    hyper_bias: torch.Tensor,
    z_x_weight: torch.Tensor,
    z_x_bias: torch.Tensor,
    z_h_weight: torch.Tensor,
    z_h_bias: torch.Tensor,
    z_b_weight: torch.Tensor,
    alpha_x: torch.Tensor,
    alpha_h: torch.Tensor,
    beta_h: torch.Tensor,
    ln_gates_weight: torch.Tensor,
    ln_gates_bias: torch.Tensor,
    ln_c_weight: torch.Tensor,
    ln_c_bias: torch.Tensor,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One HyperLSTM step (HyperLSTMCell); xw (B, 4H + 4Hh) = x's share of the main and the hyper
    pre-activations (HyperLSTMCell.project). Sizes come from the weights, never from traced shapes."""
    B = xw.shape[0]
    H, Hh, E = w_hh.shape[1], hyper_hh.shape[1], alpha_x.shape[1]
    h, c, hh, ch = carry
    x_main, x_hyper = xw.split([4 * H, 4 * Hh], 1)
    # hyper LSTM step on [x; h]
    gi, gf, gg, go = (
        x_hyper + F.linear(h, hyper_ih[:, hyper_ih.shape[1] - H :]) + F.linear(hh, hyper_hh) + hyper_bias
    ).chunk(4, 1)
    ch = torch.sigmoid(gf) * ch + torch.sigmoid(gi) * torch.tanh(gg)
    hh = torch.sigmoid(go) * torch.tanh(ch)  # (B, Hh)
    # weight scaling from the hyper output, one (B, H) block per gate
    scale_x = torch.einsum(
        "bke,keh->bkh", F.linear(hh, z_x_weight, z_x_bias).view(B, 4, E), alpha_x
    )  # (B, 4, H)
    scale_h = torch.einsum("bke,keh->bkh", F.linear(hh, z_h_weight, z_h_bias).view(B, 4, E), alpha_h)
    shift_h = torch.einsum("bke,keh->bkh", F.linear(hh, z_b_weight).view(B, 4, E), beta_h)
    rec = F.linear(h, w_hh).view(B, 4, H)
    gates = x_main.view(B, 4, H) * scale_x + rec * scale_h + shift_h + bias.view(4, H)
    gates = _layer_norm_gates(gates.reshape(B, 4 * H), ln_gates_weight, ln_gates_bias)
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f + 1.0) * c + torch.sigmoid(i) * _dropped(torch.tanh(g), mask)
    h = torch.sigmoid(o) * torch.tanh(
        F.layer_norm(c, (ln_c_weight.shape[0],), ln_c_weight, ln_c_bias, LN_EPS)
    )
    return h, (h, c, hh, ch)


def make_cell(dims: ModelDims, input_size: int, keep: float = 1.0) -> Cell:
    if dims.cell == "lstm":
        return LSTMCell(input_size, dims.dec_size, keep)
    if dims.cell == "layer_norm":
        return LayerNormLSTMCell(input_size, dims.dec_size, keep)
    return HyperLSTMCell(input_size, dims.dec_size, dims.hyper_size, dims.hyper_embed, keep)


# ---------------------------------------------------------------------------------------------
# the model


class SketchRNN(nn.Module):
    """The sketch-rnn model of `dims.kind`: the VAE ("vae") or the decoder-only model.

    Parameters: `encoder.*` (VAE only), `init.weight` (S, Nz) / `init.bias` (S) (VAE only: the
    initial state tanh(W_z z + b_z)), `cell.*` (see the cell classes), `head.weight` (P, H) /
    `head.bias` (P) (Eq. 4: y = W_y h + b_y).

    Loading a Magenta / TensorFlow LSTM (gates (i, j, f, o), W_xh (in, 4H), W_hh (H, 4H), one
    bias (4H), forget bias +1.0 inside the cell) into `cell="lstm"`: reorder the four blocks
    (i, j, f, o) -> (i, f, g=j, o) along the 4H axis, transpose, and set
        cell.rnn.weight_ih_l0 = W_xh^T,  cell.rnn.weight_hh_l0 = W_hh^T,
        cell.rnn.bias_ih_l0 = bias with +1.0 added to the f block,  cell.rnn.bias_hh_l0 = 0.
    The decoder input is [S_{i-1} (5); z (Nz)] in that order, as in Magenta. Magenta packs the
    LSTM state as [c | h] (the z -> state projection too): swap the two halves of its W, b into
    our [h | c]. The output layer (H, 6M+3) is `head.weight^T`; its column layout is ours.
    """

    def __init__(self, dims: ModelDims, keep: float = 1.0):
        """dims: what the model is (`sketchkit.dims`); keep: the keep probability of the
        recurrent dropout in training (a recipe's `recurrent_keep_prob`; 1.0 = none)."""
        super().__init__()
        self.dims = dims
        self.encoder = Encoder(dims, keep) if dims.vae else None
        self.cell = make_cell(dims, 5 + dims.z_size, keep)
        self.init = nn.Linear(dims.z_size, self.cell.state_size) if dims.vae else None
        self.head = nn.Linear(dims.dec_size, 6 * dims.num_mixture + 3)

    @property
    def state_size(self) -> int:
        return self.cell.state_size

    # --- the step-wise graphs (eval mode) ----------------------------------------------------
    def encode(self, strokes: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """strokes (B, T, 5) normalised stroke-5 without the S_0 row, lengths (B,) real points
        -> mu (B, Nz), presig (B, Nz) (sigma-hat of Eq. 2; sigma = exp(presig / 2))."""
        if self.encoder is None:
            raise ValueError("a decoder-only model has no encoder")
        return self.encoder(strokes, lengths)

    def init_state(self, z: torch.Tensor | None, batch: int | None = None) -> torch.Tensor:
        """[h_0; c_0] = tanh(W_z z + b_z) packed (B, S); zeros for a decoder-only model (§3.3).
        `dims.tanh_z` (a Magenta VAE of version < 6): sketch-rnn-js squashes a given z with tanh
        before the projection (the decoder input keeps the raw z, as in the JS `update()`)."""
        if self.init is None or z is None:
            if batch is None:
                raise ValueError("a decoder-only model needs the batch size for its zero state")
            return torch.zeros(batch, self.state_size, device=self.head.weight.device)
        return torch.tanh(self.init(torch.tanh(z) if self.dims.tanh_z else z))

    def step(
        self, prev: torch.Tensor, z: torch.Tensor | None, state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder step (Eq. 4): prev (B, 5), z (B, Nz) or None, state (B, S) ->
        raw params (B, 6M+3) laid out [pen (3) | pi (M) | mu_x | mu_y | sigma-hat_x |
        sigma-hat_y | rho-hat] (before softmax / exp / tanh), next_state (B, S)."""
        x = prev if z is None or self.encoder is None else torch.cat([prev, z], 1)
        h, state = self.cell.step(x, state)
        return self.head(h), state

    # --- teacher-forced training pass ----------------------------------------------------------
    def forward(
        self,
        batch: torch.Tensor,
        lengths: torch.Tensor,
        generator: torch.Generator | None = None,
        eps: torch.Tensor | None = None,
    ) -> Losses:
        """batch (B, N_max + 1, 5) with S_0 in row 0 (`sketchkit.strokes.to_batch`), lengths (B,)
        -> the loss terms of Eq. 9-10, each averaged over the batch. eps (B, N_z): the noise of
        Eq. 2 (training draws it per sketch, zoo.train.make_batch); drawn from `generator` if None."""
        B, T1, _ = batch.shape
        x, target = batch[:, :-1], batch[:, 1:]  # (B, N_max, 5): inputs S_0.., targets S_1..
        if self.encoder is not None and self.init is not None:
            # the encoder never reads past the longest sketch: skip the padding, except on the CUDA
            # fast path, whose graphs want static shapes (and int() would wait for the GPU)
            n = T1 - 1 if sequence.fast_applies(batch) else int(lengths.max())
            mu, presig = self.encoder(target[:, :n], lengths, drop=self.training)  # (B, Nz)
            if eps is None:
                eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + torch.exp(presig / 2) * eps  # Eq. 2
            state = torch.tanh(self.init(z))
            x = torch.cat([x, z.unsqueeze(1).expand(B, T1 - 1, z.shape[1])], 2)  # (B, N_max, 5 + Nz)
            kl = kl_loss(mu, presig)
        else:
            state = batch.new_zeros(B, self.state_size)
            kl = batch.new_zeros(())
        h, _ = self.cell.sequence(x, state, drop=self.training)  # (B, N_max, H)
        ls, lp = reconstruction_loss(self.head(h), target, lengths)
        return Losses(ls=ls, lp=lp, kl=kl)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
