"""`sketchkit data convert` speed and memory: the streamed, parallel converter against the
one-process, whole-file path it replaced, same input, same run.

    .venv/bin/python benchmarks/bench_convert.py            # 200 MB input, baseline on 10 MB

The input is real QuickDraw drawings (../shared/data/quickdraw/simplified-25, 344 classes x 25)
repeated with a seeded shift of every drawing (clipped to 0..255) until it is SIZE MB: about the
size of one real QuickDraw class file. Each run is a subprocess whose peak memory is the largest
sum of VmRSS over it and its children, sampled every 20 ms from /proc.
- new: `sketchkit data convert IN OUT.npz` (the whole command: count, convert, shuffle, write);
- baseline: the code before (read every drawing into memory with `read_ndjson`, then convert
  them one by one in one process, then the same shuffle and `save_npz`), on the first
  BASELINE_MB of the same file (on all 200 MB it ran past 500 s), and the new command on that
  same prefix, for the ratio. Both outputs must be identical (same arrays, same seed).
Writes the "Data convert" section of benchmarks/RESULTS.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from results import RESULTS, write_section  # noqa: E402  (one section writer for RESULTS.md)

SIMPLIFIED = ROOT.parent / "shared" / "data" / "quickdraw" / "simplified-25"

BASELINE = """
import contextlib, sys
import numpy as np
from sketchkit import datasets
from sketchkit.errors import DataError
src, out = sys.argv[1], sys.argv[2]
drawings = datasets.read_ndjson(src)
sketches = []
for d in drawings:
    with contextlib.suppress(DataError):
        sketches.append(datasets.drawing_to_stroke3(d, 2.0))
order = np.random.default_rng(0).permutation(len(sketches))
sketches = [sketches[i] for i in order]
n_train, n_valid = int(round(0.9 * len(sketches))), int(round(0.05 * len(sketches)))
ds = datasets.Dataset(sketches[:n_train], sketches[n_train:n_train + n_valid], sketches[n_train + n_valid:])
datasets.save_npz(out, ds)
"""


def make_input(path: Path, megabytes: float, seed: int = 0) -> int:
    """Real drawings, each shifted by a seeded offset per repetition; returns the line count."""
    drawings = [json.loads(line) for f in sorted(SIMPLIFIED.glob("*.ndjson")) for line in f.open()]
    rng = np.random.default_rng(seed)
    limit, written, lines = int(megabytes * 1e6), 0, 0
    with path.open("w") as f:
        while written < limit:
            for d in drawings:
                dx, dy = (int(v) for v in rng.integers(-20, 21, 2))
                strokes = [[[min(255, max(0, x + dx)) for x in xs], [min(255, max(0, y + dy)) for y in ys]]
                           for xs, ys in d["drawing"]]  # fmt: skip
                text = json.dumps(dict(d, drawing=strokes), separators=(",", ":")) + "\n"
                f.write(text)
                written += len(text)
                lines += 1
                if written >= limit:
                    break
    return lines


def _tree_rss(pid: int) -> int:
    """VmRSS in bytes of `pid` and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def measure(cmd: list[str]) -> tuple[float, int]:
    """(seconds, peak RSS of the process tree) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - start
    done.set()
    watcher.join()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed: {err.strip().splitlines()[-1:]}")
    return seconds, peak


def same_npz(a: Path, b: Path) -> bool:
    from sketchkit.datasets import load_npz

    x, y = load_npz(a), load_npz(b)
    return all(
        len(x.split(k)) == len(y.split(k))
        and all(np.array_equal(p, q) and p.dtype == q.dtype for p, q in zip(x.split(k), y.split(k), strict=True))
        for k in ("train", "valid", "test")
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=float, default=200.0)
    ap.add_argument("--baseline-mb", type=float, default=10.0)
    ap.add_argument("--no-write", action="store_true", help="print, do not update RESULTS.md")
    args = ap.parse_args()
    sketchkit = [sys.executable, "-m", "sketchkit"]
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as tmp:
        tmp_path = Path(tmp)
        big, small = tmp_path / "big.ndjson", tmp_path / "small.ndjson"
        n_big = make_input(big, args.size_mb)
        n_small = make_input(small, args.baseline_mb)  # the same seed: the first lines of big
        load = [os.getloadavg()[0]]
        base_s, base_rss = measure([sys.executable, "-c", BASELINE, str(small), str(tmp_path / "base.npz")])
        new_s, new_rss = measure([*sketchkit, "data", "convert", str(small), str(tmp_path / "new.npz")])
        identical = same_npz(tmp_path / "base.npz", tmp_path / "new.npz")
        load.append(os.getloadavg()[0])
        big_s, big_rss = measure([*sketchkit, "data", "convert", str(big), str(tmp_path / "big.npz")])
        load.append(os.getloadavg()[0])
    mb = 1 << 20
    rows = [
        f"| baseline (before): one process, whole file in memory | {args.baseline_mb:g} MB, {n_small} drawings "
        f"| {base_s:.1f} s | {base_rss / mb:.0f} MB | 1x |",
        f"| `sketchkit data convert` (streamed, {os.cpu_count()} workers) | {args.baseline_mb:g} MB, {n_small} drawings "
        f"| {new_s:.1f} s | {new_rss / mb:.0f} MB | **{base_s / new_s:.1f}x** |",
        f"| `sketchkit data convert` | {args.size_mb:g} MB, {n_big} drawings | **{big_s:.1f} s** "
        f"| **{big_rss / mb:.0f} MB** | (target <= 60 s, <= 500 MB) |",
    ]
    text = "\n".join([
        "## Data convert", "",
        "`python benchmarks/bench_convert.py` (see its docstring for what runs). Input: real QuickDraw",
        "simplified drawings (../shared, 344 classes x 25) repeated with a seeded shift until the size below.",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, **shared** with other",
        f"work (1-min load average {', '.join(f'{x:.1f}' for x in load)} at start / after the {args.baseline_mb:g} MB pair"
        f" / after the {args.size_mb:g} MB run); numpy {np.__version__}. Peak memory: the process and its workers"
        " together (sum of VmRSS, sampled every 20 ms).", "",
        "| | input | time | peak RSS | vs baseline |", "|---|---|---|---|---|", *rows, "",
        f"- same output: the baseline's and the new command's .npz are {'identical' if identical else 'DIFFERENT'}"
        " (every array, dtype and order; seed 0; the file bytes differ: object arrays are now pickled"
        " with protocol 4, which streams).", "",
    ])  # fmt: skip
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"updated {RESULTS}", file=sys.stderr)


if __name__ == "__main__":
    main()
