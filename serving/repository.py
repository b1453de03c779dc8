"""Triton model repositories as data: one Triton model per graph, generated from the tensor table
in `sketchkit.graphs` and each model's model.json (no tensor name is written by hand here).

    REPO/<name>_encoder/                 vae only
    REPO/<name>_decoder_init/            vae only
    REPO/<name>_decoder_step/            stateless step: the state travels with each request
        config.pbtxt                     (carries model.json as the parameter "sketchkit_model_info")
        1/model.onnx                     the exported graph, byte for byte
        1/model.py                       cpu flavor: templates/python_onnx/model.py
    REPO/<name>_decoder_step_stateful/   server-held state (see `stateful_step_onnx`)
    REPO/<name>_generate/                one request in, finished sketches out (continuous batching)
        config.pbtxt                     inputs/outputs from `sketchkit.wire`
        1/model.py                       templates/python_generate/model.py (both flavors)
        1/model.json, 1/*.onnx           the model directory, byte for byte

<name> is the name the model was asked for, made Triton-safe (`sketchkit.names.safe_name`:
`owl` -> `owl_*`, `magenta/owl.gen` -> `magenta-owl.gen_*`), or the one given with `names`.

Flavors: `gpu` serves model.onnx with the onnxruntime backend (NGC container, KIND_GPU, implicit
state for the stateful step); `cpu` runs the same files with onnxruntime inside a Python-backend
model.py, which is all the tritonserver in the nvidia-pytriton wheel can load.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from sketchkit.errors import ModelError, SketchkitError
from sketchkit.graphs import Graph, Tensor, concrete_dims, graphs_for
from sketchkit.io import atomic_directory
from sketchkit.modelinfo import ModelInfo
from sketchkit.names import check_name, safe_name
from sketchkit.wire import (
    CONTROL_START,
    GENERATE,
    INFO_PARAMETER,
    REQUIRED,
    STATE_IN,
    STATE_OUT,
    STATEFUL_STEP,
    inputs_for,
    outputs_for,
    stateful_graph,
    triton_name,
)

if TYPE_CHECKING:
    from tritonclient.grpc import model_config_pb2

TEMPLATES = Path(__file__).parent / "templates"
MARKER = ".sketchkit-repository"  # written into every repository we build: --force replaces only these
FLAVORS = ("cpu", "gpu")
ACCELERATORS = ("none", "tensorrt", "tensorrt-fp16")
_TYPES = {"float32": "TYPE_FP32", "int64": "TYPE_INT64", "int32": "TYPE_INT32", "bool": "TYPE_BOOL",
          "bytes": "TYPE_STRING"}


# generate's caps by flavor. cpu: a step of 1024 rows already takes tens of ms on two cores.
# gpu: an H200 steps 32768 rows of an LSTM 512 in about a millisecond, with the rows kept on the
# device (sketchkit.rows), so a step takes every row in flight; twice that may wait (serving/README.md)
FLAVOR_DEFAULTS = {
    "cpu": {"max_sketches_per_request": 256, "max_sketches_in_flight": 4096, "max_rows_per_step": 1024},
    "gpu": {"max_sketches_per_request": 4096, "max_sketches_in_flight": 65536, "max_rows_per_step": 32768},
}

MAX_SEQUENCE_IDLE_S = 86400  # a day: an idle sequence holds its state until then


@dataclass(frozen=True)
class RepoOptions:
    """How the models are served; the defaults suit sketch sampling (small batches, many steps)."""

    flavor: str = "cpu"
    max_batch_size: int = 256  # rows per execution; the client splits bigger batches
    queue_delay_us: int = 200  # how long the dynamic batcher waits to merge steps of other clients
    instances: int = 1  # model instances per device (cpu: per server)
    accelerator: str = "none"  # gpu: ORT's TensorRT execution provider ("tensorrt-fp16": FP16)
    cuda_graphs: bool = False  # gpu + tensorrt: capture CUDA graphs (trt_cuda_graph_enable)
    engine_cuda_graphs: bool = True  # gpu: generate steps its rows as captured CUDA graphs (GraphRows)
    stateful: bool = True  # also build <name>_decoder_step_stateful
    sequence_idle_s: float = 60.0  # a stateful sequence idle this long is dropped (Triton's default: 1 s)
    max_sequences: int = 1024  # stateful sequences in flight per instance before Triton backlogs new ones
    generate: bool = True  # also build <name>_generate
    # generate's caps: None takes the flavor's default (FLAVOR_DEFAULTS: a GPU step wants big batches)
    max_sketches_per_request: int | None = None  # a request's n above this is an error
    max_sketches_in_flight: int | None = None  # queued + running sketches; beyond, "busy" errors
    max_rows_per_step: int | None = None  # rows of one graph evaluation; the rest wait their turn
    max_len: int = 1000  # generate: a request's max_len (and prefix length) above this is an error
    engines: int = 1  # generate: engines stepped by their own threads (a request goes to the least loaded)
    intra_op_threads: int = 2  # generate: onnxruntime intra-op threads (each engine's evaluations)
    max_sequence_rows: int = 4096  # stateful, cpu: rows one sequence may hold
    max_state_bytes: int = 1 << 30  # stateful, cpu: state all sequences together may hold

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise SketchkitError(f"unknown flavor {self.flavor!r} (choose {' or '.join(FLAVORS)})")
        for key, value in FLAVOR_DEFAULTS[self.flavor].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        if self.accelerator not in ACCELERATORS:
            raise SketchkitError(
                f"unknown accelerator {self.accelerator!r} (choose {', '.join(ACCELERATORS)})"
            )
        if self.flavor == "cpu" and (self.accelerator != "none" or self.cuda_graphs):
            raise SketchkitError("TensorRT and CUDA graphs are gpu-flavor settings")
        if self.cuda_graphs and self.accelerator == "none":
            raise SketchkitError("CUDA graphs need the TensorRT accelerator (--accelerator tensorrt[-fp16])")
        if (
            self.max_batch_size < 1
            or self.instances < 1
            or self.queue_delay_us < 0
            or not 0 < self.sequence_idle_s <= MAX_SEQUENCE_IDLE_S  # also NaN: Triton takes microseconds, uint64
            or min(self.max_sketches_per_request or 0, self.max_sketches_in_flight or 0, self.max_rows_per_step or 0, self.max_len) < 1
            or min(self.engines, self.intra_op_threads) < 1
            or self.max_sequence_rows < 1
            or self.max_state_bytes < 1
        ):
            raise SketchkitError(
                "max batch size, instances, engines, threads and the caps must be >= 1, delays >= 0, "
                f"the sequence idle time in (0, {MAX_SEQUENCE_IDLE_S}] s"
            )


# ---------------------------------------------------------------------------------------------
# config.pbtxt as a ModelConfig protobuf


def _pb():
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _io(msg, t: Tensor, sizes: dict[str, int], batched: bool) -> None:
    """Fill a ModelInput/ModelOutput: Triton's dims leave out the batch axis when batching."""
    dims = concrete_dims(t, sizes)
    msg.name = t.name
    msg.data_type = _pb().DataType.Value(_TYPES[t.dtype])
    if batched:
        dims = dims[1:]
        if not dims:  # a [B] tensor: [1] on the wire, [] per row inside the batch
            dims = [1]
            msg.reshape.SetInParent()
    msg.dims.extend(dims)


