"""The torch-free Magenta importer: which decoder step runs faster, and the headline command on
the light install.

    .venv/bin/python benchmarks/bench_magenta_import.py --light-venv /tmp/light-venv

1. decoder step graphs for owl.gen.json (H = 512): plain nodes (one Gemm, Sigmoid, Tanh: what
   `sketchkit.magenta_onnx` builds) against ONNX's `LSTM` op with the same weights, run by
   onnxruntime with the sampler's session options at B = 1 and B = 50 (median of many calls,
   interleaved, one process).
2. with `--light-venv`: a venv holding `pip install -e .` only (it must fail `import torch`),
   `SKETCHKIT_ZOO_MIRROR` at a local `python -m http.server` over ../shared/data/magenta-gen and
   a fresh `SKETCHKIT_CACHE`: `sketchkit generate owl -n 50 --tau 0.3 -o owl.png` the first time
   (download + convert + sample + PNG) and cached; each run is a subprocess, medians of `--runs`.
Writes the "Magenta import without torch" section of benchmarks/RESULTS.md (benchmarks/results.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from sketchkit import magenta_onnx
from sketchkit.graphs import graphs_for
from sketchkit.magenta import magenta_info, read_magenta
from sketchkit.runtimes.onnx import open_session

sys.path.insert(0, str(Path(__file__).parent))
from results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Magenta import without torch"


def lstm_op_step(mm, info) -> onnx.ModelProto:  # type: ignore[no-untyped-def]
    """The decoder step with ONNX's `LSTM` op (one time step) instead of plain nodes."""
    H = mm.dims.dec_size
    b = magenta_onnx._Graph(graphs_for(info.dims.kind)[-1], info.sizes)
    W, R, B = magenta_onnx._onnx_lstm(mm, "dec_")
    W, R, B = (b.const(n, a[None]) for n, a in (("W", W), ("R", R), ("B", B)))
    h, c = b.op("Split", ["state", b.const("split", np.array([H, H], np.int64))], 2, axis=1)
    axis0 = b.const("axis0", np.array([0], np.int64))
    (x,) = b.op("Concat", ["prev", "z"] if mm.dims.vae else ["prev"], axis=1)
    (x3,) = b.op("Unsqueeze", [x, axis0])
    (h3,) = b.op("Unsqueeze", [h, axis0])
    (c3,) = b.op("Unsqueeze", [c, axis0])
    _, h_n, c_n = b.op("LSTM", [x3, W, R, B, "", h3, c3], 3, hidden_size=H)
    (h2,) = b.op("Squeeze", [h_n, axis0])
    (c2,) = b.op("Squeeze", [c_n, axis0])
    b.op(
        "Gemm",
        [h2, b.const("head_W", mm.weights["dec_output_w"]), b.const("head_b", mm.weights["dec_output_b"])],
        ["params"],
    )
    b.op("Concat", [h2, c2], ["next_state"], axis=1)
    return b.model("LSTM op variant")


def time_steps(sessions: dict[str, ort.InferenceSession], batch: int, calls: int) -> dict[str, float]:
    """Median seconds per decoder step for each session, calls interleaved."""
    rng = np.random.default_rng(0)
    prev = rng.standard_normal((batch, 5)).astype(np.float32)
    state = (0.1 * rng.standard_normal((batch, 1024))).astype(np.float32)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(calls):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"prev": prev, "state": state})
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def compare_step_graphs(json_path: Path, calls: int) -> tuple[list[str], dict[str, float]]:
    mm = read_magenta(json_path)
    info = magenta_info(mm)
    tmp = Path(tempfile.mkdtemp())
    paths = {"plain": tmp / "plain.onnx", "lstm_op": tmp / "lstm.onnx"}
    onnx.save(magenta_onnx.decoder_step(mm, info), str(paths["plain"]))
    onnx.save(lstm_op_step(mm, info), str(paths["lstm_op"]))
    sessions = {
        k: open_session(p)
        for k, p in paths.items()
    }
    # the two graphs agree (the LSTM op is a second implementation of the same maths)
    rng = np.random.default_rng(1)
    feed = {
        "prev": rng.standard_normal((3, 5)).astype(np.float32),
        "state": (0.5 * rng.standard_normal((3, 1024))).astype(np.float32),
    }
    a, b = (sessions[k].run(None, feed) for k in ("plain", "lstm_op"))
    agree = max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))
    rows, numbers = [], {"agree": agree}
    for batch in (1, 50):
        t = time_steps(sessions, batch, calls)
        numbers[f"plain_B{batch}"], numbers[f"lstm_B{batch}"] = t["plain"], t["lstm_op"]
        rows.append(
            f"| B = {batch} | {t['plain'] * 1e3:.3f} ms | {t['lstm_op'] * 1e3:.3f} ms | "
            f"**{t['lstm_op'] / t['plain']:.2f}x** |"
        )
    shutil.rmtree(tmp)
    return rows, numbers


