"""Sampling speed: the batched in-process sampler against a batch-1 PyTorch loop, same model.

    .venv/bin/python benchmarks/bench_sampling.py --magenta ../shared/data/magenta-gen/owl.gen.json

Measured in one run, on the same weights (the PyTorch model is checked against the ONNX graph):
- sampler: `Sampler(OnnxRuntime(dir)).generate(50, tau=0.3)` - all rows in one batch per step,
  finished rows removed;
- baseline: one sketch at a time, batch 1, `SketchRNN.step` in PyTorch then the per-step numpy
  sampling of magenta's `sample()` (softmax with temperature, inverse-CDF index, multivariate
  normal), as the common reimplementations do;
- floor: one batched matrix product per step ([B, 5 + H] x [5 + H, 4H] in onnxruntime, the
  LSTM's), at exactly the batch sizes the sampler ran: what the step could cost at the least;
- cold start: `sketchkit generate DIR -n 50 --tau 0.3 -o x.png` as a subprocess (import, load,
  sample, PNG), median of 5.
Writes the "Sampling" section of benchmarks/RESULTS.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from sketchkit.export.magenta import import_magenta, read_magenta, to_sketchrnn
from sketchkit.runtimes.onnx import OnnxRuntime, open_session
from sketchkit.sampling import Sampler, SamplingOptions

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from results import RESULTS, write_section  # noqa: E402  (one section writer for RESULTS.md)


class Schedule:
    """The runtime, recording the batch size of every step and the time spent in the graphs."""

    def __init__(self, runtime: OnnxRuntime) -> None:
        self.inner, self.info = runtime, runtime.info
        self.batches: list[int] = []
        self.seconds = 0.0

    def init_state(self, z, batch):
        return self.inner.init_state(z, batch)

    def step(self, prev, z, state):
        t = time.perf_counter()
        out = self.inner.step(prev, z, state)
        self.seconds += time.perf_counter() - t
        self.batches.append(len(prev))
        return out

    def encode(self, strokes, lengths):
        return self.inner.encode(strokes, lengths)

    def close(self):
        self.inner.close()


# ---------------------------------------------------------------------------------------------
# the baseline: magenta's sample(), one sketch at a time


def _get_pi_idx(x: float, pdf: np.ndarray) -> int:
    """magenta's inverse CDF (returns -1 when it runs off the end)."""
    accumulate = 0.0
    for i in range(pdf.size):
        accumulate += pdf[i]
        if accumulate >= x:
            return i
    return -1


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def batch1_loop(model, info, n: int, tau: float, rng: np.random.Generator) -> tuple[list[int], float]:
    """n sketches, each its own loop of batch-1 PyTorch steps; -> (lengths, seconds in torch)."""
    M, sqrt_tau = info.dims.num_mixture, np.sqrt(tau)
    lengths, torch_seconds = [], 0.0
    start = torch.tensor([info.start_token], dtype=torch.float32)
    with torch.inference_mode():
        for _ in range(n):
            state = model.init_state(None, batch=1)
            prev = start
            length = info.max_seq_len
            for t in range(info.max_seq_len):
                t0 = time.perf_counter()
                params, state = model.step(prev, None, state)
                p = params[0].numpy().astype(np.float64)
                torch_seconds += time.perf_counter() - t0
                q = _softmax(p[:3] / tau)
                pi = _softmax(p[3 : 3 + M] / tau)
                j = _get_pi_idx(rng.random(), pi)
                pen = _get_pi_idx(rng.random(), q)
                mx, my = p[3 + M + j], p[3 + 2 * M + j]
                sx, sy = np.exp(p[3 + 3 * M + j]) * sqrt_tau, np.exp(p[3 + 4 * M + j]) * sqrt_tau
                rho = np.tanh(p[3 + 5 * M + j])
                cov = [[sx * sx, rho * sx * sy], [rho * sx * sy, sy * sy]]
                dx, dy = rng.multivariate_normal([mx, my], cov)
                if pen == 2:
                    length = t
                    break
                nxt = [dx, dy, 0.0, 0.0, 0.0]
                nxt[2 + pen] = 1.0
                prev = torch.tensor([nxt], dtype=torch.float32)
            lengths.append(length)
    return lengths, torch_seconds


# ---------------------------------------------------------------------------------------------
# the floor: one batched matrix product per step


def matmul_session(k: int, n: int, threads: int | None) -> ort.InferenceSession:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, n)).astype(np.float32) * 0.05, "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "floor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])], initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return open_session(model.SerializeToString(), threads)


def floor_seconds(session: ort.InferenceSession, k: int, batches: list[int]) -> float:
    xs = {b: np.random.default_rng(b).standard_normal((b, k)).astype(np.float32) for b in set(batches)}
    t = time.perf_counter()
    for b in batches:
        session.run(None, {"x": xs[b]})
    return time.perf_counter() - t


