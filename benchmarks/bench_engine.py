"""The decode engine alone, in process (no Triton): concurrent one-sketch requests, continuous batching.

    PYTHONPATH=. python benchmarks/bench_engine.py --model ../shared/data/magenta-gen/owl.gen.json
    PYTHONPATH=. python benchmarks/bench_engine.py --model OWL_DIR --threads 1 2 4 --workers 1 2 4 --json e.json --no-write
    PYTHONPATH=. taskset -c 0,1 python benchmarks/bench_engine.py --model OWL_DIR --json e2.json --no-write  # 2 cores

Needs numpy and onnxruntime only (plus onnx when --model is a Magenta `.gen.json`, converted torch-free
by `sketchkit.magenta_onnx`); sketchkit need not be installed (run from the repository root with
PYTHONPATH=.), and nothing on its import path imports cairosvg, platformdirs or tritonclient.

One run measures, on onnxruntime runtimes of `--threads` intra-op threads (each value in turn):
1. baseline: the one-request in-process `Sampler`, `generate(1)` one sketch at a time (one thread),
   and 16 threads sharing the Sampler without the engine (each call its own loop);
2. the engine: a `BackgroundEngine` of `--workers` engines (1: the one thread the Triton generate
   model runs; K: K engines, each stepped by its own thread, a request going to the least
   loaded), C client threads (C = --clients, default 16 and 64) each submitting one-sketch
   requests (tau 0.3, seed fixed per request) one at a time, --per-client each: sketches/s,
   p50/p99 latency from submit to answer, mean rows per decoder evaluation, the share of the
   engine threads' time spent in the graph, and the process's CPU time per sketch; the sketches
   of the baseline's seeds are compared bit for bit with the engine's;
3. the ceiling: the decoder step alone (graph only, fixed inputs) at batches 1, 8, 16, 64 and the
   engine's, one stream, and K streams stepping at once: ms per step, GFLOP/s (plain LSTM cells:
   2 (4H (5 + Nz + H) + H P) FLOPs per row) and the sketches/s that rate allows, given the mean
   steps per sketch.
4. the engine's own work per step without the graph (a runtime returning fixed parameters),
   at 16 and 64 rows in flight: CPU microseconds per step;
Writes the "Engine" section of benchmarks/RESULTS.md (--no-write: print only) and, with --json OUT,
every number to OUT.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's sketchkit, installed or not
sys.path.insert(1, str(Path(__file__).parent))
from results import RESULTS, write_section  # noqa: E402  (one section writer for RESULTS.md)

from sketchkit.engine import BackgroundEngine, Engine, Request, Scheduler  # noqa: E402
from sketchkit.runtimes.onnx import OnnxRuntime  # noqa: E402
from sketchkit.sampling import Sampler, SamplingOptions  # noqa: E402


class Timed:
    """The runtime, adding up the seconds spent in its decoder step (the engine thread's only caller)."""

    def __init__(self, runtime: OnnxRuntime) -> None:
        self.inner, self.info = runtime, runtime.info
        self.seconds = 0.0
        self.lock = threading.Lock()  # several engine threads

    def init_state(self, z, batch):
        return self.inner.init_state(z, batch)

    def step(self, prev, z, state):
        t = time.perf_counter()
        out = self.inner.step(prev, z, state)
        with self.lock:
            self.seconds += time.perf_counter() - t
        return out

    def step_and_draw(self, *columns):
        t = time.perf_counter()
        out = self.inner.step_and_draw(*columns)
        with self.lock:
            self.seconds += time.perf_counter() - t
        return out

    def encode(self, strokes, lengths):
        return self.inner.encode(strokes, lengths)

    def close(self):
        self.inner.close()


def load_model(spec: str, tmp: Path) -> Path:
    """A model directory (model.json + graphs) as it is, or a Magenta JSON converted torch-free."""
    path = Path(spec)
    if path.is_dir():
        return path
    if path.is_file() and path.name.endswith(".json") and path.name != "model.json":
        from sketchkit.magenta_onnx import import_magenta  # needs onnx; only here

        out = tmp / "model"
        t = time.perf_counter()
        import_magenta(path, out, name=path.name.split(".")[0])
        print(f"converted {path} -> {out} in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        return out
    if path.is_file():
        return path.parent
    sys.exit(f"error: --model {spec}: no such model directory or Magenta .json file")


def summary(latencies: list[float], wall: float, errors: int) -> dict[str, float]:
    ms = np.array(latencies or [np.nan]) * 1e3
    return dict(sketches=len(latencies), wall_s=wall, rate=len(latencies) / wall, p50_ms=float(np.percentile(ms, 50)),
                p99_ms=float(np.percentile(ms, 99)), errors=errors)  # fmt: skip


def run_clients(ask, clients: int, per_client: int) -> dict[str, float]:
    """`clients` threads, each calling ask(seed) per_client times one after the other."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        barrier.wait()
        for i in range(per_client):
            t = time.perf_counter()
            try:
                ask(seed_of(c, i))
            except Exception as e:  # counted and reported
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(clients)]
    for th in threads:
        th.start()
    barrier.wait()
    t = time.perf_counter()
    for th in threads:
        th.join()
    out = summary(latencies, time.perf_counter() - t, len(errors))
    if errors:
        print(f"  first error: {errors[0]}", file=sys.stderr)
    return out


def seed_of(client: int, i: int) -> int:
    return client * 1000 + i


def engine_run(sampler: Sampler, timed: Timed, tau: float, clients: int, per_client: int, keep: set[int], workers: int):
    """C clients through one BackgroundEngine of `workers` engines; returns (summary, sketches of
    the seeds in `keep`, lengths)."""
    engines = [Engine(timed, Scheduler()) for _ in range(workers)]
    background = BackgroundEngine(engines[0] if workers == 1 else engines)
    kept: dict[int, list[np.ndarray]] = {}
    lengths: list[int] = []
    lock = threading.Lock()

    def ask(seed: int) -> None:
        request: Request = sampler.generation(1, options=SamplingOptions(tau=tau, seed=seed))
        done = threading.Event()
        request.on_done = lambda _: done.set()
        background.submit(request)
        done.wait()
        sketches = request.sketches()
        with lock:
            lengths.append(int(request.lengths[0]))  # type: ignore[index]
            if seed in keep:
                kept[seed] = sketches

    timed.seconds = 0.0
    cpu = time.process_time()
    result = run_clients(ask, clients, per_client)
    cpu = time.process_time() - cpu  # the whole process: engines, clients, onnxruntime's threads
    background.stop()
    result["cpu_ms_per_sketch"] = 1e3 * cpu / max(result["sketches"], 1)
    result["cores_used"] = cpu / result["wall_s"]
    evaluations = sum(e.evaluations for e in engines)
    result["evaluations"] = evaluations
    result["rows_per_evaluation"] = sum(e.rows_stepped for e in engines) / max(evaluations, 1)
    result["graph_s"] = timed.seconds  # all engines' threads together
    result["graph_share"] = timed.seconds / result["wall_s"] / workers  # of each engine thread's time
    result["ms_per_evaluation"] = 1e3 * result["wall_s"] * workers / max(evaluations, 1)  # per engine
    return result, kept, lengths


def graph_only(runtime: OnnxRuntime, batch: int, streams: int = 1, seconds: float = 1.0) -> tuple[float, float]:
    """(seconds, CPU seconds) per decoder step at `batch` rows, fixed inputs (the state fed back),
    graph only; `streams` threads stepping at once, each its own batch (the seconds of one
    stream's step; the CPU of the whole process, onnxruntime's threads included, per step: what
    a step costs the machine, which other load on it disturbs far less than the seconds)."""
    info = runtime.info
    steps = [0] * streams
    barrier = threading.Barrier(streams + 1)
    stop = threading.Event()

    def stream(k: int) -> None:
        prev = np.tile(np.asarray(info.start_token, np.float32), (batch, 1))
        z = np.zeros((batch, info.dims.z_size), np.float32) if info.dims.vae else None
        state = np.zeros((batch, info.dims.state_size), np.float32)
        for _ in range(20):
            _, state = runtime.step(prev, z, state)
        barrier.wait()
        while not stop.is_set():
            for _ in range(10):
                _, state = runtime.step(prev, z, state)
            steps[k] += 10

    threads = [threading.Thread(target=stream, args=(k,), daemon=True) for k in range(streams)]
    for th in threads:
        th.start()
    barrier.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join()
    return (time.perf_counter() - t0) * streams / sum(steps), (time.process_time() - c0) / sum(steps)


class FixedParams:
    """A runtime whose step and draw cost nothing: points drawn once (by the real graph, from the
    model's own parameters of one step at the start token), handed out by counter, and the state
    passed through; what is left of a step is the engine's own work (the row table, retiring,
    admitting)."""

    POOL = 1 << 16

    def __init__(self, runtime: OnnxRuntime, rows: int) -> None:
        from sketchkit.draw import row_keys

        info = self.info = runtime.info
        z = np.zeros((self.POOL, info.dims.z_size), np.float32) if info.dims.vae else None
        prev = np.tile(np.asarray(info.start_token, np.float32), (self.POOL, 1))
        t = np.tile(np.array([0.3, 0.3**0.5], np.float32), (self.POOL, 1))
        self.points, _, _ = runtime.step_and_draw(prev, z, runtime.init_state(z, self.POOL), t, np.zeros(self.POOL, bool), row_keys(0, self.POOL))

    def init_state(self, z, batch):
        return np.zeros((batch, self.info.dims.state_size), np.float32)

    def step_and_draw(self, prev, z, state, temperature, greedy, counter):
        return self.points[(counter >> np.uint64(2)) % np.uint64(self.POOL)], state, counter + np.uint64(4)


def engine_overhead(runtime: OnnxRuntime, rows: int, tau: float, steps: int = 2000, repeats: int = 5) -> float:
    """CPU seconds of one engine step without the graph (`FixedParams`), `rows` one-sketch
    requests in flight (a finished one replaced at once), best of `repeats`."""
    fixed = FixedParams(runtime, rows)
    sampler = Sampler(fixed)  # type: ignore[arg-type]
    best = float("inf")
    for _ in range(repeats):
        engine, seed = Engine(fixed), 0  # type: ignore[arg-type]
        for _ in range(rows):
            engine.add(sampler.generation(1, options=SamplingOptions(tau=tau, seed=seed)))
            seed += 1
        t = time.thread_time()
        for _ in range(steps):
            for request in engine.step():
                request.sketches()
                engine.add(sampler.generation(1, options=SamplingOptions(tau=tau, seed=seed)))
                seed += 1
        best = min(best, (time.thread_time() - t) / steps)
    return best


def flops_per_row(info) -> float | None:
    """FLOPs of one decoder step for one row (multiply-adds x 2; plain LSTM cells only)."""
    d = info.dims
    if d.cell != "lstm":
        return None
    h, p = d.dec_size, 6 * d.num_mixture + 3
    x = 5 + d.z_size
    return 2.0 * (4 * h * (x + h) + h * p)


def machine() -> str:
    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))  # fmt: skip
    return f"{cpu}, {os.cpu_count()} CPUs"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = ROOT.parent / "shared/data/magenta-gen/owl.gen.json"
    ap.add_argument("--model", default=str(default) if default.exists() else None, required=not default.exists(),
                    help="a model directory (model.json + ONNX) or a Magenta .gen.json (converted torch-free)")  # fmt: skip
    ap.add_argument("--tau", type=float, default=0.3)
    ap.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--per-client", type=int, default=50, help="one-sketch requests per client thread")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                    help="onnxruntime intra-op threads (0: its default); several: each is run (the first for the baseline)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="engines, each stepped by its own thread (a request goes to the least loaded); several: each is run")
    ap.add_argument("--baseline", type=int, default=20, help="one-sketch Sampler calls in the one-thread baseline")
    ap.add_argument("--baseline-per-client", type=int, default=5, help="calls per thread, Sampler without the engine")
    ap.add_argument("--json", type=Path, help="write every number to this file")
    ap.add_argument("--no-write", action="store_true", help="print, do not update RESULTS.md")
    args = ap.parse_args()

    import onnxruntime as ort

    partial: dict = dict(command=" ".join(["PYTHONPATH=. python benchmarks/bench_engine.py", *sys.argv[1:]]),
                         machine=machine(), numpy=np.__version__, onnxruntime=ort.__version__, partial=True)  # fmt: skip

    def save(**more) -> None:
        """--json after every stage: a run cut short by a time limit still leaves what it measured."""
        partial.update(more)
        if args.json:
            args.json.write_text(json.dumps(partial, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = load_model(args.model, Path(tmp))
        runtimes = {t: OnnxRuntime(model_dir, threads=t or None) for t in args.threads}
        runtime = runtimes[args.threads[0]]
        info = runtime.info
        sampler = Sampler(runtime)
        loads = [os.getloadavg()[0]]
        print(f"model {info.name}: {info.dims.cell} H={info.dims.dec_size} M={info.dims.num_mixture}", file=sys.stderr)

        # 1. baseline: the one-request Sampler
        sampler.generate(1, options=SamplingOptions(tau=args.tau, seed=10**6))  # warm-up (sessions, allocations)
        keep = [seed_of(c, i) for c in range(2) for i in range(args.baseline // 2)]
        reference, times = {}, []
        for seed in keep:
            t = time.perf_counter()
            reference[seed] = sampler.generate(1, options=SamplingOptions(tau=args.tau, seed=seed))
            times.append(time.perf_counter() - t)
        base = summary(times, sum(times), 0)
        print(f"baseline Sampler, one thread: {base}", file=sys.stderr)
        shared = run_clients(lambda s: sampler.generate(1, options=SamplingOptions(tau=args.tau, seed=s)),
                             16, args.baseline_per_client)  # fmt: skip
        print(f"baseline Sampler, 16 threads, no engine: {shared}", file=sys.stderr)
        save(baseline=dict(threads=args.threads[0], one_thread=base, threads16_no_engine=shared))

        # 2. the engine, each configuration
        runs: list[dict] = []
        lengths: list[int] = []
        identical = True
        for threads in args.threads:
            timed = Timed(runtimes[threads])
            engine_sampler = Sampler(timed)  # type: ignore[arg-type]
            engine_sampler.generate(1, options=SamplingOptions(tau=args.tau, seed=10**6))
            for workers in args.workers:
                for clients in args.clients:
                    res, kept, lens = engine_run(engine_sampler, timed, args.tau, clients, args.per_client, set(keep), workers)
                    identical &= all(len(kept[s]) == len(reference[s]) and all(
                        np.array_equal(a, b) for a, b in zip(kept[s], reference[s], strict=True)) for s in kept)  # fmt: skip
                    res.update(threads=threads, workers=workers, clients=clients, compared=len(kept))
                    lengths += lens
                    runs.append(res)
                    save(engine=runs, bit_identical=identical)
                    print(f"engine, {threads} threads, {workers} engines, {clients} clients: {res}", file=sys.stderr)
        loads.append(os.getloadavg()[0])

        # 3. the ceiling: the graph alone, one stream at a time and `workers` streams at once
        steps = float(np.mean(lengths)) + 1  # the p3 step ends a sketch (not part of it) but is evaluated
        flops = flops_per_row(info)
        batches = sorted({1, 8, 16, 64, *(max(1, round(r["rows_per_evaluation"])) for r in runs)})
        ceiling = []
        for threads in args.threads:
            for streams in sorted({1, *args.workers}):
                for batch in batches if streams == 1 else sorted({16 // streams, 64 // streams} - {0}):
                    s, cpu = graph_only(runtimes[threads], batch, streams)
                    rows = streams * batch / s
                    c = dict(threads=threads, streams=streams, batch=batch, ms_per_step=1e3 * s, rows_per_s=rows,
                             gflops=None if flops is None else flops * rows / 1e9, sketches_per_s=rows / steps,
                             cpu_ms_per_step=1e3 * cpu,
                             gflops_per_core=None if flops is None else flops * batch / cpu / 1e9,
                             cpu_ms_per_sketch=1e3 * cpu / batch * steps)  # fmt: skip
                    ceiling.append(c)
                    save(graph_only=ceiling, steps_per_sketch=steps)
                    print(f"graph only: {c}", file=sys.stderr)
        loads.append(os.getloadavg()[0])

        # 4. the engine's own work per step, without the graph
        overhead = {str(rows): 1e6 * engine_overhead(runtime, rows, args.tau) for rows in (16, 64)}
        print(f"engine overhead per step, us: {overhead}", file=sys.stderr)

    results = dict(
        command=" ".join(["PYTHONPATH=. python benchmarks/bench_engine.py", *sys.argv[1:]]),
        machine=machine(), load=loads, numpy=np.__version__, onnxruntime=ort.__version__, python=platform.python_version(),
        model=dict(name=info.name, cell=info.dims.cell, dec_size=info.dims.dec_size, num_mixture=info.dims.num_mixture,
                   vae=info.dims.vae, flops_per_row_step=flops),
        tau=args.tau, per_client=args.per_client,
        baseline=dict(threads=args.threads[0], one_thread=base, threads16_no_engine=shared), engine=runs,
        bit_identical=identical,
        steps_per_sketch=dict(mean=steps, sketch_points_mean=float(np.mean(lengths)),
                              p50=float(np.median(lengths)), max=int(max(lengths))),
        graph_only=ceiling, engine_overhead_us=overhead,
    )  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    text = report(results)
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"updated {RESULTS}", file=sys.stderr)


def report(r: dict) -> str:
    b1, b16 = r["baseline"]["one_thread"], r["baseline"]["threads16_no_engine"]
    m = r["model"]
    rows = [f"| `Sampler.generate(1)`, one thread, one at a time | {r['baseline']['threads']} | - | {b1['rate']:.1f} "
            f"| {b1['p50_ms']:.0f} ms | {b1['p99_ms']:.0f} ms | 1 | - | - |",
            f"| `Sampler.generate(1)`, 16 threads, no engine | {r['baseline']['threads']} | - | {b16['rate']:.1f} "
            f"| {b16['p50_ms']:.0f} ms | {b16['p99_ms']:.0f} ms | 1 | - | - |"]  # fmt: skip
    for e in r["engine"]:
        rows.append(f"| engine, {e['clients']} clients x {r['per_client']} | {e['threads']} | {e['workers']} | **{e['rate']:.1f}** "
                    f"| {e['p50_ms']:.0f} ms | {e['p99_ms']:.0f} ms | {e['rows_per_evaluation']:.1f} "
                    f"| {e['ms_per_evaluation']:.2f} ms ({100 * e['graph_share']:.0f} % in the graph) "
                    f"| {e['cpu_ms_per_sketch']:.1f} ms ({e['cores_used']:.2f} cores) |")  # fmt: skip
    ceil = "\n".join(
        f"| {c['threads']} | {c['streams']} | {c['batch']} | {c['ms_per_step']:.3f} ms | {c['rows_per_s']:.0f} | "
        f"{'-' if c['gflops'] is None else format(c['gflops'], '.1f')} | {c['sketches_per_s']:.0f} "
        f"| {c['cpu_ms_per_step']:.3f} ms | {'-' if c['gflops_per_core'] is None else format(c['gflops_per_core'], '.1f')} "
        f"| {c['cpu_ms_per_sketch']:.2f} ms |"
        for c in r["graph_only"]
    )
    flops = m["flops_per_row_step"]
    s = r["steps_per_sketch"]
    return f"""## Engine (in process, no Triton)

`{r["command"]}`

Model {m["name"]} ({m["cell"]}, H = {m["dec_size"]}, M = {m["num_mixture"]}); onnxruntime {r["onnxruntime"]},
numpy {r["numpy"]}, Python {r["python"]}. Machine: {r["machine"]} (1-min load
{", ".join(f"{x:.1f}" for x in r["load"])} at start / after the engine runs / at the end).
Clients are threads in the same process; each asks for one sketch at a time (tau {r["tau"]}, a fixed
seed per request); latency is submit to answer; CPU per sketch: the process's CPU time (all threads)
over the sketches made, and the mean cores it kept busy. "threads": onnxruntime intra-op threads; "engines":
engines stepped by their own threads, a request going to the least loaded. The engine's sketches
of the baseline's seeds are bit-identical to the baseline's: **{"yes" if r["bit_identical"] else "NO"}**.

| way | threads | engines | sketches/s | p50 | p99 | rows per evaluation | per evaluation | CPU per sketch |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

The ceiling: the decoder step alone (graph only, fixed inputs); "streams" threads step at once, each its
own batch; {"-" if flops is None else f"{flops / 1e6:.2f} MFLOP"} per row and step; {s["mean"]:.1f} steps per sketch
(mean points {s["sketch_points_mean"]:.1f} + the end step; median {s["p50"]:.0f}, max {s["max"]}); sketches/s at
most = rows/s / steps per sketch. CPU per step: the process's CPU time (all threads) per step of one
stream; GFLOP per CPU-second and the graph's CPU per sketch follow from it:

| threads | streams | rows per step | step time | rows/s | GFLOP/s | sketches/s at most | CPU per step | GFLOP per CPU-s | graph CPU per sketch |
|---|---|---|---|---|---|---|---|---|---|
{ceil}

The engine's own work per step (random draws, mixture draw, row table) without the graph (a runtime
that returns fixed parameters; CPU time of the stepping thread, best of 5 x 2,000 steps):
{", ".join(f"**{us:.0f} us** at {rows} rows" for rows, us in r["engine_overhead_us"].items())}.
"""


if __name__ == "__main__":
    main()
