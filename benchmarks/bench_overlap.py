"""Steps that overlap (`Engine(overlap=...)`), in process on the CPU: C one-sketch requests kept in
flight on one engine until N sketches are done; prints sketches/s and the process's CPU seconds.

    PYTHONPATH=. python benchmarks/bench_overlap.py --table host --overlap on
    PYTHONPATH=. python benchmarks/bench_overlap.py --table device --overlap off --clients 64

Pair two settings (or a checkout without overlap, `--overlap auto` there) with interleaved whole-process
timings, e.g. `/usr/bin/time -v` over alternating runs. --table: host (numpy rows), device
(`DeviceRows`) or graph (`GraphRows`: captured CUDA graphs with --cuda, uncaptured on the CPU).
On a GPU: `--cuda --table graph --clients 1024 --sketches 4096 --overlap on` against `--overlap off`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's sketchkit, installed or not

from sketchkit.engine import Engine, Scheduler  # noqa: E402
from sketchkit.hub import resolve  # noqa: E402
from sketchkit.runtimes.onnx import OnnxRuntime  # noqa: E402
from sketchkit.sampling import Sampler, SamplingOptions  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="sheep")
    p.add_argument("--table", choices=["host", "device", "graph"], default="host")
    p.add_argument("--overlap", choices=["on", "off", "auto"], default="auto")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--sketches", type=int, default=128)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--cuda", action="store_true", help="the step on CUDA (a GPU machine; onnxruntime-gpu)")
    a = p.parse_args()
    kwargs = {"device_rows": a.table != "host", "cuda_graphs": a.table == "graph"}
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if a.cuda else None
    runtime = OnnxRuntime(resolve(a.model), providers=providers, threads=a.threads, **kwargs)  # type: ignore[arg-type]
    sampler = Sampler(runtime)
    options = {} if a.overlap == "auto" else {"overlap": a.overlap == "on"}
    engine = Engine(runtime, Scheduler(max_rows=1024), **options)  # type: ignore[arg-type]
    sent = done = 0
    start, cpu = time.perf_counter(), time.process_time()
    while done < a.sketches:
        while sent < a.sketches and len(engine.scheduler.running) + len(engine.scheduler.waiting) < a.clients:
            engine.add(sampler.generation(1, options=SamplingOptions(tau=0.3, seed=sent)))
            sent += 1
        done += len(engine.step())
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(f"{a.table} overlap={a.overlap}: {a.sketches / wall:.1f} sketches/s, {cpu / a.sketches * 1e3:.2f} CPU ms per sketch, "
          f"{engine.evaluations} steps, {engine.rows_stepped / max(engine.evaluations, 1):.1f} rows per step")


if __name__ == "__main__":
    main()
