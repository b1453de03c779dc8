"""A SketchRNN -> the step-wise ONNX graphs of `sketchkit.graphs`, then checked against PyTorch.

The graph table is the only source of tensor names, dtypes and dynamic axes, so what export
writes is what the Triton configs and the runtimes read (optimum's ONNX-config idea without the
class hierarchy). Each graph is checked with `onnx.checker`, then run by onnxruntime on random
inputs of a batch size the export never saw, the decoder step over 50 chained steps, and every
output is compared with PyTorch (optimum's validator, per output by max |a - b| / (1 + |b|)).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from sketchkit.errors import ModelError
from sketchkit.graphs import Graph, Tensor, graphs_for
from sketchkit.io import staging_dir
from sketchkit.modelinfo import ModelInfo
from sketchkit.runtimes.onnx import open_session
from sketchkit.zoo import checkpoint
from sketchkit.zoo.model import SketchRNN
from sketchkit.zoo.runtime_torch import model_info  # noqa: F401 (export builds model.json with it)

OPSET = 17
DYNAMIC = ("B", "T")  # the symbolic dims that stay symbolic in the ONNX file
# max |ort - torch| / (1 + |torch|) allowed per precision; float16 graphs keep
# float32 inputs and outputs, so their error is the float16 rounding of weights and activations
TOLERANCE = {"float32": 1e-4, "float16": 5e-2}
EXPORT_BATCH, EXPORT_T = 2, 12  # dummy shapes traced at export
CHECK_BATCH, CHECK_T, CHECK_STEPS = 3, 9, 50  # different shapes for the check, as optimum does

# checkpoint metadata that becomes model.json fields
CHECKPOINT_META = (
    "name",
    "scale_factor",
    "max_seq_len",
    "start_token",
    "temperature_rule",
    "source",
    "license",
    "metrics",
)

Progress = Callable[[str], None]


class GraphModule(nn.Module):
    """One graph of the table as a module whose positional inputs are the graph's inputs."""

    def __init__(self, model: SketchRNN, graph: Graph):
        super().__init__()
        self.model, self.graph = model, graph
        self.names = [t.name for t in graph.inputs]
        # eval mode (no dropout); a new module starts in training mode, and torch.onnx.export
        # restores the wrapper's mode onto the model after tracing
        self.eval()

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = dict(zip(self.names, inputs, strict=True))
        if self.graph.name == "encoder":
            return self.model.encode(x["strokes"], x["lengths"])
        if self.graph.name == "decoder_init":
            return (self.model.init_state(x["z"]),)
        return self.model.step(x["prev"], x.get("z"), x["state"])


def dynamic_axes(graph: Graph) -> dict[str, dict[int, str]]:
    """{tensor name: {axis: symbolic name}} for torch.onnx.export, read from the graph table."""
    return {
        t.name: {i: d for i, d in enumerate(t.dims) if d in DYNAMIC} for t in graph.inputs + graph.outputs
    }


# ---------------------------------------------------------------------------------------------
# random inputs that look like the real ones


def _random_input(t: Tensor, info: ModelInfo, batch: int, T: int, rng: np.random.Generator) -> np.ndarray:
    dims = [
        batch if d == "B" else T if d == "T" else int(d) if d.isdigit() else info.sizes[d] for d in t.dims
    ]
    if t.name == "lengths":  # the longest fills T; the rest are shorter (padding must not leak)
        return np.concatenate([[T], rng.integers(1, T + 1, batch - 1)]).astype(np.int64)
    x = rng.standard_normal(dims).astype(np.float32)
    if t.name in ("strokes", "prev"):  # stroke-5: offsets, then a one-hot pen state
        pen = rng.integers(0, 3, dims[:-1])
        x[..., 2:] = np.eye(3, dtype=np.float32)[pen]
    if t.name == "state":
        x *= 0.5
    return x


def _session(path: Path) -> ort.InferenceSession:
    return open_session(path, threads=1)  # the check runs small batches; one thread is plenty


# ---------------------------------------------------------------------------------------------
# export


