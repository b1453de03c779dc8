"""sketchkit.zoo.sequence and the cells' step functions: the teacher-forcing loop equals the cells as they
were before (one step at a time, dropout drawn per step; here with the same masks) in forward and
gradients on real sheep, the loop module that CUDA graphs capture equals the plain loop, the
compiled step too (slow), checkpoint keys are unchanged, and training needs neither cairosvg nor
platformdirs and stops cleanly at its time limit."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from sketchkit import strokes  # noqa: E402
from sketchkit.datasets import Dataset, save_npz  # noqa: E402
from sketchkit.zoo import sequence  # noqa: E402
from sketchkit.zoo.config import Recipe  # noqa: E402
from sketchkit.zoo.model import LN_EPS, SketchRNN, lstm_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = dict(enc_size=12, dec_size=24, z_size=6, num_mixture=3, hyper_size=10, hyper_embed=4, max_seq_len=60)
KEEP = 0.8


def model(cell: str) -> SketchRNN:
    torch.manual_seed(0)
    hp = Recipe.of(cell=cell, recurrent_keep_prob=KEEP, **SIZES)
    m = SketchRNN(hp.dims, hp.recurrent_keep_prob)
    with torch.no_grad():  # move every weight off its initial value, so no term hides behind a 0 or 1
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


def decoder_inputs(sheep, m: SketchRNN, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """[S_{i-1}; z] for n real sheep (B, N_max, 5 + Nz) and an initial state from z."""
    short = [s for s in sheep.train if len(s) <= SIZES["max_seq_len"]][:n]
    factor = strokes.scale_factor(sheep.train)
    batch, _ = strokes.to_batch([strokes.normalize(s, factor) for s in short], SIZES["max_seq_len"])
    x = torch.from_numpy(batch)[:, :-1]
    z = torch.randn(n, SIZES["z_size"], generator=torch.Generator().manual_seed(1))
    x = torch.cat([x, z[:, None].expand(-1, x.shape[1], -1)], 2).requires_grad_(True)
    return x, torch.tanh(m.init(z))


# ---------------------------------------------------------------------------------------------
# the cells as they were (zoo/model.py before issue 11), written out as the reference; the only
# change: `_dropout(g, keep, drop)` (F.dropout per step) -> g * mask[t], so both see the same masks


def old_layer_norm_gates(gates: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    H = weight.shape[0] // 4
    g = F.layer_norm(gates.reshape(gates.shape[0], 4, H), (H,), eps=LN_EPS)
    return g.reshape(gates.shape) * weight + bias


def old_recur_layer_norm(cell, xw, state, mask):  # type: ignore[no-untyped-def]
    h, c = state.chunk(2, 1)
    gates = old_layer_norm_gates(xw + F.linear(h, cell.weight_hh), cell.ln_gates_weight, cell.ln_gates_bias)
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f + 1.0) * c + torch.sigmoid(i) * (torch.tanh(g) * mask)
    h = torch.sigmoid(o) * torch.tanh(cell.ln_c(c))
    return h, torch.cat([h, c], 1)


def old_recur_hyper(cell, xw, state, mask):  # type: ignore[no-untyped-def]
    B = xw.shape[0]
    H, Hh, E = cell.hidden_size, cell.hyper_size, cell.embed
    h, c, hh, ch = state.split([H, H, Hh, Hh], 1)
    x_main, x_hyper = xw.split([4 * H, 4 * Hh], 1)
    gi, gf, gg, go = (
        x_hyper
        + F.linear(h, cell.hyper_ih[:, cell.input_size :])
        + F.linear(hh, cell.hyper_hh)
        + cell.hyper_bias
    ).chunk(4, 1)
    ch = torch.sigmoid(gf) * ch + torch.sigmoid(gi) * torch.tanh(gg)
    hh = torch.sigmoid(go) * torch.tanh(ch)
    scale_x = torch.einsum("bke,keh->bkh", cell.z_x(hh).view(B, 4, E), cell.alpha_x)
    scale_h = torch.einsum("bke,keh->bkh", cell.z_h(hh).view(B, 4, E), cell.alpha_h)
    shift_h = torch.einsum("bke,keh->bkh", cell.z_b(hh).view(B, 4, E), cell.beta_h)
    rec = F.linear(h, cell.weight_hh).view(B, 4, H)
    gates = x_main.view(B, 4, H) * scale_x + rec * scale_h + shift_h + cell.bias.view(4, H)
    gates = old_layer_norm_gates(gates.reshape(B, 4 * H), cell.ln_gates_weight, cell.ln_gates_bias)
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f + 1.0) * c + torch.sigmoid(i) * (torch.tanh(g) * mask)
    h = torch.sigmoid(o) * torch.tanh(cell.ln_c(c))
    return h, torch.cat([h, c, hh, ch], 1)


def old_lstm_loop(xw: torch.Tensor, w_hh: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    B, T, _ = xw.shape
    h = c = xw.new_zeros(B, w_hh.shape[1])
    out = []
    for t in range(T):
        i, f, g, o = (xw[:, t] + F.linear(h, w_hh)).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * (torch.tanh(g) * masks[t])
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out, 1)


OLD_RECUR = {"layer_norm": old_recur_layer_norm, "hyper": old_recur_hyper}


def grads(outputs: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    weights = torch.linspace(-1, 1, outputs.numel()).view(outputs.shape)  # a loss that weighs every output
    return list(torch.autograd.grad((outputs * weights).sum(), inputs, retain_graph=True))


@pytest.mark.parametrize("cell", ["layer_norm", "hyper"])
def test_sequence_equals_the_old_cells(cell: str, sheep) -> None:
    """Forward within 1e-5 and gradients within 1e-4 (every weight, the inputs, the initial state),
    each plus 1e-5 relative."""
    m = model(cell)
    x, state = decoder_inputs(sheep, m)
    torch.manual_seed(7)
    h_new, last_new = m.cell.sequence(x, state, drop=True)
    B, T = x.shape[:2]
    torch.manual_seed(7)
    masks = sequence.dropout_masks(T, B, m.cell.hidden_size, KEEP, x)
    assert 0.6 < float((masks > 0).float().mean()) < 0.95 and float(masks.max()) == pytest.approx(1 / KEEP)
    xw, s, out = m.cell.project(x), state, []
    for t in range(T):
        h, s = OLD_RECUR[cell](m.cell, xw[:, t], s, masks[t])
        out.append(h)
    h_old = torch.stack(out, 1)
    torch.testing.assert_close(h_new, h_old, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(last_new, s, atol=1e-5, rtol=1e-5)
    inputs = [x, *m.cell.parameters()]
    # gradient entries reach ~300 here (sums over T x B), summed in another order by each side and
    # by each CPU's kernels (AVX2, AVX-512): float32 rounding of that order is relative, up to 4e-6
    for a, b in zip(grads(h_new, inputs), grads(h_old, inputs), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "layer_norm", "hyper"])
def test_fused_loop_is_exact_in_float64(cell: str, sheep) -> None:
    """In float64 the fused loops' hand-written backward equals autograd to rounding (1e-10)."""
    m = model(cell)
    x, state = decoder_inputs(sheep, m)
    m = m.double()
    x, state = x.detach().double().requires_grad_(True), state.detach().double().requires_grad_(True)
    xw = m.cell.project(x)
    masks = sequence.dropout_masks(xw.shape[1], xw.shape[0], m.cell.hidden_size, KEEP, xw)
    carry = m.cell.unpack(state)
    h1, last1 = m.cell.fused_fn()(xw, carry, masks, *m.cell.weights())
    h2, last2 = sequence.loop(m.cell.step_fn(), m.cell.weights(), xw, carry, masks)
    torch.testing.assert_close(h1, h2, atol=1e-12, rtol=1e-12)
    inputs = [x, state, *m.cell.weights()]
    out1, out2 = torch.cat([h1.flatten(1), *last1], 1), torch.cat([h2.flatten(1), *last2], 1)
    w = torch.linspace(-1, 1, out1.numel(), dtype=out1.dtype).view(out1.shape)
    g1 = torch.autograd.grad((out1 * w).sum(), inputs, retain_graph=True)
    g2 = torch.autograd.grad((out2 * w).sum(), inputs)
    for a, b in zip(g1, g2, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-12)


