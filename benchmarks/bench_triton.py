"""Triton: whole sketches per request (`<name>_generate`, continuous batching) against in process.

    python benchmarks/bench_triton.py            # about 2-3 minutes on 2 cores; updates RESULTS.md

One process: imports Magenta's owl (decoder-only LSTM, H = 512) from ../shared, builds a cpu-flavor
repository, starts the tritonserver of nvidia-pytriton on 127.0.0.1 and measures
1. `generate -n 50 --tau 0.3`, one request: in process (baseline), through `owl_generate`, and the
   old path (the step loop in the client, one gRPC request per decoder step); sketches compared
   with the in-process ones of the same seed;
2. C concurrent clients (threads, one gRPC channel each) x R requests of one sketch each through
   `owl_generate`, for C = 16 and 64: sketches/s, p50/p99 latency, errors, and the engine's mean
   sketches per graph evaluation (from the generate model's statistics line in the server log);
   the in-process baseline runs 16 threads that share one onnxruntime runtime.
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

from sketchkit.client import Client
from sketchkit.runtimes.onnx import OnnxRuntime
from sketchkit.runtimes.triton import TritonRuntime
from sketchkit.sampling import Sampler, SamplingOptions
from sketchkit.serving.repository import RepoOptions, build_repo
from sketchkit.serving.server import TritonServer, free_port

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from results import RESULTS, write_section  # noqa: E402  (one section writer for RESULTS.md)

STATS = re.compile(r"sketchkit engine: (\d+) evaluations, (\d+) rows stepped")


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def one_request(generate, n: int, tau: float, runs: int, reference: list | None) -> tuple[float, bool]:
    """Median seconds of generate(n, seed) over seeds 0..runs-1 (after a warm-up); whether every
    result equals `reference[seed]`."""
    generate(n, SamplingOptions(tau=tau, seed=99))
    times, identical = [], True
    for seed in range(runs):
        t = time.perf_counter()
        sketches = generate(n, SamplingOptions(tau=tau, seed=seed))
        times.append(time.perf_counter() - t)
        if reference is not None:
            identical &= same(sketches, reference[seed])
    return statistics.median(times), identical


def concurrent(generate_one, clients: int, per_client: int) -> dict[str, float]:
    """`clients` threads, each asking for `per_client` single sketches one request at a time."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        start.wait()
        for i in range(per_client):
            t = time.perf_counter()
            try:
                generate_one(c * 1000 + i)
            except Exception as e:  # counted and reported
                with lock:
                    errors.append(str(e))
                continue
            with lock:
                latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for th in threads:
        th.start()
    start.wait()
    t = time.perf_counter()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    ms = np.array(latencies or [np.nan]) * 1e3
    return dict(wall=wall, rate=len(latencies) / wall, p50=float(np.percentile(ms, 50)),
                p99=float(np.percentile(ms, 99)), errors=len(errors), first_error=errors[0] if errors else "")  # fmt: skip


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a process and its live descendants (tritonserver and the
    Python backend's stub), from /proc; 0 where /proc is missing."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}  # pid -> (parent, cpu seconds)
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(d.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    tree, grew = {pid}, True
    while grew:
        more = {p for p, (parent, _) in stats.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(stats[p][1] for p in tree if p in stats)


def engine_stats(server: TritonServer) -> tuple[int, int]:
    """(evaluations, rows stepped) so far: the generate model logs them whenever it runs dry."""
    time.sleep(0.3)  # the line is written just after the last answer
    found = STATS.findall(server.log())
    return (int(found[-1][0]), int(found[-1][1])) if found else (0, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--magenta", type=Path, default=ROOT.parent / "shared/data/magenta-gen/owl.gen.json",
                    help="Magenta JSON model to import (needs the export extra)")  # fmt: skip
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--tau", type=float, default=0.3)
    ap.add_argument("--runs", type=int, default=5, help="one-request repetitions (median)")
    ap.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--per-client", type=int, default=50)
    ap.add_argument("--baseline-per-client", type=int, default=10, help="requests per in-process thread")
    ap.add_argument("--engines", type=int, default=RepoOptions.engines, help="owl_generate's engines (threads)")
    ap.add_argument("--intra-op-threads", type=int, default=RepoOptions.intra_op_threads,
                    help="owl_generate's onnxruntime intra-op threads")  # fmt: skip
    ap.add_argument("--no-write", action="store_true", help="print, do not update RESULTS.md")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        from sketchkit.export.magenta import import_magenta

        model_dir = Path(tmp) / "owl"
        print(f"importing {args.magenta} -> {model_dir}", file=sys.stderr)
        import_magenta(args.magenta, model_dir, name="owl")
        local = Sampler(OnnxRuntime(model_dir))
        info = local.info
        options = RepoOptions(flavor="cpu", stateful=False, engines=args.engines, intra_op_threads=args.intra_op_threads)
        build_repo([model_dir], Path(tmp) / "repo", options)
        loads = [os.getloadavg()[0]]
        with TritonServer(Path(tmp) / "repo", free_port(), free_port(), log_path=Path(tmp) / "server.log") as server:
            client = Client(server.grpc_url)
            step_mode = Sampler(TritonRuntime(server.grpc_url, "owl", mode="step"))
            reference = [local.generate(args.n, options=SamplingOptions(tau=args.tau, seed=s)) for s in range(args.runs)]
            ways = {
                "in process (onnxruntime)": lambda n, o: local.generate(n, options=o),
                "`owl_generate`, one gRPC request": lambda n, o: client.generate("owl", n=n, tau=o.tau, seed=o.seed),
                "step loop in the client (one gRPC request per step)": lambda n, o: step_mode.generate(n, options=o),
            }
            one = {}
            for name, way in ways.items():
                one[name] = one_request(way, args.n, args.tau, args.runs, None if "in process" in name else reference)
                print(f"one request, {name}: {one[name][0]:.3f} s, identical {one[name][1]}", file=sys.stderr)
            loads.append(os.getloadavg()[0])
            conc = {}
            conc["in process, 16 threads"] = concurrent(
                lambda seed: local.generate(1, options=SamplingOptions(tau=args.tau, seed=seed)), 16, args.baseline_per_client
            )  # fmt: skip
            print(f"concurrent in process: {conc['in process, 16 threads']}", file=sys.stderr)
            for clients in args.clients:
                before = engine_stats(server)
                name = f"`owl_generate`, {clients} clients"
                server_cpu, client_cpu = tree_cpu_s(server.process.pid), time.process_time()  # type: ignore[union-attr]
                conc[name] = concurrent(lambda seed: client.generate("owl", n=1, tau=args.tau, seed=seed), clients, args.per_client)
                made = max(args.per_client * clients - conc[name]["errors"], 1)
                conc[name]["server_cpu_ms"] = 1e3 * (tree_cpu_s(server.process.pid) - server_cpu) / made  # type: ignore[union-attr]
                conc[name]["client_cpu_ms"] = 1e3 * (time.process_time() - client_cpu) / made
                (e0, r0), (e1, r1) = before, engine_stats(server)
                conc[name]["per_eval"] = (r1 - r0) / max(e1 - e0, 1)
                print(f"concurrent {name}: {conc[name]}", file=sys.stderr)
            loads.append(os.getloadavg()[0])
            client.close()
            step_mode.runtime.close()

    base = one["in process (onnxruntime)"][0]
    one_rows = "\n".join(
        f"| {name} | {t:.3f} s | {t / base:.2f}x | {'-' if 'in process' in name else ('yes' if ok else '**NO**')} |"
        for name, (t, ok) in one.items()
    )

    def conc_row(name: str, c: dict) -> str:
        per_eval = f"{c['per_eval']:.1f}" if "per_eval" in c else "-"
        cpu = f"{c['server_cpu_ms']:.1f} + {c['client_cpu_ms']:.1f} ms" if "server_cpu_ms" in c else "-"
        requests = args.baseline_per_client if "in process" in name else args.per_client
        return (f"| {name} x {requests} | {c['rate']:.1f} | {c['p50']:.0f} ms | {c['p99']:.0f} ms | {c['errors']} "
                f"| {c['wall']:.1f} s | {per_eval} | {cpu} |")  # fmt: skip

    conc_rows = "\n".join(conc_row(name, c) for name, c in conc.items())
    from importlib.metadata import version

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())  # fmt: skip
    text = f"""## Triton

`{" ".join(["python benchmarks/bench_triton.py", *sys.argv[1:]])}`

Model `{args.magenta.name}` (Magenta decoder-only LSTM, H = {info.dims.dec_size}, M = {info.dims.num_mixture}, N_max = {info.max_seq_len}),
imported to ONNX. Server: the tritonserver 2.51 binary of nvidia-pytriton on 127.0.0.1, cpu-flavor
repository (`sketchkit serve build-repo --flavor cpu`): `owl_generate` runs `sketchkit.engine` in the
Python backend (onnxruntime, {args.intra_op_threads} intra-op threads, {args.engines} engine(s), continuous batching
across requests). Clients in
the same process, one gRPC channel per thread (`sketchkit.Client`). Machine: {cpu}, {os.cpu_count()} CPUs
**shared** by server, clients and other work (1-min load average {", ".join(f"{x:.1f}" for x in loads)} at
start / after the one-request runs / at the end); onnxruntime {version("onnxruntime")},
tritonclient {version("tritonclient")}, numpy {np.__version__}.

One request, `generate -n {args.n} --tau {args.tau}` (median of {args.runs} seeds; Triton results compared
with the in-process sketches of the same seed):

| way | time | vs in process | bit-identical |
|---|---|---|---|
{one_rows}

Concurrent clients, one sketch per request (tau {args.tau}, a different seed per request):

| clients x requests each | sketches/s | p50 latency | p99 latency | errors | wall | sketches per graph evaluation | CPU per sketch, server + clients |
|---|---|---|---|---|---|---|---|
{conc_rows}

- Targets (issue 9): one request <= 1.3x in process; 16 clients >= 150 sketches/s, p99 <= 1 s, 0 errors.
- "sketches per graph evaluation": the engine's rows stepped / decoder evaluations over that run
  (its statistics line in the server log), i.e. how many clients' sketches shared each step.
- "CPU per sketch": CPU time of tritonserver with its Python stub (the engine runs there), and of
  this process (the client threads), over the sketches made: what each sketch costs the machine.
- In process, 16 threads share one onnxruntime runtime and each call runs its own loop (no
  batching across threads): the old way a service would have used the library.
"""
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"updated {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