def _stamp_shapes(proto: onnx.ModelProto, graph: Graph, sizes: dict[str, int]) -> None:
    """Write the table's shapes on the graph's inputs and outputs: the exporter leaves outputs
    with made-up symbols (`Concatnext_state_dim_1`) where the contract has a fixed size."""
    tensors = {t.name: t for t in graph.inputs + graph.outputs}
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        for dim, symbol in zip(dims, tensors[value.name].dims, strict=True):
            if symbol in DYNAMIC:
                dim.dim_param = symbol
            else:
                dim.dim_value = int(symbol) if symbol.isdigit() else sizes[symbol]


def _export_graph(model: SketchRNN, info: ModelInfo, graph: Graph, path: Path, fp16: bool) -> None:
    rng = np.random.default_rng(0)
    dummy = tuple(torch.from_numpy(_random_input(t, info, EXPORT_BATCH, EXPORT_T, rng)) for t in graph.inputs)
    with torch.no_grad(), warnings.catch_warnings():
        # the legacy exporter's deprecation notices, its tracer's warnings (nn.LSTM compares its
        # input size with a traced shape) and its warning that an LSTM exported at batch 2 may
        # fail at other batch sizes: `validate` runs other batch and time sizes and checks
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        torch.onnx.export(
            GraphModule(model, graph),
            dummy,
            str(path),
            input_names=[t.name for t in graph.inputs],
            output_names=[t.name for t in graph.outputs],
            dynamic_axes=dynamic_axes(graph),
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,  # the TorchScript exporter: simple and robust with dynamic axes
        )
    proto = onnx.load(str(path))
    _stamp_shapes(proto, graph, info.sizes)
    if fp16:
        # float16 weights and arithmetic inside; inputs and outputs stay float32 (the contract)
        import onnx_ir
        from onnx_ir.passes.common import TopologicalSortPass
        from onnxruntime.transformers.float16 import convert_float_to_float16

        proto = convert_float_to_float16(proto, keep_io_types=True)
        # the converter can leave its input casts after their users (seen with `If` nodes)
        ir_model = onnx_ir.from_proto(proto)
        TopologicalSortPass()(ir_model)
        proto = onnx_ir.to_proto(ir_model)
    proto.graph.doc_string = f"sketchkit {info.name}: {graph.name} (see sketchkit.graphs)"
    onnx.save(proto, str(path))
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise ModelError(f"{path.name}: ONNX checker failed: {str(e).splitlines()[0]}") from None