def _base(
    name: str, graph: Graph, info: ModelInfo, opts: RepoOptions, batched: bool
) -> model_config_pb2.ModelConfig:
    pb = _pb()
    cfg = pb.ModelConfig(name=name, max_batch_size=opts.max_batch_size if batched else 0)
    cfg.backend = "onnxruntime" if opts.flavor == "gpu" else "python"
    for t in graph.inputs:
        _io(cfg.input.add(), t, info.sizes, batched)
    for t in graph.outputs:
        _io(cfg.output.add(), t, info.sizes, batched)
    kind = pb.ModelInstanceGroup.KIND_GPU if opts.flavor == "gpu" else pb.ModelInstanceGroup.KIND_CPU
    cfg.instance_group.add(count=opts.instances, kind=kind)
    if opts.flavor == "gpu" and opts.accelerator != "none":
        _tensorrt(cfg, graph, info, opts)
    return cfg


def _tensorrt(cfg, graph: Graph, info: ModelInfo, opts: RepoOptions) -> None:
    """ORT's TensorRT EP with an engine cache and one optimisation profile over the batch sizes
    (and stroke lengths) this model will see."""
    acc = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
    acc.parameters["precision_mode"] = "FP16" if opts.accelerator == "tensorrt-fp16" else "FP32"
    acc.parameters["max_workspace_size_bytes"] = str(1 << 30)
    acc.parameters["trt_engine_cache_enable"] = "1"
    acc.parameters["trt_engine_cache_path"] = f"/tmp/sketchkit-trt/{cfg.name}"
    B, T = opts.max_batch_size, info.max_seq_len
    free = {"B": (1, min(64, B), B), "T": (1, min(64, T), T), "K": (1, min(64, B), B)}
    inputs = list(graph.inputs)
    if graph.name == STATEFUL_STEP:  # the graph also reads the control and the implicit state
        inputs += [Tensor(CONTROL_START, "int32", ("1",)), Tensor(STATE_IN, "float32", ("K", "S"))]
    for i, key in enumerate(("trt_profile_min_shapes", "trt_profile_opt_shapes", "trt_profile_max_shapes")):
        shapes = []
        for t in inputs:
            dims = [
                free[d][i] if d in free else n
                for d, n in zip(t.dims, concrete_dims(t, info.sizes), strict=True)
            ]
            shapes.append(f"{t.name}:{'x'.join(map(str, dims))}")
        acc.parameters[key] = ",".join(shapes)
    if opts.cuda_graphs:
        acc.parameters["trt_cuda_graph_enable"] = "1"


