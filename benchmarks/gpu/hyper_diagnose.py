"""Which operation of the HyperLSTM step breaks CUDA-graph capture (issue 11 diagnostics)?

On an H200 `make_graphed_callables` of the HyperLSTM loop failed at every T with "operation failed
due to a previous error during capture" and left the RNG in capture state, so one failed try
poisoned the next. (Its first run named the cause: "operation would make the legacy stream depend
on a capturing blocking stream", from `hyper_ih`, a Parameter used by `project` and by the loop;
zoo.sequence.Loop now takes the weights as inputs, which this script passes.) Here each variant runs in its own process (a failure cannot leak), with
CUDA_LAUNCH_BLOCKING=1 so the first failing call raises, and prints its whole traceback:

  sync          the eager loop, forward + backward, under torch.cuda.set_sync_debug_mode("error")
  fwd           torch.cuda.graph around the forward loop only (no grad)
  graph-256     make_graphed_callables of the loop, H 256, Hh 64 (small sizes)
  graph-2048    the same at H 2048, Hh 256 (the paper's sizes; what failed)
  graph-bmm     H 2048 with torch.einsum replaced by an explicit bmm
  graph-nolt    H 2048 with cuBLASLt off (torch.backends.cuda.preferred_blas_library("cublas"))

    python benchmarks/gpu/hyper_diagnose.py            # all variants, one process each, T = 10
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback

VARIANTS = ["sync", "fwd", "graph-256", "graph-2048", "graph-bmm", "graph-nolt"]


def one(variant: str, T: int = 10) -> None:
    import torch

    from sketchkit.zoo import model, sequence
    from sketchkit.zoo.model import HyperLSTMCell, hyper_lstm_step

    device = "cuda" if torch.cuda.is_available() else "cpu"
    H, Hh = (256, 64) if variant == "graph-256" else (2048, 256)
    if variant == "graph-bmm":

        def einsum(eq: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            assert eq == "bke,keh->bkh"
            return torch.bmm(a.transpose(0, 1), b).transpose(0, 1)

        model.torch.einsum = einsum  # type: ignore[assignment]  # the step looks it up at call time
    if variant == "graph-nolt" and device == "cuda":
        torch.backends.cuda.preferred_blas_library("cublas")
    cell = HyperLSTMCell(133, H, Hh, 32, keep=0.9).to(device)
    x = torch.randn(100, T, 133, device=device, requires_grad=True)
    state = torch.zeros(100, cell.state_size, device=device)
    xw = cell.project(x)
    masks = sequence.dropout_masks(T, 100, H, 0.9, xw)
    carry = cell.unpack(state)
    t = time.time()
    if variant == "sync":
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        h, last = sequence.loop(hyper_lstm_step, cell.weights(), xw, carry, masks)
        (h.sum() + sum(c.sum() for c in last)).backward()
    elif variant == "fwd":
        with torch.no_grad():
            args = [a.detach() for a in (xw, masks, *carry)]
            sequence.loop(hyper_lstm_step, cell.weights(), args[0], tuple(args[2:]), args[1])  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g):
                    sequence.loop(hyper_lstm_step, cell.weights(), args[0], tuple(args[2:]), args[1])
                g.replay()
    else:
        args = (xw, masks, *carry, *cell.weights())
        sample = tuple(a.detach().clone().requires_grad_(a.requires_grad) for a in args)
        loop = sequence.Loop(hyper_lstm_step, len(carry))
        fn = (
            torch.cuda.make_graphed_callables(loop, sample, allow_unused_input=True)
            if device == "cuda"
            else loop
        )
        h, *last = fn(*sample)
        h.sum().backward()
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"{variant}: ok in {time.time() - t:.1f} s", flush=True)


def main() -> None:
    if len(sys.argv) > 1:
        try:
            one(sys.argv[1])
        except Exception:  # noqa: BLE001 - a probe: print everything
            print(f"{sys.argv[1]}: FAILED", flush=True)
            traceback.print_exc(file=sys.stdout)
            sys.exit(1)
        return
    env = {**os.environ, "CUDA_LAUNCH_BLOCKING": "1", "TORCH_SHOW_CPP_STACKTRACES": "0"}
    for v in VARIANTS:
        try:
            r = subprocess.run(
                [sys.executable, __file__, v], env=env, capture_output=True, text=True, timeout=90
            )
            out = (r.stdout + r.stderr).strip().splitlines()
        except subprocess.TimeoutExpired:
            out = [f"{v}: timed out after 90 s"]
        print(f"--- {v}", *out[-40:], sep="\n", flush=True)


if __name__ == "__main__":
    main()
