""""finish it" in the playground, click to drawn, measured in the browser; against the sampler alone.

    .venv/bin/python benchmarks/bench_playground.py

Serves the playground in this process (the shipped sheep, in process) and opens it in headless
Chromium (Debian's package, over the DevTools protocol). Draws half of an aaron_sheep test sketch
stroke by stroke with mouse events, then clicks "finish it" (k = 8, tau 0.5, a fresh seed each
time) `--runs` times after `--warmup` clicks. The page times each click from its click handler
to the second animation frame after the endings are in the DOM (they have been painted), and
reports the seeds it got. Baseline, same run: `Sampler.complete` on the same prefix with the same
seeds, called directly. Writes the "Playground" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sketchkit.cli.sample import first_strokes
from sketchkit.datasets import load_npz
from sketchkit.playground import Catalogue, create_app
from sketchkit.playground.canvas import Canvas
from sketchkit.playground.server import running
from sketchkit.sampling import SamplingOptions

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the browser driver is test tooling
from browser import Chromium, find_chromium, mouse_lines  # noqa: E402
from results import write_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET_MS = 300.0


def paired_runs(page: Chromium, lines: list, runs: int, warmup: int, direct: Callable[[int], float]) -> list[dict]:
    """Draw `lines` on a clear canvas, then click "finish it" warmup + runs times; after each
    counted click, `direct(seed)` times the same work called directly, so each pair shares the
    machine's load. The page's timings, each with "direct_ms" added."""
    page.click("#clear")
    page.draw("#canvas", lines)
    done = page.evaluate("window.playground.timings.length")
    out = []
    for i in range(warmup + runs):
        page.click("#finish")
        page.wait_for(f"window.playground.timings.length === {done + i + 1}", timeout=60)
        if i >= warmup:
            timing = page.evaluate("window.playground.timings.at(-1)")
            out.append(dict(timing, direct_ms=direct(timing["seed"])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/sketchrnn/aaron_sheep.npz")
    ap.add_argument("--index", type=int, default=1, help="aaron_sheep test sketch to draw the start of")
    ap.add_argument("--strokes", type=int, nargs="+", default=[5, 1], help="prefixes: its first N strokes")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    args = ap.parse_args()

    whole = load_npz(args.data).test[args.index].astype(np.float32)
    drawings = {n: mouse_lines(first_strokes(whole, n), whole=whole) for n in args.strokes}
    load = [os.getloadavg()[0]]
    catalogue = Catalogue(["sheep"], zoo=False)
    sampler = catalogue.sampler("sheep")
    canvas = Canvas(400, sampler.info.scale_factor)
    rows, medians = [], []
    with running(create_app(catalogue)) as url, Chromium() as page:
        page.goto(url + "/")
        page.wait_for("window.playground && window.playground.model === 'sheep'")
        k = page.evaluate("Number(document.getElementById('k').value)")
        tau = page.evaluate("Number(document.getElementById('tau').value)")
        for n, lines in drawings.items():
            partial = canvas.to_model(canvas.simplify([np.array(line, float) for line in lines]))
            added: list[float] = []

            def direct(seed: int, partial: np.ndarray = partial, added: list[float] = added) -> float:
                start = time.perf_counter()
                out = sampler.complete(partial, k, SamplingOptions(tau=tau, seed=seed))
                added.append(sum(len(s) - len(partial) for s in out) / k)
                return (time.perf_counter() - start) * 1e3

            timings = paired_runs(page, lines, args.runs, args.warmup, direct)
            click, server, alone = ([t[key] for t in timings] for key in ("ms", "sample_ms", "direct_ms"))
            ratio = statistics.median(c / a for c, a in zip(click, alone, strict=True))
            medians.append(statistics.median(click))
            rows.append(
                f"| first {n} stroke{'s' if n > 1 else ''}: {sum(map(len, lines))} pointer points, {len(partial)} after RDP, "
                f"endings add {statistics.median(added):.0f} | **{statistics.median(click):.0f} ms** "
                f"({min(click):.0f}-{max(click):.0f}) | {statistics.median(server):.0f} ms | "
                f"{statistics.median(alone):.0f} ms ({min(alone):.0f}-{max(alone):.0f}) | {ratio:.1f}x |"
            )
            print(rows[-1])
            load.append(os.getloadavg()[0])
    catalogue.close()

    worst = max(medians)
    chromium = subprocess.run([find_chromium() or "chromium", "--version"], capture_output=True, text=True).stdout.strip()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), platform.processor())
    table = "\n".join(rows)
    text = f"""## Playground

`python benchmarks/bench_playground.py`

"finish it" on the shipped sheep (vae, LSTM 256), in process, k = {k}, tau {tau:g}, a fresh seed per click.
The prefixes are the first strokes of aaron_sheep test sketch {args.index}, drawn with mouse events on the
400 px canvas (5 strokes: head and body, the model adds legs; 1 stroke: the model draws most of a sheep).
Click to drawn is measured in the page: from the click handler to the second animation frame after the
SVGs are in the DOM (they have been painted); median (min-max) of {args.runs} clicks after {args.warmup} warm-up
clicks. Baseline, same process: right after each click, the same seed through `Sampler.complete` called
directly (pairs share the machine's load; the last column is the median of the per-pair ratios).
Machine: {cpu}, {os.cpu_count()} CPUs, **shared** with other work (1-min load average
{", ".join(f"{v:.1f}" for v in load)} at start / after each prefix); {chromium}, headless.

| prefix | click to drawn, in the browser | sampling, timed by the server | `Sampler.complete` alone | click / alone |
|---|---|---|---|---|
{table}

The rest of click to drawn is HTTP, JSON, RDP, the DOM and the frame it waits for.
Target: <= {TARGET_MS:.0f} ms click to drawn (median of {args.runs}); the slower prefix {"meets" if worst <= TARGET_MS else "misses"} it ({worst:.0f} ms).
"""
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
