"""Magenta JSON -> our step-wise ONNX graphs, built from the numpy weights with `onnx.helper`.

No PyTorch: the graphs are written node by node from the TensorFlow LSTM's maths, honouring the
contract in `sketchkit.graphs` (tensor names, dtypes, dynamic B and T, the packed [h | c] state),
so the sampler and the Triton repositories cannot tell them from `sketchkit.export.magenta`'s, which traces
a PyTorch model and stays the reference in the tests.

TF LSTM (gates (i, j, f, o) along 4H, forget bias +1 inside the cell):
    i, j, f, o = [x | h] W + b
    c' = sigmoid(f + 1) c + sigmoid(i) tanh(j)        h' = sigmoid(o) tanh(c')
The decoder step is plain nodes in the order of the traced PyTorch step (`decoder_step`: the
numbers come out identical); the encoder is ONNX's bidirectional `LSTM` op, whose
`sequence_lens` stops each direction at the sketch's own length (`encoder`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sketchkit.errors import printable
from sketchkit.graphs import Graph, Tensor, graphs_for
from sketchkit.io import staging_dir
from sketchkit.magenta import DEFAULT_START, FORGET_BIAS, MagentaModel, magenta_info, read_magenta, torch_lstm
from sketchkit.modelinfo import ModelInfo

OPSET = 17
IR_VERSION = 8  # what onnxruntime >= 1.17 reads
_ELEM = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}

Progress = Callable[[str], None]


def _gates(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A TF [.., 4H] block split into its (i, j, f, o) gates."""
    i, j, f, o = np.split(w, 4, axis=-1)
    return i, j, f, o


class _Graph:
    """Nodes and initializers of one graph under construction; names are made unique here."""

    def __init__(self, graph: Graph, sizes: dict[str, int]):
        self.graph, self.sizes = graph, sizes
        self.nodes: list[onnx.NodeProto] = []
        self.weights: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.weights.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], outputs: int | list[str] = 1, **attrs: Any) -> list[str]:
        """Append a node; returns its output names (fresh ones unless given)."""
        if isinstance(outputs, int):
            outputs = [f"{op_type.lower()}_{len(self.nodes)}_{k}" for k in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, **attrs))
        return outputs

    def _value(self, t: Tensor) -> onnx.ValueInfoProto:
        dims = [d if d in ("B", "T") else int(d) if d.isdigit() else self.sizes[d] for d in t.dims]
        return helper.make_tensor_value_info(t.name, _ELEM[t.dtype], dims)

    def model(self, doc: str) -> onnx.ModelProto:
        g = helper.make_graph(
            self.nodes,
            self.graph.name,
            [self._value(t) for t in self.graph.inputs],
            [self._value(t) for t in self.graph.outputs],
            self.weights,
            doc_string=doc,
        )
        model = helper.make_model(
            g,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name="sketchkit",
        )
        onnx.checker.check_model(model, full_check=True)
        return model


# ---------------------------------------------------------------------------------------------
# the three graphs


def decoder_step(mm: MagentaModel, info: ModelInfo) -> onnx.ModelProto:
    """prev [B, 5] (, z [B, Nz]), state [B, 2H] = [h | c] -> params [B, 6M+3], next_state.

    The same arithmetic, in the same order, as the graph `sketchkit.export.onnx` traces from PyTorch's
    LSTM step (x W_ih^T + b, then + h W_hh^T; gates (i, f, g, o)), so the two importers' graphs
    give the same numbers, not merely close ones."""
    w, H = mm.weights, mm.dims.dec_size
    W_ih, W_hh, bias = torch_lstm(w["dec_W_xh"], w["dec_W_hh"], w["dec_bias"])
    b = _Graph(graphs_for(info.dims.kind)[-1], info.sizes)
    h, c = b.op("Split", ["state", b.const("split_state", np.array([H, H], np.int64))], 2, axis=1)
    x = b.op("Concat", ["prev", "z"], axis=1)[0] if mm.dims.vae else "prev"
    (xw,) = b.op("Gemm", [x, b.const("W_ih", W_ih), b.const("b", bias)], transB=1)
    (hw,) = b.op("MatMul", [h, b.const("W_hh", W_hh.T)])
    # Sum, not Add: onnxruntime would fuse MatMul + Add into one Gemm, whose other rounding
    # would set these graphs ~1e-6 apart from the traced ones at every step
    (gates,) = b.op("Sum", [xw, hw])
    gi, gf, gg, go = b.op("Split", [gates], 4, axis=1)
    si, sf, so = (b.op("Sigmoid", [g])[0] for g in (gi, gf, go))
    (tg,) = b.op("Tanh", [gg])
    (keep,) = b.op("Mul", [sf, c])
    (write,) = b.op("Mul", [si, tg])
    (c_next,) = b.op("Add", [keep, write])
    (tc,) = b.op("Tanh", [c_next])
    (h_next,) = b.op("Mul", [so, tc])
    head_w, head_b = b.const("head_W", w["dec_output_w"].T), b.const("head_b", w["dec_output_b"])
    b.op("Gemm", [h_next, head_w, head_b], ["params"], transB=1)
    b.op("Concat", [h_next, c_next], ["next_state"], axis=1)
    return b.model(f"sketchkit {info.name}: decoder_step (see sketchkit.graphs)")