def graph_config(name: str, graph: Graph, info: ModelInfo, opts: RepoOptions) -> model_config_pb2.ModelConfig:
    """A stateless graph: batched along B, with the dynamic batcher merging other clients' steps."""
    cfg = _base(triton_name(name, graph.name), graph, info, opts, batched=True)
    cfg.dynamic_batching.max_queue_delay_microseconds = opts.queue_delay_us
    if graph.name == "decoder_step":  # every kind has one: the client reads model.json from it
        cfg.parameters[INFO_PARAMETER].string_value = info.to_json()
    return cfg


def stateful_config(name: str, info: ModelInfo, opts: RepoOptions) -> model_config_pb2.ModelConfig:
    """The decoder step with the recurrent state kept on the server, one sequence per generation.

    `max_batch_size: 0`: a sequence carries a whole [B, ...] batch (one request per step however
    many sketches), where a batched sequence model would take batch-1 requests, one sequence per
    sketch. gpu: Triton's implicit state (onnxruntime backend) feeds `state` and stores
    `next_state`. cpu: the Python backend cannot do implicit state, so model.py keeps it in a dict
    keyed by the correlation id (END or `sequence_idle_s` frees it)."""
    pb = _pb()
    graph = stateful_graph(info.dims.kind)
    cfg = _base(triton_name(name, STATEFUL_STEP), graph, info, opts, batched=False)
    seq = cfg.sequence_batching
    seq.max_sequence_idle_microseconds = int(opts.sequence_idle_s * 1e6)
    seq.oldest.max_candidate_sequences = opts.max_sequences
    kinds = pb.ModelSequenceBatching.Control
    controls = [(CONTROL_START, kinds.CONTROL_SEQUENCE_START)]
    if opts.flavor == "cpu":
        controls += [("END", kinds.CONTROL_SEQUENCE_END), ("CORRID", kinds.CONTROL_SEQUENCE_CORRID)]
    for name, kind in controls:
        ctl = seq.control_input.add(name=name).control.add(kind=kind)
        if kind == kinds.CONTROL_SEQUENCE_CORRID:
            ctl.data_type = pb.TYPE_UINT64
        else:
            ctl.int32_false_true.extend([0, 1])
    state_dims = [-1, info.dims.state_size]  # [rows of the sequence's batch, S]
    if opts.flavor == "gpu":
        st = seq.state.add(
            input_name=STATE_IN, output_name=STATE_OUT, data_type=pb.TYPE_FP32, dims=state_dims
        )
        st.initial_state.add(name="zeros", data_type=pb.TYPE_FP32, dims=[1, info.dims.state_size], zero_data=True)
    else:
        cfg.parameters["state_input"].string_value = STATE_IN
        cfg.parameters["state_output"].string_value = STATE_OUT
        cfg.parameters["state_size"].string_value = str(info.dims.state_size)
        cfg.parameters["idle_seconds"].string_value = str(opts.sequence_idle_s)
        cfg.parameters["max_rows"].string_value = str(opts.max_sequence_rows)
        cfg.parameters["max_state_bytes"].string_value = str(opts.max_state_bytes)
    return cfg