def test_encoder_dropout_loop_equals_the_old_loop(sheep) -> None:
    m = model("layer_norm")
    x, _ = decoder_inputs(sheep, m)
    x5 = x[:, :, :5]
    torch.manual_seed(3)
    new = m.encoder.run(m.encoder.fw, x5, drop=True)
    w_ih, w_hh, b_ih, b_hh = m.encoder.fw.all_weights[0]
    torch.manual_seed(3)
    masks = sequence.dropout_masks(x5.shape[1], x5.shape[0], w_hh.shape[1], KEEP, x5)
    old = old_lstm_loop(F.linear(x5, w_ih, b_ih + b_hh), w_hh, masks)
    torch.testing.assert_close(new, old, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads(new, [x, w_ih, w_hh]), grads(old, [x, w_ih, w_hh]), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "layer_norm", "hyper"])
def test_the_captured_loop_function_equals_the_loop(cell: str, sheep) -> None:
    """`Loop` (what make_graphed_callables captures on CUDA) takes carry and weights as inputs and
    computes what the plain loop does: the same numbers, the same gradients for the weights."""
    m = model(cell)
    x, state = decoder_inputs(sheep, m)
    xw = m.cell.project(x)
    masks = sequence.dropout_masks(xw.shape[1], xw.shape[0], m.cell.hidden_size, KEEP, xw)
    carry = m.cell.unpack(state)
    h1, *last1 = sequence.Loop(m.cell.step_fn(), len(carry))(xw, masks, *carry, *m.cell.weights())
    h2, last2 = sequence.loop(m.cell.step_fn(), m.cell.weights(), xw, carry, masks)
    # (Loop makes the carry contiguous: BLAS may then sum in another order, hence not atol=0)
    torch.testing.assert_close(h1, h2, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(m.cell.pack(tuple(last1)), m.cell.pack(last2), atol=1e-6, rtol=1e-5)
    inputs = [x, *m.cell.weights()]
    for a, b in zip(grads(h1, inputs), grads(h2, inputs), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "layer_norm", "hyper"])
