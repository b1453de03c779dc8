"""Issue 19 on a GPU machine: the engine in process and `<name>_generate` through tritonserver,
with the GPU's utilisation beside every row. Run by benchmarks/gpu_serve.sh (which sets up the
server's environment); each part can also run alone:

  python benchmarks/bench_gpu_serve.py inprocess MODEL_DIR [--old OLD_SKETCHKIT_PARENT] --json OUT.json
  python benchmarks/bench_gpu_serve.py triton URL MODEL_NAME --json OUT.json

inprocess: sketches/s of `Sampler.generate(n)` on onnxruntime's CUDA provider with the rows on
the GPU (the default there), with host rows (`device_rows=False`), with TF32 off, and, given
--old, an older checkout's sampler in a subprocess (its rows on the GPU with CUDA graphs, n =
the largest size, where it has them): the baseline, same run (--old-label names it).
triton: C concurrent clients, each sending requests of n sketches (binary HTTP infer) for a
fixed time: sketches/s and request latency p50/p99.
GPU utilisation: `nvidia-smi` sampled every 100 ms while each row runs (mean and max %).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

CUDA = ["CUDAExecutionProvider", "CPUExecutionProvider"]


class GpuUse:
    """nvidia-smi's utilisation.gpu every 100 ms, in the background, averaged per window."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
        except OSError:
            self.proc = None
            return
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.samples.append((time.monotonic(), float(line.strip())))

    def window(self, t0: float, t1: float) -> dict[str, float | None]:
        got = [u for t, u in self.samples if t0 <= t <= t1]
        return {"gpu_util_mean": round(float(np.mean(got)), 1) if got else None, "gpu_util_max": max(got) if got else None}

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()


def timed(gpu: GpuUse, fn, *args):  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    out = fn(*args)
    t1 = time.monotonic()
    return out, t1 - t0, gpu.window(t0, t1)


# ---- in process ---------------------------------------------------------------------------------


