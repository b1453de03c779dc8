"""Tiny real sketch-rnn models as ONNX files, built with `onnx.helper` (no torch, no export/).

They satisfy the graph contract of `sketchkit.graphs` for both kinds of model:
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
import onnx
from onnx import TensorProto, helper, numpy_helper

from sketchkit.modelinfo import ModelInfo

OPSET = 17
FLOAT = TensorProto.FLOAT
INT64 = TensorProto.INT64


def _save(nodes, name, inputs, outputs, weights: dict[str, np.ndarray], path: Path) -> None:
    inits = [numpy_helper.from_array(np.asarray(v, dtype=v.dtype), k) for k, v in weights.items()]
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="sketchkit-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _vi(name: str, dtype: int, dims: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, dims)


def _const(name: str, values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _decoder_step(path: Path, conditional: bool, w: dict[str, np.ndarray], hidden: int, z_size: int, params: int) -> None:
    """x = [prev; z]; TF LSTM cell with gates (i, j, f, o) and forget bias +1; params = W_y h + b_y."""
    H = hidden
    nodes = [
        helper.make_node("Split", ["state", "split_hc"], ["h", "c"], axis=1),
        helper.make_node("Concat", ["prev", "z", "h"] if conditional else ["prev", "h"], ["xh"], axis=1),
        helper.make_node("MatMul", ["xh", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["gates"]),
        helper.make_node("Split", ["gates", "split_gates"], ["gi", "gj", "gf", "go"], axis=1),
        helper.make_node("Sigmoid", ["gi"], ["si"]),
        helper.make_node("Tanh", ["gj"], ["tj"]),
        helper.make_node("Add", ["gf", "one"], ["gf1"]),
        helper.make_node("Sigmoid", ["gf1"], ["sf"]),
        helper.make_node("Sigmoid", ["go"], ["so"]),
        helper.make_node("Mul", ["sf", "c"], ["fc"]),
        helper.make_node("Mul", ["si", "tj"], ["ij"]),
        helper.make_node("Add", ["fc", "ij"], ["c_next"]),
        helper.make_node("Tanh", ["c_next"], ["tc"]),
        helper.make_node("Mul", ["tc", "so"], ["h_next"]),
        helper.make_node("MatMul", ["h_next", "Wy"], ["yw"]),
        helper.make_node("Add", ["yw", "by"], ["params"]),
        helper.make_node("Concat", ["h_next", "c_next"], ["next_state"], axis=1),
    ]
    inputs = [_vi("prev", FLOAT, ["B", 5])]
    if conditional:
        inputs.append(_vi("z", FLOAT, ["B", z_size]))
    inputs.append(_vi("state", FLOAT, ["B", 2 * H]))
    outputs = [_vi("params", FLOAT, ["B", params]), _vi("next_state", FLOAT, ["B", 2 * H])]
    weights = {
        "W": w["W"], "b": w["b"], "Wy": w["Wy"], "by": w["by"],
        "one": np.ones(1, np.float32),
        "split_hc": _const("split_hc", [H, H]),
        "split_gates": _const("split_gates", [H] * 4),
    }
    _save(nodes, "decoder_step", inputs, outputs, weights, path)


def _decoder_init(path: Path, w: dict[str, np.ndarray], hidden: int, z_size: int) -> None:
    nodes = [
        helper.make_node("MatMul", ["z", "Wz"], ["zw"]),
        helper.make_node("Add", ["zw", "bz"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["state"]),
    ]
    _save(nodes, "decoder_init", [_vi("z", FLOAT, ["B", z_size])], [_vi("state", FLOAT, ["B", 2 * hidden])],
          {"Wz": w["Wz"], "bz": w["bz"]}, path)


def _encoder(path: Path, w: dict[str, np.ndarray], enc_size: int, z_size: int) -> None:
    """Bidirectional LSTM over the real lengths; [h_fw; h_bw] -> mu, presig."""
    nodes = [
        helper.make_node("Transpose", ["strokes"], ["x_tbi"], perm=[1, 0, 2]),
        helper.make_node("Cast", ["lengths"], ["lens32"], to=TensorProto.INT32),
        helper.make_node("LSTM", ["x_tbi", "enc_W", "enc_R", "enc_B", "lens32"], ["", "h_last"],
                         hidden_size=enc_size, direction="bidirectional"),
        helper.make_node("Transpose", ["h_last"], ["h_bdh"], perm=[1, 0, 2]),
        helper.make_node("Reshape", ["h_bdh", "flat"], ["h_cat"]),
        helper.make_node("MatMul", ["h_cat", "W_mu"], ["mu_w"]),
        helper.make_node("Add", ["mu_w", "b_mu"], ["mu"]),
        helper.make_node("MatMul", ["h_cat", "W_sig"], ["sig_w"]),
        helper.make_node("Add", ["sig_w", "b_sig"], ["presig"]),
    ]
    inputs = [_vi("strokes", FLOAT, ["B", "T", 5]), _vi("lengths", INT64, ["B"])]
    outputs = [_vi("mu", FLOAT, ["B", z_size]), _vi("presig", FLOAT, ["B", z_size])]
    weights = {k: w[k] for k in ("enc_W", "enc_R", "enc_B", "W_mu", "b_mu", "W_sig", "b_sig")}
    weights["flat"] = _const("flat", [0, 2 * enc_size])
    _save(nodes, "encoder", inputs, outputs, weights, path)


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

    w = {
        "W": rand(n_in, 4 * H, scale=0.5 / np.sqrt(n_in)),
        "b": rand(4 * H, scale=0.1),
        "Wy": rand(H, P, scale=0.5 / np.sqrt(H)),
        "by": np.zeros(P, np.float32),
        "Wz": rand(z_size, 2 * H, scale=0.5),
        "bz": rand(2 * H, scale=0.1),
        "enc_W": rand(2, 4 * enc_size, 5, scale=0.5),
        "enc_R": rand(2, 4 * enc_size, enc_size, scale=0.3),
        "enc_B": rand(2, 8 * enc_size, scale=0.1),
        "W_mu": rand(2 * enc_size, z_size, scale=1.0),
        "b_mu": rand(z_size, scale=0.1),
        "W_sig": rand(2 * enc_size, z_size, scale=0.3),
        "b_sig": np.full(z_size, -1.0, np.float32),
    }
    # head bias: pen logits, then pi (spread out), mu_x, mu_y (distinct means), log sigma, rho
    by = w["by"]
    by[0:3] = pen_bias
    by[3 : 3 + M] = np.linspace(1.0, -1.0, M)
    by[3 + M : 3 + 2 * M] = np.linspace(-1.5, 1.5, M)
    by[3 + 2 * M : 3 + 3 * M] = np.linspace(1.0, -0.5, M)
    by[3 + 3 * M : 3 + 5 * M] = -1.0
    by[3 + 5 * M : 3 + 6 * M] = np.linspace(-0.8, 0.8, M)
    if nan:
        by[3] = np.nan

    files = {"decoder_step": "decoder_step.onnx"}
    _decoder_step(directory / files["decoder_step"], kind == "vae", w, H, z_size, P)
    if kind == "vae":
        files.update(encoder="encoder.onnx", decoder_init="decoder_init.onnx")
        _decoder_init(directory / files["decoder_init"], w, H, z_size)
        _encoder(directory / files["encoder"], w, enc_size, z_size)
    info = ModelInfo(
        name=name or f"tiny-{kind}",
        kind=kind,
        cell="lstm",
        dec_size=H,
        num_mixture=M,
        state_size=2 * H,
        scale_factor=scale_factor,
        max_seq_len=max_seq_len,
        enc_size=enc_size if kind == "vae" else 0,
        z_size=z_size if kind == "vae" else 0,
        source="tests/onnx_fixtures.py (random weights)",
        license="Apache-2.0",
        files=files,
    )
    info.save(directory)
    return directory


def random_sketch(rng: np.random.Generator, n: int, scale: float = 10.0) -> np.ndarray:
    """A stroke-3 sketch of n points in pixel units, ending with the pen lifted."""
    s = np.zeros((n, 3), np.float32)
    s[:, :2] = rng.normal(0, scale, (n, 2)).round()
    s[:, 2] = rng.random(n) < 0.2
    s[-1, 2] = 1
    return s