def numpy_floor_seconds(k: int, n: int, batches: list[int]) -> float:
    w = np.random.default_rng(0).standard_normal((k, n)).astype(np.float32)
    xs = {b: np.random.default_rng(b).standard_normal((b, k)).astype(np.float32) for b in set(batches)}
    t = time.perf_counter()
    for b in batches:
        xs[b] @ w
    return time.perf_counter() - t


# ---------------------------------------------------------------------------------------------
# cold start


def cold_start(model_dir: Path, runs: int) -> tuple[list[float], list[float], list[float]]:
    """Wall times of the whole command, of `import sketchkit.cli`, and of `python -c pass`."""
    exe = Path(sys.executable).parent / "sketchkit"
    command = [str(exe), "generate", str(model_dir), "-n", "50", "--tau", "0.3", "-o", "x.png"]
    times: dict[str, list[float]] = {"command": [], "import": [], "python": []}
    with tempfile.TemporaryDirectory() as cwd:
        for _ in range(runs):
            for key, argv in (
                ("command", command),
                ("import", [sys.executable, "-c", "import sketchkit.cli, sketchkit.cli.sample"]),
                ("python", [sys.executable, "-c", "pass"]),
            ):
                t = time.perf_counter()
                subprocess.run(argv, cwd=cwd, check=True, capture_output=True)
                times[key].append(time.perf_counter() - t)
        assert (Path(cwd) / "x.png").stat().st_size > 0
    return times["command"], times["import"], times["python"]


# ---------------------------------------------------------------------------------------------


def same_model(model, runtime: OnnxRuntime) -> float:
    """Max |onnx - torch| / (1 + |torch|) of one step's outputs: relative, as float32 rounding is
    (parameters reach ~20 on real models), absolute near 0."""
    rng = np.random.default_rng(0)
    prev = rng.standard_normal((4, 5)).astype(np.float32)
    state = (rng.standard_normal((4, runtime.info.dims.state_size)) * 0.5).astype(np.float32)
    p_onnx, s_onnx = runtime.step(prev, None, state)
    with torch.inference_mode():
        p_torch, s_torch = model.step(torch.from_numpy(prev), None, torch.from_numpy(state))
    p_torch, s_torch = p_torch.numpy(), s_torch.numpy()
    return float(max((np.abs(p_onnx - p_torch) / (1 + np.abs(p_torch))).max(),
                     (np.abs(s_onnx - s_torch) / (1 + np.abs(s_torch))).max()))


def sampler_runs(model_dir: Path, threads: int, n: int, tau: float, runs: int) -> list[dict[str, float]]:
    """`runs` timed generate() calls (after a warm-up), each with the floor at its batch sizes."""
    runtime = Schedule(OnnxRuntime(model_dir, threads=threads or None))
    H = runtime.info.dims.dec_size
    k = 5 + H
    floor_session = matmul_session(k, 4 * H, threads or None)
    sampler = Sampler(runtime)
    sampler.generate(n, options=SamplingOptions(tau=tau, seed=0))  # warm-up: sessions, allocator, caches
    floor_seconds(floor_session, k, [n] * 20)
    out = []
    for r in range(runs):
        runtime.batches, runtime.seconds = [], 0.0
        t = time.perf_counter()
        sketches = sampler.generate(n, options=SamplingOptions(tau=tau, seed=r))
        total = time.perf_counter() - t
        floor = floor_seconds(floor_session, k, runtime.batches)
        row = dict(total=total, graphs=runtime.seconds, points=sum(len(s) for s in sketches),
                   steps=len(runtime.batches), floor=floor, np_floor=numpy_floor_seconds(k, 4 * H, runtime.batches),
                   full_floor=floor_seconds(floor_session, k, [n] * len(runtime.batches)))
        out.append(row)
        print(f"threads {threads or 'default'} run {r}: {total:.3f} s, {row['points']} points, {row['steps']} steps, "
              f"graphs {runtime.seconds:.3f} s, floor {floor:.3f} s ({floor / total:.0%})", file=sys.stderr)
    return out


