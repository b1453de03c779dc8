"""The one way this project opens an onnxruntime session (the runtime, the row tables, the draw,
the export's check, the Triton Python models, the benchmarks); `sketchkit.runtimes.onnx` re-exports it.
It stands below everything that runs a graph (it imports nothing of sketchkit): the draw runs its
own graph with it, and the runtimes append that graph to the decoder step."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import onnxruntime as ort


def open_session(
    model: str | os.PathLike[str] | bytes,
    threads: int | None = None,
    providers: list[Any] | None = None,
    *,
    mem_arena: bool = True,
) -> ort.InferenceSession:
    """The one way this project opens an onnxruntime session: the runtime here, the export's
    numerical check, the Triton Python models (`serving/templates/*/model.py`) and the
    benchmarks. `model`: an .onnx path or its bytes; `providers`: names or (name, options) pairs; `threads`: intra-op threads (None:
    onnxruntime's default, the physical cores); `mem_arena=False` for sessions whose input shapes
    come and go (the stateful step: an arena would keep the peak for good)."""
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    opts = session_options(threads, mem_arena=mem_arena)
    return ort.InferenceSession(source, opts, providers=providers or ["CPUExecutionProvider"])


def session_options(threads: int | None = None, *, mem_arena: bool = True) -> ort.SessionOptions:
    """Options for small batches run one step at a time: parallelism inside the matrix products
    only, `threads` of it (default: onnxruntime's, the physical cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_cpu_mem_arena = mem_arena
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    # idle workers sleep instead of spinning: a spinning pool on a busy machine (other
    # processes, or a PyTorch pool in the same process) made sampling 2x slower here
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 4  # errors surface as exceptions (one line each); nothing else on stderr
    return opts