def test_fused_loop_equals_the_step_loop(cell: str, sheep) -> None:
    """zoo.fused (one autograd node, hand-written backward) against autograd over the cell's own
    step function, on real sheep with dropout: forward within 1e-5, every gradient (inputs, initial
    state, all weights) within 1e-4, each plus 1e-5 relative, and the final state."""
    m = model(cell)
    x, state = decoder_inputs(sheep, m)
    state = state.detach().requires_grad_(True)
    xw = m.cell.project(x)
    masks = sequence.dropout_masks(xw.shape[1], xw.shape[0], m.cell.hidden_size, KEEP, xw)
    carry = m.cell.unpack(state)
    fused_fn = m.cell.fused_fn()
    assert fused_fn is not None
    h1, last1 = fused_fn(xw, carry, masks, *m.cell.weights())
    h2, last2 = sequence.loop(m.cell.step_fn(), m.cell.weights(), xw, carry, masks)
    torch.testing.assert_close(h1, h2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(m.cell.pack(last1), m.cell.pack(last2), atol=1e-5, rtol=1e-5)
    inputs = [x, state, *m.cell.weights()]
    out1 = torch.cat([h1.flatten(1), *last1], 1)  # the loss reaches the last state too
    out2 = torch.cat([h2.flatten(1), *last2], 1)
    for a, b in zip(grads(out1, inputs), grads(out2, inputs), strict=True):  # relative: see above
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)
    # and without dropout (masks None: evaluation, or keep = 1)
    h3, _ = fused_fn(xw, carry, None, *m.cell.weights())
    h4, _ = sequence.loop(m.cell.step_fn(), m.cell.weights(), xw, carry, None)
    torch.testing.assert_close(h3, h4, atol=1e-5, rtol=1e-5)