def median(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--magenta", type=Path, default=ROOT.parent / "shared/data/magenta-gen/owl.gen.json",
                    help="Magenta decoder-only JSON model: the weights of both sides")
    ap.add_argument("--model", type=Path, default=None, help="its exported model directory [default: export it now]")
    ap.add_argument("-n", type=int, default=50)
    ap.add_argument("--tau", type=float, default=0.3)
    ap.add_argument("--runs", type=int, default=5, help="sampler and floor repetitions (median)")
    ap.add_argument("--baseline-runs", type=int, default=2)
    ap.add_argument("--cold-runs", type=int, default=5)
    ap.add_argument("--threads", type=int, nargs="+", default=[0, 1],
                    help="onnxruntime intra-op thread counts to measure (0 = its default, the physical cores)")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="PyTorch threads for the batch-1 loop [default 1: its fastest here; 0 = torch's default]")
    ap.add_argument("--no-write", action="store_true", help="print, do not update RESULTS.md")
    args = ap.parse_args()

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    model = to_sketchrnn(read_magenta(args.magenta))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = Path(tmp) / args.magenta.name.split(".")[0]
            print(f"exporting {args.magenta} -> {model_dir}", file=sys.stderr)
            import_magenta(args.magenta, model_dir)
        info = OnnxRuntime(model_dir).info
        diff = same_model(model, OnnxRuntime(model_dir))
        assert diff < 1e-4, f"the ONNX graph and the PyTorch model differ by {diff} (relative)"
        loads = [os.getloadavg()[0]]
        configs = {th: sampler_runs(model_dir, th, args.n, args.tau, args.runs) for th in args.threads}
        base = []
        for r in range(args.baseline_runs):
            t = time.perf_counter()
            lengths, torch_s = batch1_loop(model, info, args.n, args.tau, np.random.default_rng(100 + r))
            total = time.perf_counter() - t
            base.append(dict(total=total, torch=torch_s, points=sum(lengths)))
            print(f"batch-1 run {r}: {total:.3f} s, {sum(lengths)} points, torch {torch_s:.3f} s", file=sys.stderr)
        loads.append(os.getloadavg()[0])
        cmd, imp, py = cold_start(model_dir, args.cold_runs)
        loads.append(os.getloadavg()[0])

    b_total, b_points, b_torch = median(base, "total"), median(base, "points"), median(base, "torch")
    b_rate, b_pps = args.n / b_total, b_points / b_total
    H, k = info.dims.dec_size, 5 + info.dims.dec_size
    rows = []
    for th, runs in configs.items():
        total, points = median(runs, "total"), median(runs, "points")
        of_floor = statistics.median(r["floor"] / r["total"] for r in runs)
        rows.append(
            f"| in-process sampler, onnxruntime threads {th or 'default (' + str(os.cpu_count()) + ')'} | {total:.3f} s "
            f"| {args.n / total:.1f} | {points / total:.0f} | **{args.n / total / b_rate:.1f}x** "
            f"| {points / total / b_pps:.1f}x | **{of_floor:.0%}** (floor {median(runs, 'floor'):.3f} s; "
            f"graphs {median(runs, 'graphs') / total:.0%} of the time) |"
        )
    rows.append(f"| batch-1 PyTorch loop, {torch.get_num_threads()} thread(s), magenta-style sampling | {b_total:.3f} s "
                f"| {b_rate:.2f} | {b_pps:.0f} | 1x | 1x | |")
    rows.append(f"| &nbsp;&nbsp;its PyTorch steps alone | {b_torch:.3f} s | | {b_points / b_torch:.0f} | | | |")
    first = next(iter(configs.values()))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    command = " ".join(["python benchmarks/bench_sampling.py", *sys.argv[1:]])
    table = "\n".join(rows)
    text = f"""## Sampling

`{command}`

Model `{args.magenta.name}` (Magenta decoder-only LSTM, H = {H}, M = {info.dims.num_mixture}, N_max = {info.max_seq_len}),
exported to ONNX; the PyTorch side loads the same JSON and agrees with the graph to {diff:.1e} on one step.
n = {args.n} sketches at tau = {args.tau} (rule {info.temperature_rule}); medians of {args.runs} sampler runs
per configuration and {args.baseline_runs} baseline runs, in one process. Machine: {cpu}, {os.cpu_count()} CPUs,
**shared** (1-min load average {', '.join(f'{x:.1f}' for x in loads)} at start / after the loops / after
the cold starts); onnxruntime {ort.__version__}, torch {torch.__version__}, numpy {np.__version__}.

| | time for {args.n} sketches | sketches/s | points/s | vs batch-1 loop | points/s vs batch-1 | of the floor |
|---|---|---|---|---|---|---|
{table}

- batch-1 loop: one sketch at a time, `SketchRNN.step` on batch 1 in PyTorch, then magenta's
  per-step numpy sampling (inverse-CDF index, `multivariate_normal`); its PyTorch steps alone are
  the row below it.
- floor: one batched matrix product per step, [B, {k}] x [{k}, {4 * H}] (the LSTM's) in onnxruntime
  with the same session options, at exactly the batch sizes the sampler ran ({median(first, 'steps'):.0f} steps;
  finished rows leave the batch); "of the floor" = floor time / sampler time, per run. numpy's
  matmul for the same schedule: {median(first, 'np_floor'):.3f} s. For context only: the same product
  at the full batch of {args.n} for every step (a loop that keeps finished rows) takes
  {median(first, 'full_floor'):.3f} s, i.e. the sampler runs in {statistics.median(r['total'] / r['full_floor'] for r in first):.2f}x that.

Cold start of `sketchkit generate DIR -n 50 --tau 0.3 -o x.png` (subprocess: import, load, sample, PNG),
median of {args.cold_runs}: **{statistics.median(cmd):.2f} s** (runs {', '.join(f'{x:.2f}' for x in cmd)}).
For reference `import sketchkit.cli, sketchkit.cli.sample` takes {statistics.median(imp):.2f} s and
`python -c pass` {statistics.median(py):.2f} s.

Targets: >= 15x the batch-1 loop, >= 70 % of the floor, cold start <= 1.5 s.
"""
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"updated {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