def generate_config(name: str, info: ModelInfo, opts: RepoOptions) -> model_config_pb2.ModelConfig:
    """`<name>_generate`: a Python-backend model (both flavors) that runs the whole sampling loop
    for many requests at once (templates/python_generate/model.py). `max_batch_size: 0`: a
    request carries its own n; the engine, not Triton's batcher, merges requests."""
    pb = _pb()
    cfg = pb.ModelConfig(name=triton_name(name, GENERATE), max_batch_size=0, backend="python")
    sizes = info.sizes | {"n": -1, "L": -1}
    for t in inputs_for(info):
        _io(cfg.input.add(optional=t.name not in REQUIRED), t, sizes, batched=False)
    for t in outputs_for(info):
        _io(cfg.output.add(), t, sizes, batched=False)
    kind = pb.ModelInstanceGroup.KIND_GPU if opts.flavor == "gpu" else pb.ModelInstanceGroup.KIND_CPU
    cfg.instance_group.add(count=1, kind=kind)  # one engine per model: it batches every request
    for key in ("max_sketches_per_request", "max_sketches_in_flight", "max_rows_per_step", "max_len", "engines",
                "intra_op_threads"):  # fmt: skip
        cfg.parameters[key].string_value = str(getattr(opts, key))
    cfg.parameters["cuda_graphs"].string_value = "1" if opts.flavor == "gpu" and opts.engine_cuda_graphs else "0"
    return cfg


def to_text(cfg: model_config_pb2.ModelConfig) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(cfg)


def read_config(path: str | os.PathLike[str]) -> model_config_pb2.ModelConfig:
    """Parse a config.pbtxt into Triton's own ModelConfig protobuf (a typo'd field fails here)."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(Path(path).read_text(), _pb().ModelConfig())
    except text_format.ParseError as e:
        raise ModelError(f"{path}: not a Triton model config ({e})") from None


# ---------------------------------------------------------------------------------------------
# the stateful step graph


def stateful_step_onnx(model_dir: Path, info: ModelInfo, out: Path) -> None:
    """decoder_step (and decoder_init) wrapped for server-held state (`stateful_graph`):

        state' = START ? init : Gather(state, rows)      init = decoder_init(z) | zeros
        params, next_state = decoder_step(prev, z, state')

    `rows` picks the previous step's rows that go on (the sampler drops finished sketches, and
    `complete` repeats one row k times), so the stored batch follows the client's. At START the
    state input is Triton's 1-row placeholder and `rows` is all zeros. One graph file serves both
    flavors: Triton's implicit state (gpu) and model.py's dict (cpu) feed it alike."""
    import numpy as np

    try:
        import onnx
        from onnx import compose, helper, numpy_helper
    except ModuleNotFoundError:
        raise SketchkitError(
            "the stateful step is built with the onnx package: pip install onnx (or --no-stateful)"
        ) from None

    step = onnx.load(str(model_dir / info.files["decoder_step"]))
    nodes, inits = [], []
    step = compose.add_prefix(step, "step/", rename_inputs=False, rename_outputs=False)
    if info.dims.vae:
        init = compose.add_prefix(
            onnx.load(str(model_dir / info.files["decoder_init"])), "init/", rename_inputs=False
        )
        nodes += init.graph.node
        inits += init.graph.initializer
        initial = "init/state"
    else:  # zeros [B, S], B from prev
        nodes += [
            helper.make_node("Shape", ["prev"], ["wrap/prev_shape"], end=1),
            helper.make_node("Concat", ["wrap/prev_shape", "wrap/S"], ["wrap/zeros_shape"], axis=0),
            helper.make_node("ConstantOfShape", ["wrap/zeros_shape"], ["wrap/zeros"],
                             value=numpy_helper.from_array(np.zeros(1, np.float32))),
        ]  # fmt: skip
        inits.append(numpy_helper.from_array(np.array([info.dims.state_size], np.int64), "wrap/S"))
        initial = "wrap/zeros"
    nodes += [
        helper.make_node("Gather", [STATE_IN, "rows"], ["wrap/gathered"], axis=0),
        helper.make_node("Cast", [CONTROL_START], ["wrap/start"], to=onnx.TensorProto.BOOL),
        helper.make_node("Where", ["wrap/start", initial, "wrap/gathered"], ["wrap/state"]),
    ]
    # the step reads the selected state instead of its `state` input
    for node in step.graph.node:
        node.input[:] = ["wrap/state" if x == STATE_IN else x for x in node.input]
    # (decoder_init runs on every step, as Where takes both branches: Nz x S multiply-adds per
    # row, small next to the LSTM's (5 + Nz + H) x 4H)
    nodes += step.graph.node
    inits += step.graph.initializer
    graph = stateful_graph(info.dims.kind)
    tensors = {t.name: t for t in (*graph.inputs, *graph.outputs)}
    elem = {"float32": onnx.TensorProto.FLOAT, "int64": onnx.TensorProto.INT64}

    def vi(name: str) -> onnx.ValueInfoProto:
        t = tensors[name]
        dims = [d if n < 0 else n for d, n in zip(t.dims, concrete_dims(t, info.sizes), strict=True)]
        return helper.make_tensor_value_info(name, elem[t.dtype], dims)

    inputs = [vi(t.name) for t in graph.inputs]
    inputs += [
        helper.make_tensor_value_info(CONTROL_START, onnx.TensorProto.INT32, [1]),
        helper.make_tensor_value_info(STATE_IN, onnx.TensorProto.FLOAT, ["K", info.dims.state_size]),
    ]
    outputs = [vi(t.name) for t in graph.outputs]
    outputs.append(helper.make_tensor_value_info(STATE_OUT, onnx.TensorProto.FLOAT, ["B", info.dims.state_size]))
    model = helper.make_model(
        helper.make_graph(nodes, STATEFUL_STEP, inputs, outputs, inits),
        opset_imports=step.opset_import, ir_version=step.ir_version,
    )  # fmt: skip
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


# ---------------------------------------------------------------------------------------------
# the repository


def _copy_model_dir(model_dir: Path, info: ModelInfo, onnx_path: Path) -> None:
    """The generate model's files: model.json and its graphs beside model.py (not a model.onnx)."""
    for name in ("model.json", *info.files.values()):
        shutil.copyfile(model_dir / name, onnx_path.parent / name)