def inprocess(model_dir: str, sizes: list[int], old: str | None, gpu: GpuUse, old_label: str = "previous release") -> list[dict]:
    from sketchkit.engine import Engine
    from sketchkit.runtimes.onnx import OnnxRuntime
    from sketchkit.sampling import Sampler, SamplingOptions

    rows = []
    variants = [
        ("rows on the GPU", dict(providers=CUDA)),
        ("rows on the GPU, CUDA graphs", dict(providers=CUDA, cuda_graphs=True)),
        ("rows on the host", dict(providers=CUDA, device_rows=False)),
        ("rows on the GPU, TF32 off", dict(providers=[("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"])),
    ]
    for label, kw in variants:
        rt = OnnxRuntime(model_dir, **kw)
        sampler, engine = Sampler(rt), Engine(rt)  # one engine, as the Triton model keeps (its graphs stay captured)
        generate = lambda n, options, e=engine, s=sampler: e.run(s.generation(n, options=options))  # noqa: E731
        generate(256, SamplingOptions(tau=0.3, seed=0))  # load, warm up
        providers = rt._sessions["decoder_step_draw"].get_providers()
        table = type(engine.rows).__name__
        for n in sizes:
            if label not in ("rows on the GPU", "rows on the GPU, CUDA graphs") and n not in (8192, max(sizes)):
                continue
            sketches, dt, use = timed(gpu, generate, n, SamplingOptions(tau=0.3, seed=1))
            row = {"what": f"in process, {label}", "n": n, "seconds": round(dt, 3), "sketches_per_s": round(n / dt),
                   "mean_len": round(float(np.mean([len(s) for s in sketches])), 1), "providers": providers[:1], "table": table, **use}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    if old:  # the previous release, the same machine and model: the baseline of this run
        n = max(sizes)
        code = (
            "import sys, time, json, inspect; sys.path.insert(0, sys.argv[1])\n"
            "from sketchkit.runtimes.onnx import OnnxRuntime\nfrom sketchkit.sampling import Sampler, SamplingOptions\n"
            "kw = {'cuda_graphs': True} if 'cuda_graphs' in inspect.signature(OnnxRuntime).parameters else {}\n"
            f"s = Sampler(OnnxRuntime(sys.argv[2], providers={CUDA!r}, **kw)); s.generate(256, options=SamplingOptions(seed=0))\n"
            f"t = time.monotonic(); out = s.generate({n}, options=SamplingOptions(tau=0.3, seed=1)); dt = time.monotonic() - t\n"
            f"print(json.dumps({{'n': {n}, 'cuda_graphs': bool(kw), 'seconds': round(dt, 3), 'sketches_per_s': round({n} / dt)}}))\n"
        )
        t0 = time.monotonic()
        res = subprocess.run([sys.executable, "-c", code, old, model_dir], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": old})
        t1 = time.monotonic()
        try:
            got = json.loads(res.stdout.strip().splitlines()[-1])
            row = {"what": f"in process, {old_label}", **got, **gpu.window(t0, t1)}
        except (IndexError, ValueError):
            row = {"what": "previous release", "error": (res.stderr.strip().splitlines() or ["?"])[-1]}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


# ---- through tritonserver ------------------------------------------------------------------------


def infer(conn: http.client.HTTPConnection, model: str, n: int, seed: int) -> int:
    """One binary-output v2 infer request for n sketches; returns the number of sketches."""
    body = json.dumps({
        "inputs": [{"name": "n", "shape": [1], "datatype": "INT64", "data": [n]},
                   {"name": "tau", "shape": [1], "datatype": "FP32", "data": [0.3]},
                   {"name": "seed", "shape": [1], "datatype": "INT64", "data": [seed]}],
        "outputs": [{"name": "strokes", "parameters": {"binary_data": True}},
                    {"name": "lengths", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    headers = {"Content-Type": "application/octet-stream"}
    if os.environ.get("SKETCHKIT_SERVER_KEY"):  # a server started by `sketchkit serve start` wants its key
        headers["x-sketchkit-key"] = os.environ["SKETCHKIT_SERVER_KEY"]
    conn.request("POST", f"/v2/models/{model}/infer", body, headers)
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
    header_len = int(r.getheader("Inference-Header-Content-Length") or len(data))
    header = json.loads(data[:header_len])
    lengths = next(o for o in header["outputs"] if o["name"] == "lengths")
    return int(lengths["shape"][0])


def load(url: str, model: str, clients: int, n: int, seconds: float, gpu: GpuUse) -> dict:
    host = urlparse(url)
    latencies: list[float] = []
    errors: list[str] = []
    done = [0]
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=300)
        seed = 1000 * k
        while time.monotonic() < stop_at:
            t = time.monotonic()
            try:
                got = infer(conn, model, n, seed)
            except Exception as e:  # counted, the others go on
                with lock:
                    errors.append(str(e)[:200])
                conn = http.client.HTTPConnection(host.hostname, host.port, timeout=300)
                continue
            with lock:
                latencies.append(time.monotonic() - t)
                done[0] += got
            seed += 1

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    t1 = time.monotonic()
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"what": f"{model}, {clients} clients x n = {n}", "clients": clients, "n": n, "seconds": round(t1 - t0, 2),
            "sketches": done[0], "sketches_per_s": round(done[0] / (t1 - t0)), "requests": len(latencies),
            "p50_s": round(float(np.percentile(lat, 50)), 4), "p99_s": round(float(np.percentile(lat, 99)), 4),
            "errors": len(errors), "first_error": errors[0] if errors else None, **gpu.window(t0, t1)}  # fmt: skip


# (clients, n per request, share of --seconds): the rows, then more one-sketch clients
LOADS = ((8, 4096, 1.0), (64, 1, 1.0), (16, 1, 0.5), (256, 1, 0.5))


def triton(url: str, model: str, gpu: GpuUse, seconds: float, loads=LOADS) -> list[dict]:  # type: ignore[no-untyped-def]
    host = urlparse(url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=300)
    infer(conn, model, 64, 0)  # warm up
    rows = []
    for clients, n, share in loads:
        row = load(url, model, clients, n, share * seconds, gpu)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="part", required=True)
    a = sub.add_parser("inprocess")
    a.add_argument("model_dir")
    a.add_argument("--sizes", default="1024,8192,32768")
    a.add_argument("--old", help="a directory holding an older checkout's sketchkit/ package: the baseline")
    a.add_argument("--old-label", default="previous release", help="what --old is, for the rows")
    a.add_argument("--json", required=True)
    b = sub.add_parser("triton")
    b.add_argument("url")
    b.add_argument("model")
    b.add_argument("--seconds", type=float, default=12.0)
    b.add_argument("--loads", help="CLIENTSxN,... (default: 8x4096,64x1,16x1,256x1)")
    b.add_argument("--json", required=True)
    args = ap.parse_args()
    gpu = GpuUse()
    try:
        if args.part == "inprocess":
            rows = inprocess(args.model_dir, [int(s) for s in args.sizes.split(",")], args.old, gpu, args.old_label)
        else:
            loads = [(*map(int, x.split("x")), 1.0) for x in args.loads.split(",")] if args.loads else LOADS
            rows = triton(args.url, args.model, gpu, args.seconds, loads)
    finally:
        gpu.stop()
    Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
