"""Sampling through Triton against sampling in process, same model, same machine, one run.

    .venv/bin/python benchmarks/bench_triton.py --magenta ../shared/data/magenta-gen/owl.gen.json

Starts a real tritonserver (nvidia-pytriton's binary, cpu-flavor repository: onnxruntime inside
the Python backend) on 127.0.0.1 and measures:
- per-step round trip of the decoder step at B = 1 and B = 50: in process, Triton gRPC and HTTP
  (state in the request), Triton gRPC stateful (state on the server, only prev and rows sent);
- sketches/s for `generate -n 50 --tau 0.3`, in process vs through Triton (medians; every Triton
  run checked bit-identical to the in-process run of the same seed);
- 16 concurrent clients (threads sharing one runtime) x 50 sketches each, one sketch per request:
  throughput, p50/p99 latency per sketch, errors.
Writes the "Triton" section of benchmarks/RESULTS.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from serving.repository import RepoOptions, build_repo
from serving.server import TritonServer, free_port
from sketchkit.runtime_onnx import OnnxRuntime
from sketchkit.runtime_triton import TritonRuntime
from sketchkit.sampling import Sampler, SamplingOptions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


def write_section(text: str) -> None:
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Triton\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(new)


def step_ms(runtime, batch: int, steps: int) -> float:
    """Median milliseconds of one decoder step (after warm-up), the state fed back each time."""
    rng = np.random.default_rng(0)
    state = runtime.init_state(None, batch)
    prev = np.zeros((batch, 5), np.float32)
    prev[:, 2] = 1
    times = []
    for i in range(steps + 10):
        prev[:, :2] = rng.normal(0, 0.1, (batch, 2))
        t = time.perf_counter()
        _, state = runtime.step(prev, None, state)
        if i >= 10:
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def generate_runs(runtime, n: int, tau: float, runs: int, reference: list | None) -> tuple[float, bool]:
    """Median seconds of generate(n) over seeds 0..runs-1; whether each equals `reference`."""
    sampler = Sampler(runtime)
    sampler.generate(n, options=SamplingOptions(tau=tau, seed=99))  # warm-up
    times, identical = [], True
    for r in range(runs):
        t = time.perf_counter()
        sketches = sampler.generate(n, options=SamplingOptions(tau=tau, seed=r))
        times.append(time.perf_counter() - t)
        if reference is not None:
            identical &= all(np.array_equal(a, b) for a, b in zip(sketches, reference[r], strict=True))
    return statistics.median(times), identical


def concurrent(runtime, clients: int, per_client: int, tau: float) -> dict[str, float]:
    """`clients` threads, each generating `per_client` sketches one request (generate(1)) at a time."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client(c: int) -> None:
        sampler = Sampler(runtime)
        for i in range(per_client):
            t = time.perf_counter()
            try:
                sampler.generate(1, options=SamplingOptions(tau=tau, seed=c * 1000 + i))
            except Exception as e:  # counted, reported
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    ms = np.array(latencies) * 1e3
    return dict(wall=wall, rate=len(latencies) / wall, p50=float(np.percentile(ms, 50)),
                p99=float(np.percentile(ms, 99)), errors=len(errors), first_error=errors[0] if errors else "")  # fmt: skip


