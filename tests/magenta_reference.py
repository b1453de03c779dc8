"""An independent numpy implementation of sketch-rnn-js's model, written from its documented
maths (../shared/data/README.md and the JS library's LSTMCell, get_pdf and
get_init_state_from_latent_vector): the reference both Magenta importers are tested against.
VAE files are not in ../shared, so `write_vae_json` writes a small one with random weights in
exactly the published format."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np


class JsModel:
    """[info, shapes, blobs] -> the JS model's maths: TF LSTM (i, j, f, o) with forget bias 1,
    state (h, c), initial state tanh(z W + b) split (c, h), tanh(z) first for version < 6."""

    def __init__(self, data: list) -> None:
        info, shapes, blobs = data
        self.info = info
        w = [
            (np.frombuffer(base64.b64decode(b), "<i2").astype(np.float64) / 32767.0 * 10.0).reshape(s)
            for s, b in zip(shapes, blobs, strict=True)
        ]
        self.dec = w[-3:]
        self.out_w, self.out_b = w[-5], w[-4]
        if len(w) == 17:
            self.enc_fw, self.enc_bw = w[0:3], w[3:6]
            self.mu_w, self.mu_b, self.sig_w, self.sig_b, self.init_w, self.init_b = w[6:12]
        self.H = self.dec[1].shape[0]

    @staticmethod
    def lstm(x, h, c, wxh, whh, bias):  # type: ignore[no-untyped-def]
        sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
        gates = x @ wxh + h @ whh + bias
        i, j, f, o = np.split(gates, 4, axis=-1)
        c = c * sig(f + 1.0) + np.tanh(j) * sig(i)
        return np.tanh(c) * sig(o), c

    def init_state(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.info.get("version", 0) < 6:
            z = np.tanh(z)
        s = np.tanh(z @ self.init_w + self.init_b)
        return s[:, self.H :], s[:, : self.H]  # (h, c): the JS splits (c, h)

    def step(self, prev, z, h, c):  # type: ignore[no-untyped-def]
        x = prev if z is None else np.concatenate([prev, z], -1)
        h, c = self.lstm(x, h, c, *self.dec)
        return h @ self.out_w + self.out_b, h, c

    def encode(self, seq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One normalised stroke-5 sequence [n, 5] -> (mu, presig)."""
        outs = []
        for weights, xs in ((self.enc_fw, seq), (self.enc_bw, seq[::-1])):
            E = weights[1].shape[0]
            h = c = np.zeros(E)
            for x in xs:
                h, c = self.lstm(x, h, c, *weights)
            outs.append(h)
        hc = np.concatenate(outs)
        return hc @ self.mu_w + self.mu_b, hc @ self.sig_w + self.sig_b


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Max |a - b| / (1 + |b|): float32 rounding is relative to the value (step parameters reach ~20,
    states ~50 on the shared models), absolute near 0."""
    return float((np.abs(a - b) / (1.0 + np.abs(b))).max())


def random_stroke5(rng: np.random.Generator, n: int) -> np.ndarray:
    x = np.zeros((n, 5), np.float32)
    x[:, :2] = rng.standard_normal((n, 2))
    x[np.arange(n), 2 + rng.integers(0, 2, n)] = 1.0
    return x


def write_vae_json(
    path: Path, version: int, H: int = 24, E: int = 12, Nz: int = 6, M: int = 20, seed: int = 0
) -> Path:
    """A Magenta VAE JSON in the published layout, with random weights (|w| well under 10)."""
    rng = np.random.default_rng(seed)
    P = 6 * M + 3
    shapes = [
        [5, 4 * E], [E, 4 * E], [4 * E],  # encoder forward
        [5, 4 * E], [E, 4 * E], [4 * E],  # encoder backward
        [2 * E, Nz], [Nz], [2 * E, Nz], [Nz],  # mu, presig
        [Nz, 2 * H], [2 * H],  # z -> initial state (c, h)
        [H, P], [P], [5 + Nz, 4 * H], [H, 4 * H], [4 * H],  # decoder
    ]  # fmt: skip
    blobs = []
    for s in shapes:
        ints = np.clip(np.round(rng.normal(0.0, 0.4, s) * 3276.7), -32767, 32767).astype("<i2")
        blobs.append(base64.b64encode(ints.tobytes()).decode())
    info = {
        "name": f"testvae{version}",
        "mode": 1,
        "version": version,
        "max_seq_len": 40,
        "scale_factor": 50.0,
    }
    path.write_text(json.dumps([info, shapes, blobs]))
    return path
