"""Peak memory of the HyperLSTM loop's CUDA-graph capture at short T (issue 11 diagnostics): the
capture of the full N_max = 250 loop ran out of an H200's memory, so this measures how the memory
grows with T. `python benchmarks/gpu/hyper_probe.py [H]` (default H = 2048; on CPU it runs eagerly)."""

from __future__ import annotations

import sys
import time

import torch

from sketchkit.zoo import sequence
from sketchkit.zoo.model import HyperLSTMCell

cuda = torch.cuda.is_available()
device = "cuda" if cuda else "cpu"
H = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
for T in (10, 25, 50):
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cell = HyperLSTMCell(133, H, 256, 32, keep=0.9).to(device)
    cell.step_capture = True  # off by default for this cell: this probe is why
    sequence.set_fused(False)  # the step loop, as this probe measured it (the fused loop is captured now)
    x = torch.randn(100, T, 133, device=device)
    state = torch.zeros(100, cell.state_size, device=device)
    t = time.time()
    try:
        for _ in range(3):
            h, last = cell.sequence(x, state, drop=True)
            (h.sum() + last.sum()).backward()
        if cuda:
            torch.cuda.synchronize()
        modes = [g["mode"] for g in sequence.stats()][-1:]
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
        print(f"H {H} T {T}: ok {modes} {time.time() - t:.1f} s, peak {peak:.1f} GiB", flush=True)
    except Exception as e:  # noqa: BLE001 - a probe: report and go on
        print(f"H {H} T {T}: {type(e).__name__}: {str(e)[:160]}", flush=True)
    del cell, x, state
