"""The teacher-forcing time loop of the recurrent cells, and its fast forms.

Training runs a cell over all N_max steps of a fixed-shape batch. Stepping through time in Python
with autograd launches a dozen small kernels per step, forward and backward, plus one weight-gradient
matmul per step: on an H200 the layer-norm LSTM 512 took 8.5x the cuDNN LSTM's train step (issue 11).
So there are three forms of the same loop:
  1. `loop`: the cell's step function, step by step under autograd. The reference; the HyperLSTM.
  2. a fused sequence function (zoo.fused, for all three cells): one autograd node for
     the whole loop with a hand-written backward (one addmm and one pointwise function per step
     each way; the weight gradients as one matmul over all T). Used wherever it exists, CPU included.
  3. with grad enabled on CUDA, that function (else the step) with its pointwise parts compiled by
     `torch.compile`, and the whole T-step loop, forward and backward, captured once per input
     shape as two CUDA graphs (`torch.cuda.make_graphed_callables`) and replayed: one launch per pass.
The loop's inputs are the input projections for all T (the caller hoists them out of the loop: one
matmul), the initial state and the recurrent-dropout masks for all T, drawn outside the graph (a
captured graph must hold no RNG). The masks keep each unit with probability `keep` and scale the
kept ones by 1 / keep, exactly as `F.dropout(g, 1 - keep)` did per step before.

Each CUDA-only stage that fails (compile, capture, or a captured graph whose forward disagrees with
the eager loop) logs one warning line and falls back: fused compiled + graphed -> fused graphed ->
compiled step graphed -> graphed eager step -> the un-captured loop. A training run never dies
because of the fast path.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# (xw_t (B, X), carry (tensors), mask_t (B, H) or None, *params) -> (h (B, H), next carry)
Step = Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, ...]]]
# (xw (B, T, X), carry, masks (T, B, H) or None, *params, compile=None or `compiled`) -> (h (B, T, H), last carry)
Fused = Callable[..., tuple[torch.Tensor, tuple[torch.Tensor, ...]]]

MAX_GRAPHS_PER_MODULE = 2  # training has one shape; a second covers e.g. a decoder-only zero state
CHECK_TOLERANCE = 1e-3  # a captured forward farther than this from the eager loop is not used

_enabled = os.environ.get("SKETCHKIT_FAST_CELLS", "1") != "0"
_fused_enabled = os.environ.get("SKETCHKIT_FUSED_CELLS", "1") != "0"
_graphs: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()
_compiled: dict[Step, Step] = {}


def set_fast(enabled: bool) -> None:
    """Switch the CUDA fast path on or off (benchmarks compare both; SKETCHKIT_FAST_CELLS=0 at start)."""
    global _enabled
    _enabled = enabled


def set_fused(enabled: bool) -> None:
    """Use the cells' fused loops (zoo.fused) or only their step functions (benchmarks compare
    both; SKETCHKIT_FUSED_CELLS=0 at start)."""
    global _fused_enabled
    _fused_enabled = enabled


def fast_applies(x: torch.Tensor) -> bool:
    """Whether a training pass over `x` takes the CUDA fast path (so shapes should stay static)."""
    return _enabled and x.is_cuda and torch.is_grad_enabled()


def dropout_masks(steps: int, batch: int, size: int, keep: float, like: torch.Tensor) -> torch.Tensor:
    """(T, B, H) recurrent-dropout masks: 1 / keep with probability keep, else 0."""
    return torch.empty(steps, batch, size, device=like.device, dtype=like.dtype).bernoulli_(keep).div_(keep)


def loop(
    step: Step,
    params: Sequence[torch.Tensor],
    xw: torch.Tensor,
    carry: tuple[torch.Tensor, ...],
    masks: torch.Tensor | None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The eager loop: xw (B, T, X) input projections, masks (T, B, H) or None -> h (B, T, H),
    the carry after the last step."""
    out = []
    for t in range(xw.shape[1]):
        h, carry = step(xw[:, t], carry, None if masks is None else masks[t], *params)
        out.append(h)
    return torch.stack(out, 1), carry


def compiled(step: Step) -> Step:
    """`step` (or a fused loop's pointwise function) compiled once for the whole process (fullgraph,
    static shapes)."""
    if step not in _compiled:
        _compiled[step] = torch.compile(step, fullgraph=True, dynamic=False)
    return _compiled[step]


