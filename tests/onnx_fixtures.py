"""Tiny real sketch-rnn models as ONNX files, built with `onnx.helper` (no torch, no export/).

Random weights in Magenta's TensorFlow layout, turned into graphs by `sketchkit.magenta_onnx`
(the torch-free Magenta importer), so they satisfy the graph contract of `sketchkit.graphs` for
both kinds of model:
- vae: `encoder` (ONNX's bidirectional LSTM op with the real `sequence_lens`, then two linear
  heads), `decoder_init` (tanh(W z + b)) and `decoder_step` (a TensorFlow-style LSTM cell and the
  mixture head);
- decoder-only: `decoder_step` without `z`.
Weights are deterministic in `seed`, so every test sees the same model. They are meant for the
mechanics of sampling (stop, batching, seeds, temperature, errors), not for pretty sheep.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sketchkit.dims import ModelDims
from sketchkit.magenta import MagentaModel
from sketchkit.magenta_onnx import save_graphs
from sketchkit.modelinfo import ModelInfo


def make_model(
    directory: str | Path,
    kind: str = "vae",
    *,
    hidden: int = 16,
    z_size: int = 4,
    enc_size: int = 8,
    num_mixture: int = 3,
    max_seq_len: int = 40,
    scale_factor: float = 10.0,
    pen_bias: tuple[float, float, float] = (1.0, 0.0, -0.5),
    seed: int = 0,
    nan: bool = False,
    name: str | None = None,
) -> Path:
    """Write a tiny model directory (graphs + model.json) and return its path.

    `pen_bias` sets the pen logits' bias (p1, p2, p3): the default ends most sketches well before
    `max_seq_len`. `nan=True` makes the step graph output NaN (for the error path).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    H, M = hidden, num_mixture
    n_in = 5 + (z_size if kind == "vae" else 0) + H
    P = 6 * M + 3

    def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    E = enc_size
    w = {
        "dec_W_xh": rand(n_in - H, 4 * H, scale=0.5 / np.sqrt(n_in)),
        "dec_W_hh": rand(H, 4 * H, scale=0.5 / np.sqrt(n_in)),
        "dec_bias": rand(4 * H, scale=0.1),
        "dec_output_w": rand(H, P, scale=0.5 / np.sqrt(H)),
        "dec_output_b": np.zeros(P, np.float32),
        "init_w": rand(z_size, 2 * H, scale=0.5),
        "init_b": rand(2 * H, scale=0.1),
        **{f"enc_{d}_W_xh": rand(5, 4 * E, scale=0.5) for d in ("fw", "bw")},
        **{f"enc_{d}_W_hh": rand(E, 4 * E, scale=0.3) for d in ("fw", "bw")},
        **{f"enc_{d}_bias": rand(4 * E, scale=0.1) for d in ("fw", "bw")},
        "enc_mu_w": rand(2 * E, z_size, scale=1.0),
        "enc_mu_b": rand(z_size, scale=0.1),
        "enc_presig_w": rand(2 * E, z_size, scale=0.3),
        "enc_presig_b": np.full(z_size, -1.0, np.float32),
    }
    # head bias: pen logits, then pi (spread out), mu_x, mu_y (distinct means), log sigma, rho
    by = w["dec_output_b"]
    by[0:3] = pen_bias
    by[3 : 3 + M] = np.linspace(1.0, -1.0, M)
    by[3 + M : 3 + 2 * M] = np.linspace(-1.5, 1.5, M)
    by[3 + 2 * M : 3 + 3 * M] = np.linspace(1.0, -0.5, M)
    by[3 + 3 * M : 3 + 5 * M] = -1.0
    by[3 + 5 * M : 3 + 6 * M] = np.linspace(-0.8, 0.8, M)
    if nan:
        by[3] = np.nan
    mode, version = (1, 6) if kind == "vae" else (2, 6)
    mm = MagentaModel({"name": "tiny", "mode": mode, "version": version}, w, source="tests/onnx_fixtures.py")
    info = ModelInfo(
        name=name or f"tiny-{kind}",
        dims=ModelDims(kind=kind, cell="lstm", enc_size=enc_size, dec_size=H, z_size=z_size, num_mixture=M),
        scale_factor=scale_factor,
        max_seq_len=max_seq_len,
        source="tests/onnx_fixtures.py (random weights)",
        license="Apache-2.0",
    )
    save_graphs(mm, info, directory)
    return directory


def random_sketch(rng: np.random.Generator, n: int, scale: float = 10.0) -> np.ndarray:
    """A stroke-3 sketch of n points in pixel units, ending with the pen lifted."""
    s = np.zeros((n, 3), np.float32)
    s[:, :2] = rng.normal(0, scale, (n, 2)).round()
    s[:, 2] = rng.random(n) < 0.2
    s[-1, 2] = 1
    return s