def executions(url: str, model: str) -> tuple[int, int]:
    """(requests, executions) so far, from Triton's statistics: requests / executions is how many
    requests the batcher merged into one run of the model."""
    import tritonclient.grpc as tc

    stats = tc.InferenceServerClient(url.split("://", 1)[1]).get_inference_statistics(model, as_json=True)
    (entry,) = stats["model_stats"]
    return int(entry["inference_stats"]["success"].get("count", 0)), int(entry.get("execution_count", 0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--magenta",
        type=Path,
        default=ROOT.parent / "shared/data/magenta-gen/owl.gen.json",
        help="Magenta decoder-only JSON model to import (needs the export extra)",
    )
    ap.add_argument(
        "--model", type=Path, default=None, help="an exported model directory instead of --magenta"
    )
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--tau", type=float, default=0.3)
    ap.add_argument("--runs", type=int, default=5, help="generate() repetitions (median)")
    ap.add_argument("--steps", type=int, default=200, help="decoder steps per round-trip measurement")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--per-client", type=int, default=50)
    ap.add_argument("--no-write", action="store_true", help="print, do not update RESULTS.md")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            from export.magenta import import_magenta

            model_dir = Path(tmp) / args.magenta.name.split(".")[0]
            print(f"importing {args.magenta} -> {model_dir}", file=sys.stderr)
            import_magenta(args.magenta, model_dir)
        local = OnnxRuntime(model_dir)
        info = local.info
        build_repo([model_dir], Path(tmp) / "repo", RepoOptions(flavor="cpu"))
        loads = [os.getloadavg()[0]]
        with TritonServer(
            Path(tmp) / "repo", free_port(), free_port(), log_path=Path(tmp) / "server.log"
        ) as server:
            runtimes = {
                "in process (onnxruntime)": local,
                "Triton gRPC": TritonRuntime(server.grpc_url, info.name),
                "Triton HTTP": TritonRuntime(server.http_url, info.name),
                "Triton gRPC, stateful": TritonRuntime(server.grpc_url, info.name, stateful=True),
            }
            steps = {}
            for name, rt in runtimes.items():
                steps[name] = [step_ms(rt, b, args.steps) for b in (1, 50)]
                print(
                    f"step {name}: B=1 {steps[name][0]:.2f} ms, B=50 {steps[name][1]:.2f} ms", file=sys.stderr
                )
            sampler = Sampler(local)
            reference = [
                sampler.generate(args.n, options=SamplingOptions(tau=args.tau, seed=r))
                for r in range(args.runs)
            ]
            gen = {}
            for name, rt in runtimes.items():
                gen[name] = generate_runs(rt, args.n, args.tau, args.runs, None if rt is local else reference)
                print(f"generate {name}: {gen[name][0]:.3f} s, identical {gen[name][1]}", file=sys.stderr)
            loads.append(os.getloadavg()[0])
            conc = {}
            served = {
                "Triton gRPC": f"{info.name}_decoder_step",
                "Triton gRPC, stateful": f"{info.name}_decoder_step_stateful",
            }
            for name in ("in process (onnxruntime)", "Triton gRPC", "Triton gRPC, stateful"):
                before = executions(server.grpc_url, served[name]) if name in served else (0, 0)
                conc[name] = concurrent(runtimes[name], args.clients, args.per_client, args.tau)
                if name in served:
                    (r0, e0), (r1, e1) = before, executions(server.grpc_url, served[name])
                    conc[name]["merged"] = (r1 - r0) / max(e1 - e0, 1)
                print(f"concurrent {name}: {conc[name]}", file=sys.stderr)
            loads.append(os.getloadavg()[0])
            for rt in runtimes.values():
                rt.close()

    base_gen = gen["in process (onnxruntime)"][0]
    step_rows = "\n".join(f"| {name} | {b1:.2f} ms | {b50:.2f} ms |" for name, (b1, b50) in steps.items())
    gen_rows = "\n".join(
        f"| {name} | {t:.3f} s | {args.n / t:.1f} | {base_gen / t:.2f}x | {'-' if rt is local else ('yes' if same else '**NO**')} |"
        for (name, (t, same)), rt in zip(gen.items(), runtimes.values(), strict=True)
    )

    def conc_row(name: str, c: dict) -> str:
        merged = f"{c['merged']:.2f}" if "merged" in c else "-"
        return f"| {name} | {c['rate']:.1f} | {c['p50']:.0f} ms | {c['p99']:.0f} ms | {c['errors']} | {c['wall']:.1f} s | {merged} |"

    conc_rows = "\n".join(conc_row(name, c) for name, c in conc.items())
    from importlib.metadata import version

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    source = args.model or args.magenta.name
    text = f"""## Triton

`{" ".join(["python benchmarks/bench_triton.py", *sys.argv[1:]])}`

Model `{source}` (decoder-only LSTM, H = {info.dec_size}, M = {info.num_mixture}, N_max = {info.max_seq_len}).
Server: the tritonserver 2.51 binary of nvidia-pytriton on 127.0.0.1, cpu-flavor repository
(`sketchkit serve build-repo --flavor cpu`: onnxruntime in the Python backend, 1 instance,
1 intra-op thread, dynamic batching with 200 us queue delay). Client in the same process.
Machine: {cpu}, {os.cpu_count()} CPUs **shared** by server, client and other work (1-min load
average {", ".join(f"{x:.1f}" for x in loads)} at start / after the sampling runs / after the
concurrency runs); onnxruntime {version("onnxruntime")}, tritonclient {version("tritonclient")}, numpy {np.__version__}.

Decoder step, round trip (median of {args.steps}):

| runtime | B = 1 | B = 50 |
|---|---|---|
{step_rows}

`generate -n {args.n} --tau {args.tau}` (median of {args.runs} seeds; Triton runs compared with the
in-process sketches of the same seed):

| runtime | time | sketches/s | speed vs in process | bit-identical |
|---|---|---|---|---|
{gen_rows}

{args.clients} concurrent clients (threads sharing one runtime) x {args.per_client} sketches each, one
sketch per request (`generate(1)`, tau {args.tau}):

| runtime | sketches/s | p50 latency | p99 latency | errors | wall | step requests per execution |
|---|---|---|---|---|---|---|
{conc_rows}

- Stateful: a step sends prev [B, 5] and rows [B] and gets params back; stateless also sends the
  state and gets the next one ([B, {info.state_size}] float32 each way). One sequence carries a
  whole generation (`max_batch_size: 0`), so Triton never merges the steps of different
  sequences: one run per request (last column), where the stateless step's dynamic batcher
  merges concurrent clients' steps into one onnxruntime run.
- "step requests per execution": Triton's own statistics (success count / execution count) over
  the concurrency run.
"""
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"updated {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