def decoder_init(mm: MagentaModel, info: ModelInfo) -> onnx.ModelProto:
    """z [B, Nz] -> state [B, 2H] = tanh(W z' + b) with Magenta's (c, h) halves swapped to
    [h | c]; z' = tanh(z) for files of version < 6 (`MagentaModel.tanh_z`)."""
    w, H = mm.weights, mm.dims.dec_size
    b = _Graph(graphs_for("vae")[1], info.sizes)
    kernel = b.const("init_W", np.concatenate([w["init_w"][:, H:], w["init_w"][:, :H]], axis=1).T)
    bias = b.const("init_b", np.concatenate([w["init_b"][H:], w["init_b"][:H]]))
    z = b.op("Tanh", ["z"])[0] if mm.dims.tanh_z else "z"
    (pre,) = b.op("Gemm", [z, kernel, bias], transB=1)
    b.op("Tanh", [pre], ["state"])
    return b.model(f"sketchkit {info.name}: decoder_init (see sketchkit.graphs)")


def _onnx_lstm(mm: MagentaModel, prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A TF LSTM as the ONNX LSTM op's W [4E, in], R [4E, E], B [8E]: gates (i, o, f, c=j),
    the forget bias folded into Wb (Rb is zero)."""
    w = mm.weights
    i, j, f, o = _gates(w[f"{prefix}W_xh"])
    ri, rj, rf, ro = _gates(w[f"{prefix}W_hh"])
    bi, bj, bf, bo = _gates(w[f"{prefix}bias"])
    W = np.concatenate([i, o, f, j], axis=1).T
    R = np.concatenate([ri, ro, rf, rj], axis=1).T
    B = np.concatenate([bi, bo, bf + FORGET_BIAS, bj, np.zeros(4 * bi.shape[0], np.float32)])
    return W, R, B


def encoder(mm: MagentaModel, info: ModelInfo) -> onnx.ModelProto:
    """strokes [B, T, 5], lengths [B] -> mu, presig [B, Nz] from [h_fw | h_bw], the final states
    of the two directions over each sketch's real points (Eq. 1-2)."""
    w, E = mm.weights, mm.dims.enc_size
    fw, bw = _onnx_lstm(mm, "enc_fw_"), _onnx_lstm(mm, "enc_bw_")
    b = _Graph(graphs_for("vae")[0], info.sizes)
    W, R, B = (
        b.const(n, np.stack([a, c])) for n, a, c in zip(("enc_W", "enc_R", "enc_B"), fw, bw, strict=True)
    )
    (x,) = b.op("Transpose", ["strokes"], perm=[1, 0, 2])  # [T, B, 5]
    one = b.const("one", np.array(1, np.int64))
    (n,) = b.op("Max", ["lengths", one])  # as the PyTorch encoder: an empty sketch counts as one point
    (lens,) = b.op("Cast", [n], to=TensorProto.INT32)
    _, h_n = b.op("LSTM", [x, W, R, B, lens], 2, direction="bidirectional", hidden_size=E)  # h_n [2, B, E]
    (hb,) = b.op("Transpose", [h_n], perm=[1, 0, 2])  # [B, 2, E]
    (h,) = b.op("Reshape", [hb, b.const("flat", np.array([0, 2 * E], np.int64))])  # [B, 2E] = [fw | bw]
    for head in ("mu", "presig"):
        b.op(
            "Gemm",
            [h, b.const(f"{head}_W", w[f"enc_{head}_w"]), b.const(f"{head}_b", w[f"enc_{head}_b"])],
            [head],
        )
    return b.model(f"sketchkit {info.name}: encoder (see sketchkit.graphs)")


BUILDERS = {"encoder": encoder, "decoder_init": decoder_init, "decoder_step": decoder_step}


# ---------------------------------------------------------------------------------------------
# the whole import


def import_magenta(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    name: str | None = None,
    fp16: bool = False,
    source: str | None = None,
    progress: Progress | None = None,
    start_token: tuple[float, ...] = DEFAULT_START,
) -> ModelInfo:
    """Magenta JSON -> OUT_DIR (graphs + model.json), torch-free. The start token is the legacy
    sketch-rnn-js zeros (`sketchkit.magenta.DEFAULT_START`, the better of the two by CAS recall and
    never-ending fraction over the 40 models, benchmarks/RESULTS.md) unless given; a bad file
    raises a one-line ModelError and nothing is written."""

    def say(line: str) -> None:  # the file's name and the JSON's own name are untrusted
        if progress:
            progress(printable(line))

    mm = read_magenta(path)
    say(f"read {mm.source}: {mm.summary}")
    info = magenta_info(mm, name=name, source=source, start_token=start_token)  # validated (name included) before any directory
    with staging_dir(out_dir) as tmp:
        info = save_graphs(mm, info, tmp, fp16, say)
    say(f"wrote {out_dir}")
    return info


def save_graphs(
    mm: MagentaModel, info: ModelInfo, directory: Path, fp16: bool = False, progress: Progress | None = None
) -> ModelInfo:
    """Write the graphs of `info.dims.kind` and model.json into `directory`; returns the ModelInfo
    written (its precision and files filled in)."""
    say = progress or (lambda _: None)
    graphs = graphs_for(info.dims.kind)
    precision = "float16" if fp16 else "float32"
    info = dataclasses.replace(info, precision=precision, files={g.name: f"{g.name}.onnx" for g in graphs})
    for g in graphs:
        say(f"building {g.name}.onnx ({precision}, opset {OPSET})")
        model = BUILDERS[g.name](mm, info)
        onnx.save(to_float16(model) if fp16 else model, str(directory / info.files[g.name]))
    info.save(directory)
    return info


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """float16 weights and arithmetic inside; inputs and outputs stay float32 (the contract)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return convert_float_to_float16(model, keep_io_types=True)