# ---------------------------------------------------------------------------------------------
# the headline command on the light install


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children_cpu() -> float:
    """User + system CPU seconds of the finished child processes: less sensitive than wall time
    to the other work on a shared machine (onnxruntime's 2 threads can make it exceed wall time)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def headline(venv: Path, mirror_dir: Path, runs: int, picture: Path) -> dict[str, object]:
    py, exe = venv / "bin" / "python", venv / "bin" / "sketchkit"
    torch_check = subprocess.run([str(py), "-c", "import torch"], capture_output=True, text=True)
    if torch_check.returncode == 0:
        raise SystemExit(f"{venv} has torch: the headline must run on the light install")
    numpy_version = subprocess.run(
        [str(py), "-c", "import numpy; print(numpy.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(mirror_dir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    work = Path(tempfile.mkdtemp())
    try:
        time.sleep(1.0)
        cmd = [str(exe), "generate", "owl", "-n", "50", "--tau", "0.3", "-o", str(work / "owl.png")]
        sheep = [str(exe), "generate", "sheep", "-n", "50", "--tau", "0.3", "-o", str(work / "sheep.png")]
        first, cached, first_cpu, cached_cpu, base, base_cpu = [], [], [], [], [], []
        for k in range(runs):
            env = dict(
                os.environ,
                SKETCHKIT_CACHE=str(work / f"cache{k}"),
                SKETCHKIT_ZOO_MIRROR=f"http://127.0.0.1:{port}",
            )
            # a fresh cache, then the same again, then the baseline: the shipped sheep (no download,
            # no conversion), the command README's cold-start figure is measured on
            runs_ = ((cmd, first, first_cpu), (cmd, cached, cached_cpu), (sheep, base, base_cpu))
            for command, wall, cpu in runs_:
                t, c = time.perf_counter(), _children_cpu()
                r = subprocess.run(command, env=env, capture_output=True, text=True)
                wall.append(time.perf_counter() - t)
                cpu.append(_children_cpu() - c)
                if r.returncode != 0:
                    raise SystemExit(f"generate failed: {r.stderr}")
        shutil.copyfile(work / "owl.png", picture)
        return {
            "first": first,
            "cached": cached,
            "first_cpu": first_cpu,
            "cached_cpu": cached_cpu,
            "base": base,
            "base_cpu": base_cpu,
            "stderr": torch_check.stderr.strip().splitlines()[-1],
            "numpy": numpy_version,
        }
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--magenta", type=Path, default=ROOT.parent / "shared" / "data" / "magenta-gen" / "owl.gen.json"
    )
    ap.add_argument("--light-venv", type=Path, default=None)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    loads = [load()]
    rows, numbers = compare_step_graphs(args.magenta, args.calls)
    loads.append(load())
    lines = [
        SECTION,
        "",
        "`python benchmarks/bench_magenta_import.py --light-venv LIGHT_VENV`",
        "",
        f"Model `{args.magenta.name}` (decoder-only LSTM, H = 512). Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, **shared** with other engineers' work (1-min load average {' / '.join(loads)} "
        f"at start / after the step timings); onnxruntime {ort.__version__}, numpy {np.__version__}.",
        "",
        f"Decoder step graph, plain nodes (shipped) vs ONNX `LSTM` op, median of {args.calls} interleaved calls "
        f"(sampler's session options; the two agree to {numbers['agree']:.1e}):",
        "",
        "| batch | plain nodes | `LSTM` op | LSTM op / plain |",
        "|---|---|---|---|",
        *rows,
    ]
    if args.light_venv:
        picture = Path(tempfile.gettempdir()) / "bench-magenta-owl.png"
        h = headline(args.light_venv, args.magenta.parent, args.runs, picture)
        loads.append(load())
        first, cached = h["first"], h["cached"]
        fmt = lambda xs: ", ".join(f"{x:.2f}" for x in xs)  # noqa: E731
        lines += [
            "",
            f"`sketchkit generate owl -n 50 --tau 0.3 -o owl.png` on the light install (`pip install -e .` only; "
            f"`import torch` there: `{h['stderr']}`; numpy {h['numpy']}), `SKETCHKIT_ZOO_MIRROR` at a local "
            f"`python -m http.server` over `{args.magenta.parent.name}/`, subprocess wall time, {args.runs} fresh caches "
            f"(load average after: {loads[-1]}):",
            "",
            "| run | wall, median | wall, runs | CPU (user + sys), median | target (wall) |",
            "|---|---|---|---|---|",
            f"| first (download + convert + sample + PNG) | **{statistics.median(first):.2f} s** | {fmt(first)} | "
            f"{statistics.median(h['first_cpu']):.2f} s | <= 3 s |",
            f"| cached | **{statistics.median(cached):.2f} s** | {fmt(cached)} | "
            f"{statistics.median(h['cached_cpu']):.2f} s | <= 1.5 s |",
            f"| baseline: `generate sheep` (shipped) | {statistics.median(h['base']):.2f} s | {fmt(h['base'])} | "
            f"{statistics.median(h['base_cpu']):.2f} s | |",
            "",
            f"Against the baseline in the same run (medians): first {statistics.median(first) / statistics.median(h['base']):.2f}x, "
            f"cached {statistics.median(cached) / statistics.median(h['base']):.2f}x wall; "
            f"first {statistics.median(h['first_cpu']) / statistics.median(h['base_cpu']):.2f}x, "
            f"cached {statistics.median(h['cached_cpu']) / statistics.median(h['base_cpu']):.2f}x CPU.",
            "",
            f"The last run's picture is written to `{picture}` (looked at: 50 owls).",
        ]
    text = "\n".join(lines) + "\n"
    print(text)
    write_section(text)


if __name__ == "__main__":
    main()
