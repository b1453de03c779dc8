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
import re
import statistics
import subprocess
import time
from pathlib import Path

import numpy as np

from sketchkit.cli.sample import first_strokes
from sketchkit.datasets import load_npz
from sketchkit.playground import Catalogue, create_app
from sketchkit.playground.browser import Chromium, find_chromium, mouse_lines
from sketchkit.playground.canvas import Canvas
from sketchkit.playground.server import running
from sketchkit.sampling import SamplingOptions

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
TARGET_MS = 300.0


def write_section(text: str) -> None:
    old = RESULTS.read_text() if RESULTS.exists() else "# Benchmarks\n"
    pattern = re.compile(r"^## Playground\n.*?(?=^## |\Z)", re.S | re.M)
    new = pattern.sub(lambda _: text, old) if pattern.search(old) else old.rstrip("\n") + "\n\n" + text
    RESULTS.write_text(new)


def clicks(page: Chromium, lines: list, runs: int, warmup: int) -> list[dict]:
    """Draw `lines` on a clear canvas, click "finish it" warmup + runs times; the page's timings."""
    page.click("#clear")
    page.draw("#canvas", lines)
    done = page.evaluate("window.playground.timings.length")
    for i in range(warmup + runs):
        page.click("#finish")
        page.wait_for(f"window.playground.timings.length === {done + i + 1}", timeout=60)
    return page.evaluate("window.playground.timings")[done + warmup :]


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
    with running(create_app(catalogue)) as url, Chromium() as page:
        page.goto(url + "/")
        page.wait_for("window.playground && window.playground.model === 'sheep'")
        timings = {n: clicks(page, lines, args.runs, args.warmup) for n, lines in drawings.items()}
        k = page.evaluate("Number(document.getElementById('k').value)")
        tau = page.evaluate("Number(document.getElementById('tau').value)")
    load.append(os.getloadavg()[0])

    # the baseline: the same work (same prefix, same seeds), called directly
    sampler = catalogue.sampler("sheep")
    canvas = Canvas(400, sampler.info.scale_factor)
    rows = []
    for n, lines in drawings.items():
        partial = canvas.to_model(canvas.simplify([np.array(line, float) for line in lines]))
        direct, added = [], []
        for t in timings[n]:
            start = time.perf_counter()
            out = sampler.complete(partial, k, SamplingOptions(tau=tau, seed=t["seed"]))
            direct.append((time.perf_counter() - start) * 1e3)
            added.append(sum(len(s) - len(partial) for s in out) / k)
        click = [t["ms"] for t in timings[n]]
        server = [t["sample_ms"] for t in timings[n]]
        ratio = statistics.median(click) / statistics.median(direct)
        rows.append(
            f"| first {n} stroke{'s' if n > 1 else ''}: {sum(map(len, lines))} pointer points, {len(partial)} after RDP, "
            f"endings add {statistics.median(added):.0f} | **{statistics.median(click):.0f} ms** "
            f"({min(click):.0f}-{max(click):.0f}) | {statistics.median(server):.0f} ms | "
            f"{statistics.median(direct):.0f} ms ({min(direct):.0f}-{max(direct):.0f}) | {ratio:.1f}x |"
        )
        print(rows[-1])
    load.append(os.getloadavg()[0])
    catalogue.close()

    worst = max(statistics.median(t["ms"] for t in ts) for ts in timings.values())
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
clicks. Baseline, same process: the same seeds through `Sampler.complete` directly.
Machine: {cpu}, {os.cpu_count()} CPUs, **shared** with other work (1-min load average {load[0]:.1f},
{load[1]:.1f}, {load[2]:.1f} at start / after the clicks / after the baseline); {chromium}, headless.

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
