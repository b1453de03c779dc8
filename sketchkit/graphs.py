"""The step-wise ONNX graphs as data: the one contract that export, the Triton config generator
and both runtimes read (see ARCHITECTURE.md). Symbolic dims: B batch, T time, and the sizes
named in ModelInfo: Nz (z_size), S (state_size), P (6M + 3)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # numpy / ONNX name: "float32", "int64", "bool" or "uint64"
    dims: tuple[str, ...]  # symbolic, "B" first


@dataclass(frozen=True)
class Graph:
    name: str
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]


ENCODER = Graph(
    "encoder",
    inputs=(Tensor("strokes", "float32", ("B", "T", "5")), Tensor("lengths", "int64", ("B",))),
    outputs=(Tensor("mu", "float32", ("B", "Nz")), Tensor("presig", "float32", ("B", "Nz"))),
)
DECODER_INIT = Graph(
    "decoder_init",
    inputs=(Tensor("z", "float32", ("B", "Nz")),),
    outputs=(Tensor("state", "float32", ("B", "S")),),
)
DECODER_STEP = Graph(
    "decoder_step",
    inputs=(
        Tensor("prev", "float32", ("B", "5")),
        Tensor("z", "float32", ("B", "Nz")),
        Tensor("state", "float32", ("B", "S")),
    ),
    outputs=(Tensor("params", "float32", ("B", "P")), Tensor("next_state", "float32", ("B", "S"))),
)
# decoder-only models: no encoder, no decoder_init (zero initial state), no z input
DECODER_STEP_UNCOND = Graph(
    "decoder_step",
    inputs=(Tensor("prev", "float32", ("B", "5")), Tensor("state", "float32", ("B", "S"))),
    outputs=DECODER_STEP.outputs,
)


# the decoder step with the draw appended (`sketchkit.draw.with_draw`), built in memory from
# decoder_step: what the engine runs every step (no z input for decoder-only models)
DECODER_STEP_DRAW = Graph(
    "decoder_step_draw",
    inputs=(
        *DECODER_STEP.inputs,
        Tensor("temperature", "float32", ("B", "2")),
        Tensor("greedy", "bool", ("B",)),
        Tensor("counter", "uint64", ("B",)),
    ),
    outputs=(
        Tensor("point", "float32", ("B", "5")),
        Tensor("next_state", "float32", ("B", "S")),
        Tensor("next_counter", "uint64", ("B",)),
    ),
)
DECODER_STEP_DRAW_UNCOND = Graph(
    "decoder_step_draw", inputs=tuple(t for t in DECODER_STEP_DRAW.inputs if t.name != "z"), outputs=DECODER_STEP_DRAW.outputs
)


def graphs_for(kind: str) -> tuple[Graph, ...]:
    """The graphs a model of this kind ("vae" or "decoder-only") consists of."""
    if kind == "vae":
        return (ENCODER, DECODER_INIT, DECODER_STEP)
    if kind == "decoder-only":
        return (DECODER_STEP_UNCOND,)
    raise ValueError(f"unknown model kind {kind!r}")


def concrete_dims(t: Tensor, sizes: dict[str, int]) -> list[int]:
    """Dims with sizes filled in; -1 for the dynamic ones (B, T)."""
    return [int(d) if d.isdigit() else sizes.get(d, -1) for d in t.dims]