class Loop:
    """`loop` (or the `fused` form of it) as a function of tensors only,
    (xw, masks, *carry, *weights) -> (h, *last carry): the form `make_graphed_callables` captures.

    The weights enter as inputs, not as module parameters: a captured backward must not run the
    gradient accumulation of a Parameter whose accumulator was made outside the capture. The
    HyperLSTM's `hyper_ih` is such a Parameter (its input columns feed `project`, before the loop):
    as a module parameter its capture failed on an H200 at every size with "operation would make
    the legacy stream depend on a capturing blocking stream" (benchmarks/gpu/hyper_diagnose.py);
    as an input it got past that (and the step loop then ran out of memory: see HyperLSTMCell).
    As inputs, the graph returns the weights' gradients and autograd accumulates them outside."""

    def __init__(self, step: Step, n_carry: int, fused: Fused | None = None):
        self.step, self.n_carry, self.fused = step, n_carry, fused

    def __call__(
        self, xw: torch.Tensor, masks: torch.Tensor, *tensors: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        carry = tuple(c.contiguous() for c in tensors[: self.n_carry])
        weights = list(tensors[self.n_carry :])
        if self.fused is not None:
            h, last = self.fused(xw, carry, masks, *weights)
        else:
            h, last = loop(self.step, weights, xw, carry, masks)
        return (h, *last)


def run(
    owner: nn.Module,
    step: Step,
    params: Sequence[nn.Parameter],
    xw: torch.Tensor,
    carry: tuple[torch.Tensor, ...],
    masks: torch.Tensor | None,
    fused: Fused | None = None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The loop over xw (B, T, X): captured when `fast_applies` and a graph for these shapes exists
    or can be made (cached per `owner`, the module whose weights `params` are); else the `fused`
    function when the cell has one, else the step-by-step loop."""
    fused = fused if _fused_enabled else None
    if not fast_applies(xw) or (fused is None and not getattr(owner, "step_capture", True)):
        return uncaptured(step, params, xw, carry, masks, fused)
    B, T = xw.shape[:2]
    H = carry[0].shape[1]
    if masks is None:
        masks = torch.ones(T, B, H, device=xw.device, dtype=xw.dtype)
    args = (xw, masks, *carry, *params)
    key = tuple((tuple(a.shape), a.dtype, a.requires_grad) for a in args) + (
        str(xw.device),
        fused is not None,
    )
    graphs = _graphs.setdefault(owner, {})
    if key not in graphs:
        graphs[key] = (
            _capture(step, len(carry), args, fused, getattr(owner, "step_capture", True))
            if len(graphs) < MAX_GRAPHS_PER_MODULE
            else None
        )
    entry = graphs[key]
    if entry is not None:
        try:
            h, *last = entry["fn"](*args)
            return h, tuple(last)
        except Exception as e:  # noqa: BLE001 - as in _capture: only speed may be lost
            log.warning("fast cells: a captured loop failed (%s: %s); eager from now on", type(e).__name__, e)
            graphs[key] = None
    return uncaptured(step, params, xw, carry, masks, fused)


def uncaptured(
    step: Step,
    params: Sequence[torch.Tensor],
    xw: torch.Tensor,
    carry: tuple[torch.Tensor, ...],
    masks: torch.Tensor | None,
    fused: Fused | None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The fused function if the cell has one (faster on CPU too: benchmarks/RESULTS.md), else `loop`."""
    if fused is not None:
        return fused(xw, carry, masks, *params)
    return loop(step, params, xw, carry, masks)


def stats() -> list[dict[str, Any]]:
    """How each captured loop runs ("compiled+graph", "graph" or "eager") and what it cost to
    make (seconds, including warm-up and capture): for the benchmark's table."""
    return [
        {"xw_shape": list(key[0][0]), "mode": e["mode"], "seconds": e["seconds"]}
        for graphs in _graphs.values()
        for key, e in graphs.items()
        if e is not None
    ]


def _capture(
    step: Step,
    n_carry: int,
    args: tuple[torch.Tensor, ...],
    fused: Fused | None = None,
    step_capture: bool = True,
) -> dict[str, Any] | None:
    """Graph the loop over args = (xw, masks, *carry, *weights): the fused function compiled, then
    eager, then (unless the cell forbids it: HyperLSTMCell) the compiled step, then the eager step;
    None: use the un-captured loop."""
    sample = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
    tries: list[tuple[str, Loop]] = []
    if fused is not None:
        tries += [
            ("fused+compiled+graph", Loop(step, n_carry, functools.partial(fused, compile=compiled))),
            ("fused+graph", Loop(step, n_carry, fused)),
        ]
    if step_capture:
        tries += [("compiled+graph", Loop(compiled(step), n_carry)), ("graph", Loop(step, n_carry))]
    for mode, fn in tries:
        t0 = time.perf_counter()
        try:
            graphed = torch.cuda.make_graphed_callables(fn, sample, allow_unused_input=True)
            _check(graphed, step, n_carry, sample)
        except Exception as e:  # noqa: BLE001 - any failure here must only cost speed
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            log.warning("fast cells: %s failed (%s: %s); falling back", mode, type(e).__name__, first[:200])
            with contextlib.suppress(Exception):
                torch.cuda.synchronize()
            continue
        torch.cuda.synchronize()
        return {"fn": graphed, "mode": mode, "seconds": time.perf_counter() - t0}
    return None


def _check(graphed: Callable[..., Any], step: Step, n_carry: int, sample: tuple[torch.Tensor, ...]) -> None:
    """The captured forward must equal the eager loop on the capture's own inputs."""
    xw, masks, *rest = sample
    with torch.no_grad():
        want, _ = loop(step, rest[n_carry:], xw, tuple(rest[:n_carry]), masks)
        got = graphed(*sample)[0]
    err = float((got - want).abs().max())
    if not err <= CHECK_TOLERANCE * (1.0 + float(want.abs().max())):
        raise RuntimeError(f"captured forward differs from the eager loop by {err:.3g}")
