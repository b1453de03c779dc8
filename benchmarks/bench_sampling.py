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
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from export.magenta import import_magenta, read_magenta, to_sketchrnn
from sketchkit.runtime_onnx import OnnxRuntime
from sketchkit.sampling import Sampler, SamplingOptions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"


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
    M, sqrt_tau = info.num_mixture, np.sqrt(tau)
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
    opts = ort.SessionOptions()
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


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
    """Max abs difference of one step's outputs between PyTorch and the ONNX graph."""
    rng = np.random.default_rng(0)
    prev = rng.standard_normal((4, 5)).astype(np.float32)
    state = (rng.standard_normal((4, runtime.info.state_size)) * 0.5).astype(np.float32)
    p_onnx, s_onnx = runtime.step(prev, None, state)
    with torch.inference_mode():
        p_torch, s_torch = model.step(torch.from_numpy(prev), None, torch.from_numpy(state))
    return float(max(np.abs(p_onnx - p_torch.numpy()).max(), np.abs(s_onnx - s_torch.numpy()).max()))


def write_section(text: str) -> None:
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Sampling\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(new)


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
    ap.add_argument("--threads", type=int, default=None, help="onnxruntime intra-op threads [default: its own]")
    ap.add_argument("--no-write", action="store_true", help="print, do not update RESULTS.md")
    args = ap.parse_args()

    model = to_sketchrnn(read_magenta(args.magenta))
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            model_dir = Path(tmp) / args.magenta.name.split(".")[0]
            print(f"exporting {args.magenta} -> {model_dir}", file=sys.stderr)
            import_magenta(args.magenta, model_dir)
        runtime = OnnxRuntime(model_dir, threads=args.threads)
        info = runtime.info
        diff = same_model(model, runtime)
        assert diff < 1e-4, f"the ONNX graph and the PyTorch model differ by {diff}"
        H, k = info.dec_size, 5 + info.dec_size
        floor_session = matmul_session(k, 4 * H, args.threads)
        sampler = Sampler(Schedule(runtime))
        load = os.getloadavg()[0]

        options = SamplingOptions(tau=args.tau, seed=0)
        sampler.generate(args.n, options=options)  # warm-up: sessions, allocator, caches
        floor_seconds(floor_session, k, [args.n] * 20)
        runs = []
        for r in range(args.runs):
            rt = sampler.runtime
            rt.batches, rt.seconds = [], 0.0
            t = time.perf_counter()
            sketches = sampler.generate(args.n, options=SamplingOptions(tau=args.tau, seed=r))
            total = time.perf_counter() - t
            points = sum(len(s) for s in sketches)
            floor = floor_seconds(floor_session, k, rt.batches)
            np_floor = numpy_floor_seconds(k, 4 * H, rt.batches)
            runs.append(dict(total=total, graphs=rt.seconds, points=points, steps=len(rt.batches),
                             floor=floor, np_floor=np_floor))
            print(f"sampler run {r}: {total:.3f} s, {points} points, {len(rt.batches)} steps, "
                  f"graphs {rt.seconds:.3f} s, floor {floor:.3f} s", file=sys.stderr)

        base = []
        for r in range(args.baseline_runs):
            t = time.perf_counter()
            lengths, torch_s = batch1_loop(model, info, args.n, args.tau, np.random.default_rng(100 + r))
            total = time.perf_counter() - t
            base.append(dict(total=total, torch=torch_s, points=sum(lengths)))
            print(f"batch-1 run {r}: {total:.3f} s, {sum(lengths)} points, torch {torch_s:.3f} s", file=sys.stderr)
        load = max(load, os.getloadavg()[0])

    cold_dir = args.model or None
    with tempfile.TemporaryDirectory() as tmp:
        if cold_dir is None:
            cold_dir = Path(tmp) / "m"
            import_magenta(args.magenta, cold_dir)
        cmd, imp, py = cold_start(cold_dir, args.cold_runs)

    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    s_total, s_points = med(runs, "total"), med(runs, "points")
    b_total, b_points, b_torch = med(base, "total"), med(base, "points"), med(base, "torch")
    floor, np_floor, graphs = med(runs, "floor"), med(runs, "np_floor"), med(runs, "graphs")
    s_rate, b_rate = args.n / s_total, args.n / b_total
    s_pps, b_pps = s_points / s_total, b_points / b_total
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    command = " ".join(["python benchmarks/bench_sampling.py", *sys.argv[1:]])
    text = f"""## Sampling

`{command}` — model `{args.magenta.name}` (decoder-only LSTM H={H}, M={info.num_mixture}, N_max={info.max_seq_len}),
n = {args.n}, tau = {args.tau}, rule {info.temperature_rule}. ONNX and PyTorch weights agree to {diff:.1e} on one step.
Machine: {cpu}, {os.cpu_count()} CPUs, load average up to {load:.1f} during the run (shared machine);
onnxruntime {ort.__version__} (intra-op threads {args.threads or 'default'}), torch {torch.__version__}
({torch.get_num_threads()} threads), numpy {np.__version__}. Medians of {args.runs} sampler runs and
{args.baseline_runs} baseline runs.

| | time for {args.n} sketches | sketches/s | points/s | vs batch-1 loop |
|---|---|---|---|---|
| in-process sampler (batched, onnxruntime) | {s_total:.3f} s | {s_rate:.1f} | {s_pps:.0f} | **{s_rate / b_rate:.1f}x** (points/s {s_pps / b_pps:.1f}x) |
| batch-1 PyTorch loop (magenta-style sampling) | {b_total:.3f} s | {b_rate:.2f} | {b_pps:.0f} | 1x |
| &nbsp;&nbsp;of which PyTorch steps | {b_torch:.3f} s | | | sampler vs these alone: {s_pps / (b_points / b_torch):.1f}x (points/s) |

Floor (one batched matrix product [B, {k}] x [{k}, {4 * H}] per step, at the sampler's own batch sizes,
{med(runs, 'steps'):.0f} steps): onnxruntime {floor:.3f} s, numpy {np_floor:.3f} s. The sampler reaches
**{floor / s_total:.0%} of the onnxruntime floor** (graphs {graphs:.3f} s = {graphs / s_total:.0%} of its time,
sampling in numpy the rest).

Cold start of `sketchkit generate DIR -n 50 --tau 0.3 -o x.png` (subprocess, import → load → sample →
PNG), median of {args.cold_runs}: **{statistics.median(cmd):.2f} s** (runs {', '.join(f'{x:.2f}' for x in cmd)});
`import sketchkit.cli, sketchkit.cli.sample` {statistics.median(imp):.2f} s, `python -c pass` {statistics.median(py):.2f} s.

Targets: >= 15x the batch-1 loop, >= 70 % of the floor, cold start <= 1.5 s.
"""
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"updated {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