def _write_model(repo: Path, cfg, write_onnx: Callable[[Path], object], template: str | None) -> None:
    version = repo / check_name(cfg.name, "Triton model name") / "1"  # never a path out of the repo
    version.mkdir(parents=True)
    (repo / cfg.name / "config.pbtxt").write_text(to_text(cfg))
    write_onnx(version / "model.onnx")
    if template:
        shutil.copyfile(TEMPLATES / template / "model.py", version / "model.py")


def build_repo(
    models: list[str | os.PathLike[str]], out: str | os.PathLike[str], options: RepoOptions | None = None,
    *, force: bool = False, names: Sequence[str | None] | None = None,
) -> list[str]:  # fmt: skip
    """Write a model repository for `models` (model directories) to `out`; returns the Triton
    model names. `names`: the name each model is served as (None: its model.json name made
    Triton-safe). Built in a temp dir beside `out` and renamed into place: never half a repo."""
    opts = options or RepoOptions()
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not force:
            raise SketchkitError(f"{out} exists and is not empty (use --force to replace it)")
        if out.is_symlink() or not (out / MARKER).is_file():
            raise SketchkitError(
                f"{out} is not a repository written by `sketchkit serve build-repo` (no {MARKER}): "
                "not replacing it, --force or not"
            )
    if names is not None and len(names) != len(models):
        raise SketchkitError(f"got {len(names)} names for {len(models)} models")
    infos = [(Path(m), ModelInfo.load(m)) for m in models]
    served = [
        check_name(given, "Triton model name") if given else safe_name(info.name)
        for given, (_, info) in zip(names or [None] * len(infos), infos, strict=True)
    ]
    dupes = sorted({n for n in served if served.count(n) > 1})
    if dupes:
        raise SketchkitError(f"two models are named {', '.join(dupes)}: Triton model names must be unique")
    built: list[str] = []
    stateless_template = "python_onnx" if opts.flavor == "cpu" else None
    with atomic_directory(out) as tmp:
        for name, (model_dir, info) in zip(served, infos, strict=True):
            for graph in graphs_for(info.dims.kind):
                cfg = graph_config(name, graph, info, opts)
                copy = partial(shutil.copyfile, model_dir / info.files[graph.name])
                _write_model(tmp, cfg, copy, stateless_template)
                built.append(cfg.name)
            if opts.stateful:
                cfg = stateful_config(name, info, opts)
                template = "python_onnx_stateful" if opts.flavor == "cpu" else None
                _write_model(tmp, cfg, partial(stateful_step_onnx, model_dir, info), template)
                built.append(cfg.name)
            if opts.generate:
                cfg = generate_config(name, info, opts)
                _write_model(tmp, cfg, partial(_copy_model_dir, model_dir, info), "python_generate")
                built.append(cfg.name)
        for config in tmp.glob("*/config.pbtxt"):
            read_config(config)  # what we wrote parses back into Triton's ModelConfig
        (tmp / MARKER).write_text("".join(f"{name}\n" for name in built))
    return built