def validate(
    model: SketchRNN, directory: Path, info: ModelInfo, steps: int = CHECK_STEPS, seed: int = 0
) -> dict[str, float]:
    """Max difference |ort - torch| / (1 + |torch|), onnxruntime vs PyTorch, per "graph/output", on
    random inputs of batch CHECK_BATCH; the decoder step is chained `steps` times, each side feeding
    its own state. Relative where values are large (mixture parameters reach tens; float32 sums
    differ by CPU, AVX2 vs AVX-512), absolute near zero."""
    rng = np.random.default_rng(seed)
    graphs = {g.name: g for g in graphs_for(info.dims.kind)}
    sessions = {name: _session(directory / info.files[name]) for name in graphs}
    diffs: dict[str, float] = {}

    def run(
        name: str, feed: dict[str, np.ndarray], feed_ort: dict[str, np.ndarray] | None = None
    ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Both sides on `feed` (onnxruntime on `feed_ort` if given); records the max difference."""
        g = graphs[name]
        with torch.no_grad():
            ref = [
                r.numpy() for r in GraphModule(model, g)(*(torch.from_numpy(feed[t.name]) for t in g.inputs))
            ]
        got = sessions[name].run([t.name for t in g.outputs], feed_ort or feed)
        for t, r, o in zip(g.outputs, ref, got, strict=True):
            if o.shape != r.shape or o.dtype != np.dtype(t.dtype):
                raise ModelError(
                    f"{name}: output {t.name} is {o.dtype}{list(o.shape)}, expected {t.dtype}{list(r.shape)}"
                )
            key = f"{name}/{t.name}"
            diffs[key] = max(diffs.get(key, 0.0), float((np.abs(o - r) / (1 + np.abs(r))).max()))
        return ref, got

    def sample(name: str) -> dict[str, np.ndarray]:
        return {t.name: _random_input(t, info, CHECK_BATCH, CHECK_T, rng) for t in graphs[name].inputs}

    z = None
    if info.dims.vae:
        run("encoder", sample("encoder"))
        z = rng.standard_normal((CHECK_BATCH, info.dims.z_size)).astype(np.float32)
        (state_ref,), (state_ort,) = run("decoder_init", {"z": z})
    else:
        state_ref = state_ort = np.zeros((CHECK_BATCH, info.dims.state_size), np.float32)
    for _ in range(steps):  # two chains: each side is fed its own previous state
        feed = {"prev": sample("decoder_step")["prev"], **({"z": z} if z is not None else {})}
        (_, state_ref), (_, state_ort) = run(
            "decoder_step", dict(feed, state=state_ref), dict(feed, state=state_ort)
        )
    return diffs


# ---------------------------------------------------------------------------------------------
# the whole model directory


def export_model(
    model: SketchRNN,
    info: ModelInfo,
    out_dir: str | os.PathLike[str],
    fp16: bool = False,
    progress: Progress | None = None,
) -> tuple[ModelInfo, dict[str, float]]:
    """Write OUT_DIR = the graphs of `info.dims.kind` + model.json, after checking each graph and the
    onnxruntime/PyTorch parity; returns the written ModelInfo and the max difference per output.
    Raises ModelError (and writes nothing) when a graph fails the check or the tolerance."""
    say = progress or (lambda _: None)
    model = model.float().eval()
    precision = "float16" if fp16 else "float32"
    tol = TOLERANCE[precision]
    graphs = graphs_for(info.dims.kind)
    info = dataclasses.replace(info, precision=precision, files={g.name: f"{g.name}.onnx" for g in graphs})
    out_dir = Path(out_dir)
    with staging_dir(out_dir) as tmp:
        for g in graphs:
            say(f"exporting {g.name}.onnx ({precision}, opset {OPSET})")
            _export_graph(model, info, g, tmp / info.files[g.name], fp16)
        say(f"checking against PyTorch: batch {CHECK_BATCH}, {CHECK_STEPS} chained decoder steps")
        diffs = validate(model, tmp, info)
        for key, d in diffs.items():
            say(f"  {key:<28} max diff {d:.2e}" + ("" if d <= tol else f"  > tolerance {tol:g}"))
        bad = {k: d for k, d in diffs.items() if d > tol}
        if bad:
            worst = max(bad, key=bad.__getitem__)
            raise ModelError(
                f"ONNX output {worst} differs from PyTorch by {bad[worst]:.2e} (tolerance {tol:g} for {precision})"
            )
        info.save(tmp)
    say(f"wrote {out_dir}")
    return info, diffs


def export_checkpoint(
    path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    fp16: bool = False,
    name: str | None = None,
    progress: Progress | None = None,
) -> tuple[ModelInfo, dict[str, float]]:
    """A checkpoint (`sketchkit.zoo.checkpoint`) -> OUT_DIR; see `export_model`. The model's name is
    `name`, else the checkpoint's, else its first dataset's file name."""
    path = Path(path)
    model, hp, meta = checkpoint.load(path)
    if not isinstance(meta.get("scale_factor"), (int, float)):
        raise ModelError(f"{path}: checkpoint has no scale_factor")
    fields = {
        k: meta[k] for k in CHECKPOINT_META if k in meta and k not in ("name", "scale_factor", "max_seq_len")
    }
    if "start_token" in fields:
        fields["start_token"] = tuple(float(x) for x in fields["start_token"])
    fields.setdefault("source", path.name)
    default_name = Path(hp.dataset[0]).stem if hp.dataset else path.stem
    info = model_info(
        model,
        name or meta.get("name") or default_name,
        meta["scale_factor"],
        meta.get("max_seq_len", hp.max_seq_len),
        **fields,
    )
    return export_model(model, info, out_dir, fp16=fp16, progress=progress)
