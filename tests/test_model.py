"""sketchkit.zoo.model and zoo.loss: the loss against an independent numpy computation, the schedules at
known steps, numerical safety, the three cells, the step-wise contract and the masked encoder."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from sketchkit import strokes  # noqa: E402
from sketchkit.zoo.config import Recipe  # noqa: E402
from sketchkit.zoo.loss import Losses, kl_loss, kl_weight, reconstruction_loss, train_loss  # noqa: E402
from sketchkit.zoo.model import SketchRNN, reverse_within_length  # noqa: E402

TINY = dict(enc_size=12, dec_size=16, z_size=6, num_mixture=3, hyper_size=8, hyper_embed=4, max_seq_len=30)


def tiny(**kw) -> SketchRNN:
    torch.manual_seed(0)
    hp = Recipe.of(**{**TINY, **kw})
    return SketchRNN(hp.dims, hp.recurrent_keep_prob)


def real_batch(sheep, n: int = 4, max_len: int = 30) -> tuple[torch.Tensor, torch.Tensor]:
    short = [s for s in sheep.train if len(s) <= max_len][:n]
    factor = strokes.scale_factor(sheep.train)
    batch, lengths = strokes.to_batch([strokes.normalize(s, factor) for s in short], max_len)
    return torch.from_numpy(batch), torch.from_numpy(lengths)


# ---------------------------------------------------------------------------------------------
# loss against numpy


def numpy_losses(params: np.ndarray, target: np.ndarray, lengths: np.ndarray, M: int) -> tuple[float, float]:
    """Eq. 9 written out naively in float64: densities, not log-densities."""
    B, N_max, _ = target.shape
    ls = lp = 0.0
    for b in range(B):
        for i in range(N_max):
            y = params[b, i]
            q = np.exp(y[:3]) / np.exp(y[:3]).sum()
            pi_hat, mx, my, sx_hat, sy_hat, r_hat = (y[3 + k * M : 3 + (k + 1) * M] for k in range(6))
            pi = np.exp(pi_hat) / np.exp(pi_hat).sum()
            sx, sy, rho = np.exp(sx_hat), np.exp(sy_hat), np.tanh(r_hat)
            dx, dy = target[b, i, 0], target[b, i, 1]
            zx, zy = (dx - mx) / sx, (dy - my) / sy
            z = zx**2 + zy**2 - 2 * rho * zx * zy
            pdf = np.exp(-z / (2 * (1 - rho**2))) / (2 * np.pi * sx * sy * np.sqrt(1 - rho**2))
            if i < lengths[b]:
                ls -= np.log((pi * pdf).sum()) / N_max
            lp -= (target[b, i, 2:] * np.log(q)).sum() / N_max
    return ls / B, lp / B


def test_loss_terms_match_numpy(sheep) -> None:
    batch, lengths = real_batch(sheep)
    target = batch[:, 1:].double()
    M = 3
    gen = torch.Generator().manual_seed(1)
    params = torch.randn(*target.shape[:2], 6 * M + 3, generator=gen, dtype=torch.float64) * 0.5
    ls, lp = reconstruction_loss(params, target, lengths)
    ref_ls, ref_lp = numpy_losses(params.numpy(), target.numpy(), lengths.numpy(), M)
    assert float(ls) == pytest.approx(ref_ls, rel=1e-9)
    assert float(lp) == pytest.approx(ref_lp, rel=1e-9)
    # L_s stops at N_s, L_p runs to N_max: padding changes L_p but not L_s
    assert lengths.max() < target.shape[1]


def test_kl_values() -> None:
    mu, presig = torch.zeros(2, 4), torch.zeros(2, 4)
    assert float(kl_loss(mu, presig)) == 0.0
    assert float(kl_loss(torch.ones(2, 4), presig)) == pytest.approx(0.5)  # mu^2 / 2 per dim
    ps = torch.full((1, 3), math.log(4.0))  # sigma^2 = 4
    assert float(kl_loss(torch.zeros(1, 3), ps)) == pytest.approx(-0.5 * (1 + math.log(4) - 4))


def test_annealing_schedule_at_known_steps() -> None:
    assert kl_weight(0, 0.01, 0.99999) == pytest.approx(0.01)
    assert kl_weight(100_000, 0.01, 0.99999) == pytest.approx(1 - 0.99 * 0.99999**100_000)
    assert kl_weight(100_000, 0.01, 0.99999) == pytest.approx(0.63581, abs=1e-5)
    assert kl_weight(2000, 0.01, 0.999) == pytest.approx(0.86615, abs=1e-5)
    assert kl_weight(10**9, 0.01, 0.99999) == pytest.approx(1.0)
    losses = Losses(ls=torch.tensor(1.0), lp=torch.tensor(0.5), kl=torch.tensor(0.05))
    # KL below KL_min is floored in the training loss (Eq. 15)
    assert float(train_loss(losses, 0, 1.0, 0.2, 0.01, 0.99999)) == pytest.approx(1.5 + 0.01 * 0.2)
    losses.kl = torch.tensor(0.7)
    assert float(train_loss(losses, 100_000, 0.5, 0.2, 0.01, 0.99999)) == pytest.approx(
        1.5 + 0.5 * 0.63581 * 0.7, abs=1e-5
    )


def test_loss_is_finite_on_extreme_inputs() -> None:
    B, T, M = 2, 5, 3
    target = torch.zeros(B, T, 5)
    target[..., 2] = 1
    target[0, :, 0] = 1e30
    target[1, :, 1] = -1e12
    target[1, 2, :2] = 0.0
    lengths = torch.tensor([5, 5])
    for value in (0.0, 80.0, -80.0, 1e4, -1e4):
        params = torch.full((B, T, 6 * M + 3), value, requires_grad=True)
        ls, lp = reconstruction_loss(params, target, lengths)
        (ls + lp).backward()
        assert torch.isfinite(ls) and torch.isfinite(lp), value
        assert torch.isfinite(params.grad).all(), value


def test_extreme_offsets_through_the_model() -> None:
    m = tiny(cell="lstm", recurrent_keep_prob=1.0)
    batch = torch.zeros(3, 31, 5)
    batch[:, :, 4] = 1
    batch[:, 0] = torch.tensor([0, 0, 1, 0, 0.0])
    batch[:, 1:11, :3] = torch.tensor([1e6, -1e6, 1.0])
    batch[:, 1:11, 4] = 0
    out = m(batch, torch.tensor([10, 10, 10]))
    (out.lr + out.kl).backward()
    assert all(torch.isfinite(t) for t in (out.ls, out.lp, out.kl))
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


# ---------------------------------------------------------------------------------------------
# cells and the step-wise contract


@pytest.mark.parametrize("cell", ["lstm", "layer_norm", "hyper"])
def test_cells_forward_backward(cell: str, sheep) -> None:
    m = tiny(cell=cell)  # recurrent dropout on (keep 0.9): the step-by-step path
    batch, lengths = real_batch(sheep)
    out = m(batch, lengths)
    (out.lr + out.kl).backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize("cell", ["lstm", "layer_norm", "hyper"])
def test_step_matches_teacher_forcing(cell: str, sheep) -> None:
    m = tiny(cell=cell).eval()
    batch, lengths = real_batch(sheep)
    z = torch.randn(batch.shape[0], TINY["z_size"])
    with torch.no_grad():
        state = m.init_state(z)
        x = torch.cat([batch[:, :-1], z[:, None].expand(-1, batch.shape[1] - 1, -1)], 2)
        h, last = m.cell.sequence(x, state)
        seq = m.head(h)
        for t in range(batch.shape[1] - 1):
            params, state = m.step(batch[:, t], z, state)
            torch.testing.assert_close(params, seq[:, t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, last, atol=1e-5, rtol=1e-5)
    size = {"lstm": 2 * 16, "layer_norm": 2 * 16, "hyper": 2 * 16 + 2 * 8}[cell]
    assert m.state_size == size and state.shape == (batch.shape[0], size)
    assert params.shape == (batch.shape[0], 6 * 3 + 3)


def test_fused_lstm_equals_its_step_loop(sheep) -> None:
    m = tiny(cell="lstm", recurrent_keep_prob=1.0)
    batch, lengths = real_batch(sheep)
    x = torch.cat([batch[:, :-1], torch.zeros(batch.shape[0], batch.shape[1] - 1, 6)], 2)
    state = torch.randn(batch.shape[0], m.state_size)
    fused, s1 = m.cell.sequence(x, state)
    from sketchkit.zoo.model import Cell

    loop, s2 = Cell.sequence(m.cell, x, state)
    torch.testing.assert_close(fused, loop, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-5)


def test_dropout_only_in_training(sheep) -> None:
    m = tiny(cell="layer_norm", recurrent_keep_prob=0.5)
    batch, lengths = real_batch(sheep)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    m.eval()
    a = m(batch, lengths, generator=gen())
    b = m(batch, lengths, generator=gen())
    assert float(a.ls) == float(b.ls)
    m.train()
    c = m(batch, lengths, generator=gen())
    assert float(c.ls) != float(a.ls)


def test_decoder_only_variant(sheep) -> None:
    m = tiny(kind="decoder-only", cell="hyper")
    assert m.encoder is None and m.init is None
    batch, lengths = real_batch(sheep)
    out = m(batch, lengths)
    assert float(out.kl) == 0.0
    (out.lr).backward()
    m.eval()
    state = m.init_state(None, batch=3)
    assert torch.equal(state, torch.zeros(3, m.state_size))
    params, nxt = m.step(batch[:3, 0], None, state)
    assert params.shape == (3, 21) and nxt.shape == state.shape
    assert m.cell.project(torch.zeros(1, 5)).shape[-1] > 0  # input is S_{i-1} only (5 wide)


# ---------------------------------------------------------------------------------------------
# the encoder respects lengths


def test_reverse_within_length() -> None:
    x = torch.arange(12.0).view(2, 6, 1)
    out = reverse_within_length(x, torch.tensor([3, 6]))
    assert out[0, :, 0].tolist() == [2, 1, 0, 3, 4, 5]
    assert out[1, :, 0].tolist() == [11, 10, 9, 8, 7, 6]


def test_encoder_ignores_padding_and_matches_packed(sheep) -> None:
    m = tiny().eval()
    batch, lengths = real_batch(sheep, n=5)
    strokes5 = batch[:, 1:]
    with torch.no_grad():
        mu, presig = m.encode(strokes5, lengths)
        # the same sketches alone, unpadded
        for b in range(5):
            n = int(lengths[b])
            mu1, ps1 = m.encode(strokes5[b : b + 1, :n], lengths[b : b + 1])
            torch.testing.assert_close(mu1[0], mu[b], atol=1e-6, rtol=1e-6)
        # garbage in the padding changes nothing
        noisy = strokes5.clone()
        for b in range(5):
            noisy[b, int(lengths[b]) :] = 123.0
        torch.testing.assert_close(m.encode(noisy, lengths)[0], mu)
        # a packed bidirectional reference with the same weights
        enc = m.encoder
        ref = torch.nn.LSTM(5, TINY["enc_size"], batch_first=True, bidirectional=True)
        sd = {
            f"{k}{sfx}": v
            for sfx, rnn in (("", enc.fw), ("_reverse", enc.bw))
            for k, v in rnn.state_dict().items()
        }
        ref.load_state_dict(sd)
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            strokes5, lengths, batch_first=True, enforce_sorted=False
        )
        _, (h, _) = ref(packed)
        h = torch.cat([h[0], h[1]], 1)
        torch.testing.assert_close(enc.mu(h), mu, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(enc.presig(h), presig, atol=1e-6, rtol=1e-6)


def test_params_layout_is_magentas() -> None:
    m = tiny(num_mixture=4).eval()
    with torch.no_grad():
        m.head.weight.zero_()
        m.head.bias.copy_(torch.arange(27.0))
        params, _ = m.step(torch.zeros(1, 5), torch.zeros(1, 6), m.init_state(torch.zeros(1, 6)))
    from sketchkit.zoo.loss import split_params

    pen, pi, mu_x, mu_y, sx, sy, rho = split_params(params, 4)
    assert (
        pen.tolist() == [[0, 1, 2]] and pi.tolist() == [[3, 4, 5, 6]] and rho.tolist() == [[23, 24, 25, 26]]
    )
    assert mu_x[0, 0] == 7 and mu_y[0, 0] == 11 and sx[0, 0] == 15 and sy[0, 0] == 19


def test_numpy_reference_is_meaningful() -> None:
    """The naive pdf of the reference integrates to ~1 (guards the reference itself)."""
    xs = np.linspace(-8, 8, 401)
    X, Y = np.meshgrid(xs, xs)
    sx, sy, rho = 1.3, 0.7, 0.6
    z = (X / sx) ** 2 + (Y / sy) ** 2 - 2 * rho * X * Y / (sx * sy)
    pdf = np.exp(-z / (2 * (1 - rho**2))) / (2 * np.pi * sx * sy * np.sqrt(1 - rho**2))
    assert pdf.sum() * (xs[1] - xs[0]) ** 2 == pytest.approx(1.0, abs=1e-3)


def test_stepwise_methods_never_drop(sheep) -> None:
    """encode / step are the inference contract: the same numbers in training mode."""
    m = tiny(cell="hyper", recurrent_keep_prob=0.5)
    batch, lengths = real_batch(sheep)
    z = torch.randn(batch.shape[0], TINY["z_size"])
    with torch.no_grad():
        out = {}
        for mode in (True, False):
            m.train(mode)
            mu, _ = m.encode(batch[:, 1:], lengths)
            params, _ = m.step(batch[:, 0], z, m.init_state(z))
            out[mode] = (mu, params)
    assert torch.equal(out[True][0], out[False][0]) and torch.equal(out[True][1], out[False][1])
