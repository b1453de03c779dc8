"""`sketchkit evaluate MODEL --samples --data REAL`: how real a model's drawings are, as numbers
(`sketchkit.zoo.quality`), for one temperature or a sweep (with its picture)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from sketchkit.errors import SketchkitError

SWEEP_ROW = 8  # sketches drawn under each tau in the sweep picture


def parse_taus(text: str) -> list[float]:
    try:
        taus = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise SketchkitError(f"--tau: expected numbers separated by commas, got {text!r}") from None
    if not taus or not all(0 < t <= 2 for t in taus):
        raise SketchkitError(f"--tau: each temperature must be in (0, 2], got {text!r}")
    return taus


def evaluate_samples(
    model: str, data: tuple[str, ...], n: int, tau: str, seed: int, start: str | None, output: Path | None, as_json: bool
) -> None:
    from sketchkit import render
    from sketchkit.hub import load
    from sketchkit.modelinfo import parse_start
    from sketchkit.quality.sweep import sweep_svg
    from sketchkit.zoo import quality, sketchnet

    taus = parse_taus(tau)
    if len(data) != 1:
        raise SketchkitError("--samples needs one --data file of real sketches of the class (.npz or .ndjson)")
    if not 8 <= n <= 10_000:
        raise SketchkitError(f"-n must be in [8, 10000], got {n}")
    if output is not None:
        render.get_writer(output)  # a bad extension fails before any work
    start_token = None if start is None else parse_start(start)
    t0 = time.perf_counter()
    real = quality.real_sketches(data[0], n, seed)
    runtime = load(model)
    net = sketchnet.load_features()
    results = [quality.evaluate_samples(runtime, real, n, t, seed, start_token, net) for t in taus]
    # a row's sketch depends on (seed, row) alone, so these are the first sketches each score drew
    rows = [quality.generate(runtime, SWEEP_ROW, t, seed, start_token) for t in taus] if output is not None else []
    seconds = time.perf_counter() - t0
    name = runtime.info.name
    if output is not None:
        title = f"{name}: {results[0].n} generated vs {results[0].n} real ({Path(data[0]).name}), seed {seed}"
        render.save(output, sweep_svg(title, taus, [q.to_dict() for q in results], rows))
    if as_json:
        click.echo(json.dumps({"model": name, "real": str(data[0]), "seed": seed, "seconds": seconds,
                               "results": [q.to_dict() for q in results]}, indent=2))  # fmt: skip
        return
    click.echo(f"{name}: {results[0].n} generated vs {results[0].n} real sketches of {data[0]} (seed {seed}, {seconds:.0f} s)")
    for q in results:
        click.echo(f"  tau {q.tau:g}: {q.summary()}, never ended {q.unfinished:.1%}")
        for k, v in q.stats.items():
            click.echo(f"    {k:18s} generated {v['generated']:8.3f}  real {v['real']:8.3f}  KS {v['ks']:.3f}")
    if output is not None:
        click.echo(f"wrote {output}")