def test_training_uses_the_fused_loop(sheep, monkeypatch) -> None:
    """A layer-norm model in training mode runs its decoder and both encoder directions through
    zoo.fused on the CPU (where it is faster than the step loop: benchmarks/RESULTS.md)."""
    from sketchkit.zoo import fused

    calls = []
    real = fused.LSTMSequence.apply
    monkeypatch.setattr(fused.LSTMSequence, "apply", lambda *a: calls.append(a[4].shape) or real(*a))
    m = model("layer_norm").train()
    short = [s for s in sheep.train if len(s) <= SIZES["max_seq_len"]][:4]
    factor = strokes.scale_factor(sheep.train)
    batch, lengths = (torch.from_numpy(a) for a in strokes.to_batch(
        [strokes.normalize(s, factor) for s in short], SIZES["max_seq_len"]))  # fmt: skip
    out = m(batch, lengths)
    (out.lr + out.kl).backward()
    E, H = SIZES["enc_size"], SIZES["dec_size"]
    assert calls == [(4 * E, E), (4 * E, E), (4 * H, H)]  # w_hh of fw, bw, decoder


@pytest.mark.slow
def test_compiled_fused_loop_equals_the_step_loop(sheep) -> None:
    """The fused loop with its pointwise functions compiled (as on CUDA; inductor's CPU backend here)."""
    m = model("layer_norm")
    x, state = decoder_inputs(sheep, m)
    xw = m.cell.project(x)
    masks = sequence.dropout_masks(xw.shape[1], xw.shape[0], m.cell.hidden_size, KEEP, xw)
    carry = m.cell.unpack(state)
    h1, _ = m.cell.fused_fn()(xw, carry, masks, *m.cell.weights(), compile=sequence.compiled)
    h2, _ = sequence.loop(m.cell.step_fn(), m.cell.weights(), xw, carry, masks)
    torch.testing.assert_close(h1, h2, atol=1e-5, rtol=1e-5)
    inputs = [x, *m.cell.weights()]
    for a, b in zip(grads(h1, inputs), grads(h2, inputs), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("cell", ["layer_norm", "hyper"])
def test_compiled_step_equals_the_eager_step(cell: str, sheep) -> None:
    """The fused step (torch.compile, as on CUDA; here inductor's CPU backend, minutes to compile)."""
    m = model(cell)
    x, state = decoder_inputs(sheep, m)
    xw = m.cell.project(x)
    masks = sequence.dropout_masks(xw.shape[1], xw.shape[0], m.cell.hidden_size, KEEP, xw)
    carry = m.cell.unpack(state)
    step = m.cell.step_fn()
    h1, *_ = sequence.Loop(sequence.compiled(step), len(carry))(xw, masks, *carry, *m.cell.weights())
    h2, _ = sequence.loop(step, m.cell.weights(), xw, carry, masks)
    torch.testing.assert_close(h1, h2, atol=1e-5, rtol=1e-5)
    inputs = [x, *m.cell.weights()]
    for a, b in zip(grads(h1, inputs), grads(h2, inputs), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_fast_path_only_on_cuda_with_grad() -> None:
    x = torch.zeros(2, 3)
    assert not sequence.fast_applies(x)  # CPU: the eager loop, always


def test_checkpoint_keys_unchanged() -> None:
    """The cells' parameter names are the checkpoint format (and the Magenta importer's target)."""
    want = {
        "lstm": ["bias_hh_l0", "bias_ih_l0", "weight_hh_l0", "weight_ih_l0"],
        "layer_norm": ["ln_c.bias", "ln_c.weight", "ln_gates_bias", "ln_gates_weight", "weight_hh", "weight_ih"],
        "hyper": [
            "alpha_h", "alpha_x", "beta_h", "bias", "hyper_bias", "hyper_hh", "hyper_ih", "ln_c.bias",
            "ln_c.weight", "ln_gates_bias", "ln_gates_weight", "weight_hh", "weight_ih", "z_b.weight",
            "z_h.bias", "z_h.weight", "z_x.bias", "z_x.weight",
        ],
    }  # fmt: skip
    for cell, names in want.items():
        prefix = "cell.rnn." if cell == "lstm" else "cell."
        keys = sorted(k for k in model(cell).state_dict() if k.startswith("cell."))
        assert keys == [prefix + n for n in names], cell
    m = model("hyper")
    m.cell.sequence(*decoder_inputs_like(m), drop=True)  # a pass through the loop adds no state
    assert sorted(m.state_dict()) == sorted(model("hyper").state_dict())


def stand_in_cuda(monkeypatch, capture) -> None:  # type: ignore[no-untyped-def]
    """The CUDA-only stages stood in for on the CPU: the fast path applies, compile is the
    identity, `capture(fn, sample, allow_unused_input=...)` replaces make_graphed_callables."""
    monkeypatch.setattr(sequence, "fast_applies", lambda x: sequence._enabled and torch.is_grad_enabled())
    monkeypatch.setattr(sequence, "compiled", lambda step: step)
    monkeypatch.setattr(torch.cuda, "make_graphed_callables", capture)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda: None)


def short_batch(sheep, n: int) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[no-untyped-def]
    """n real sheep as a training batch, N_max = the longest (both paths draw masks of one shape)."""
    short = [s for s in sheep.train if len(s) <= SIZES["max_seq_len"]][:n]
    factor = strokes.scale_factor(sheep.train)
    batch, lengths = strokes.to_batch(
        [strokes.normalize(s, factor) for s in short], max(len(s) for s in short)
    )
    return torch.from_numpy(batch), torch.from_numpy(lengths)


def fast_and_eager(cell: str, batch: torch.Tensor, lengths: torch.Tensor, seed: int) -> list:
    """(losses, gradients by name, the model: alive, so zoo.sequence.stats() still lists its
    captures) of one training pass with the fast path on, then off."""
    results = []
    for fast in (True, False):
        sequence.set_fast(fast)
        try:
            m = model(cell).train()
            torch.manual_seed(seed)
            out = m(batch, lengths)
            (out.lr + out.kl).backward()
        finally:
            sequence.set_fast(True)
        results.append((out, {n: p.grad for n, p in m.named_parameters()}, m))
    return results


def decoder_inputs_like(m: SketchRNN) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(2, 5, 5 + SIZES["z_size"]), torch.zeros(2, m.state_size)


def test_lstm_step_is_the_fused_lstm() -> None:
    """lstm_step (encoder and decoder with dropout) against nn.LSTM's own kernel, no dropout."""
    torch.manual_seed(0)
    rnn = torch.nn.LSTM(5, 7, batch_first=True)
    x = torch.randn(3, 9, 5)
    w_ih, w_hh, b_ih, b_hh = rnn.all_weights[0]
    zero = torch.zeros(3, 7)
    h, _ = sequence.loop(lstm_step, [w_hh], F.linear(x, w_ih, b_ih + b_hh), (zero, zero), None)
    torch.testing.assert_close(h, rnn(x)[0], atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# training on a bare machine, and its time limit


@pytest.fixture
def six_sheep(sheep, tmp_path: Path) -> Path:
    few = [s for s in sheep.train if len(s) <= 30][:6]
    path = tmp_path / "six.npz"
    save_npz(path, Dataset(few, few, few))
    return path


def tiny_recipe(tmp_path: Path, data: Path, **kw) -> Path:  # type: ignore[no-untyped-def]
    hp = Recipe.of(
        dataset=[str(data)], max_seq_len=30, cell="layer_norm", enc_size=8, dec_size=12, z_size=4,
        num_mixture=2, recurrent_keep_prob=0.9, batch_size=6, eval_every=3, log_every=2, num_samples=2,
        num_steps=4, **kw,
    )  # fmt: skip
    path = tmp_path / "tiny.toml"
    hp.save_toml(path)
    return path


BLOCKER = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("cairosvg", "cairocffi", "platformdirs"):
            raise ImportError(f"{name} is blocked (a bare GPU machine)")
sys.meta_path.insert(0, Block())
from sketchkit.cli import main
main()
"""


def test_training_needs_neither_cairosvg_nor_platformdirs(six_sheep: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path, six_sheep)
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-c",
        BLOCKER,
        "train",
        str(recipe),
        "--out",
        str(run),
        "--quiet",
        "--threads",
        "1",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("training pictures written as .svg") == 1, proc.stderr  # one warning line
    assert (run / "best.safetensors").is_file() and (run / "loss.svg").is_file()
    assert not (run / "loss.png").exists()
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["step_0000003.svg", "step_0000004.svg"]
    assert (run / "samples" / "step_0000004.svg").read_text().startswith("<svg")
    # evaluating works there too
    ev = [sys.executable, "-c", BLOCKER, "evaluate", str(run / "best.safetensors"), "--json"]
    proc = subprocess.run(ev, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["step"] == 4


def test_time_limit_stops_with_a_final_validation(six_sheep: Path, tmp_path: Path) -> None:
    from sketchkit.zoo.train import train

    torch.set_num_threads(1)
    hp = dataclasses.replace(Recipe.from_toml(tiny_recipe(tmp_path, six_sheep)), num_steps=10_000)
    run = tmp_path / "run"
    best = train(hp, run, progress=False, time_limit=1e-9)  # over as soon as the first step is done
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["step"]) for r in recs] == [("train", 1), ("valid", 1)]
    assert best["step"] == 1 and (run / "best.safetensors").is_file() and (run / "last.safetensors").is_file()
    assert all(isinstance(recs[0][k], float) for k in ("loss", "ls", "lp", "kl"))
    # the limit is per call: a resumed run goes on from where it stopped
    train(hp, run, progress=False, time_limit=1e-9)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["split"] == "valid" and recs[-1]["step"] == 2


def test_the_fast_path_plumbing_with_capture_stood_in(sheep, monkeypatch, caplog) -> None:
    """The CUDA-only stages cannot run here, so they are stood in for: capture returns the Loop
    module as it is, and compile is the identity; the first capture attempt fails, as a compile
    might on a GPU. What runs for real: the choice of path, the untrimmed encoder, the masks as
    inputs, the cache per module and shape, the fallback with one warning, the check against the
    eager loop. The whole model's losses and gradients must equal the eager path's."""
    attempts = []

    def fake_capture(module, sample, allow_unused_input=False):  # type: ignore[no-untyped-def]
        attempts.append(module.step)
        if len(attempts) == 1:
            raise RuntimeError("compile failed (stood in)")
        return module

    stand_in_cuda(monkeypatch, fake_capture)
    (fast_out, fast_grads, _m1), (eager_out, eager_grads, _m2) = fast_and_eager(
        "layer_norm", *short_batch(sheep, 6), seed=11
    )
    # the encoder's two directions and the decoder: three loops captured (all fused: the LSTM and
    # the layer-norm LSTM have a fused form), the first after a fallback
    modes = [g["mode"] for g in sequence.stats()]
    assert sorted(modes) == ["fused+compiled+graph", "fused+compiled+graph", "fused+graph"], modes
    assert len(attempts) == 4 and caplog.text.count("falling back") == 1
    for k in ("ls", "lp", "kl"):
        torch.testing.assert_close(getattr(fast_out, k), getattr(eager_out, k), atol=1e-6, rtol=1e-5)
    for name, g in eager_grads.items():
        torch.testing.assert_close(fast_grads[name], g, atol=1e-5, rtol=1e-5, msg=name)


def test_the_hyper_decoder_captures_only_its_fused_loop(sheep, monkeypatch) -> None:
    """HyperLSTMCell.step_capture is off (its captured step loop exhausted an H200's memory): the
    decoder's loop is captured in its fused form only; when those captures fail (stood in here), it
    runs the fused loop uncaptured, never tries the step loop. Every capture is a function of
    tensors (weights as inputs, no parameters inside); losses and gradients equal the eager path's."""
    captured = []

    def fake_capture(fn, sample, allow_unused_input=False):  # type: ignore[no-untyped-def]
        assert not isinstance(fn, torch.nn.Module)
        captured.append((fn.step.__name__, fn.fused is not None))
        if fn.step.__name__ == "hyper_lstm_step":
            raise RuntimeError("capture failed (stood in)")
        return fn

    stand_in_cuda(monkeypatch, fake_capture)
    results = fast_and_eager("hyper", *short_batch(sheep, 4), seed=5)
    hyper = [fused for name, fused in captured if name == "hyper_lstm_step"]
    assert hyper == [True, True], captured  # fused compiled, fused eager; no step-loop capture
    assert [c for c in captured if c[0] == "lstm_step"] == [("lstm_step", True)] * 2  # the encoder
    (fast_out, fast_grads, _), (eager_out, eager_grads, _) = results
    for k in ("ls", "lp", "kl"):
        torch.testing.assert_close(getattr(fast_out, k), getattr(eager_out, k), atol=1e-6, rtol=1e-5)
    for name, g in eager_grads.items():
        torch.testing.assert_close(fast_grads[name], g, atol=1e-5, rtol=1e-5, msg=name)
